"""The planned evaluation protocol: identical metrics to the straightforward order, fewer passes.

Runs the meta learner trained once per session by ``trained_setup`` (small backbone, 97 px) on
the embedded PASCAL fold 0: 2 seeds x 60 episodes, at 1 shot and, with the same weights in a
5-shot model, at 5 shots.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from tests.train.test_engines import RUN, trained_setup

from hdmnet import layout
from hdmnet.evaluate.protocol import OUTPUTS, CodeStore, EpisodeRunner, ProtocolResult
from hdmnet.jobs.inputs import dataset_root, fold_folder
from hdmnet.model import HDMNet, load_checkpoint

SEEDS = [510, 365]
EPISODES = 60


@pytest.fixture(scope="module")
def setup(embedded_data):
    trained = trained_setup(embedded_data)
    params = trained.params
    models = {}
    state = load_checkpoint(layout.meta_checkpoint(params, RUN))["state_dict"]
    for shot in (1, 5):
        torch.manual_seed(0)  # kshot_rw of the 5-shot model: its initialisation, as trained
        model = HDMNet.from_config(params, replace(RUN, shot=shot))
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith("kshot_rw") for k in missing)
        models[shot] = model.eval()
    return params, models


def runner(setup, shot: int, cache_mb: int, batch_size: int = 16) -> EpisodeRunner:
    params, models = setup
    return EpisodeRunner(
        models[shot],
        dataset_root(params, "pascal"),
        fold_folder(params, "pascal", 0),
        shot,
        params.meta.pascal.image_size,
        cache_mb=cache_mb,
        batch_size=batch_size,
    )


def counts(result: ProtocolResult) -> dict:
    out = {}
    for seed, meters in result.meters.items():
        for name in OUTPUTS:
            m = meters[name]
            out[seed, name] = [
                m.class_inter.tolist(),
                m.class_union.tolist(),
                m.fb_inter.tolist(),
                m.fb_union.tolist(),
                m.episodes,
            ]
    if result.base is not None:
        out["base"] = [result.base.inter.tolist(), result.base.union.tolist()]
    return out


BASE = ("pascal", 0, "fwb")  # the scheme only matters for COCO


@pytest.mark.parametrize("shot", [1, 5])
def test_planned_order_gives_identical_counts_with_far_fewer_backbone_passes(setup, shot):
    planned = runner(setup, shot, cache_mb=64).run(SEEDS, EPISODES, base_classes=BASE)
    straight = runner(setup, shot, cache_mb=0).run(SEEDS, EPISODES, base_classes=BASE)
    assert counts(planned) == counts(straight)
    assert 0 < planned.meters[SEEDS[0]]["final"].miou() < 1  # a real model, not all background
    episodes = len(SEEDS) * EPISODES
    assert straight.cache["order"] == "straightforward"
    assert straight.backbone_passes == episodes * (1 + shot)
    assert straight.cache["passes_per_episode"] == 1 + shot
    assert planned.cache["order"] == "planned"
    # Every distinct query image and (support image, class) pair exactly once.
    r = runner(setup, shot, cache_mb=64)
    plan = r.plan({s: r.dataset(s, EPISODES) for s in SEEDS}, range(EPISODES))
    distinct = {("q", e.recipe.query.image) for e in plan}
    distinct |= {("s", s.image, e.recipe.class_id) for e in plan for s in e.recipe.supports}
    assert planned.backbone_passes == len(distinct)
    assert planned.cache["passes_per_episode"] == planned.backbone_passes / episodes
    assert planned.cache["hits"] + planned.cache["misses"] == episodes * (1 + shot)
    assert planned.cache["misses"] == planned.backbone_passes
    assert planned.cache["evictions"] == 0 and 0 < planned.cache["bytes"] <= 64 * 2**20
    # A (query, support) pair's prior maps are computed once however often the pair recurs.
    pairs = {
        (e.recipe.query.image, s.image, e.recipe.class_id) for e in plan for s in e.recipe.supports
    }
    assert planned.cache["prior_misses"] == len(pairs)
    assert planned.cache["prior_hits"] + planned.cache["prior_misses"] == episodes * shot
    assert planned.cache["prior_hits"] > 0


def test_one_episode_at_a_time_agrees_within_0_05_miou(setup):
    batched = runner(setup, 1, cache_mb=64).run(SEEDS, EPISODES)
    single = runner(setup, 1, cache_mb=0, batch_size=1).run(SEEDS, EPISODES)
    for seed in SEEDS:
        for name in OUTPUTS:
            a = batched.meters[seed][name].miou()
            b = single.meters[seed][name].miou()
            assert abs(a - b) * 100 <= 0.05, (seed, name, a, b)


def test_a_tight_budget_evicts_but_keeps_the_counts(setup):
    tight = runner(setup, 1, cache_mb=1)
    # About 0.6 MB per code here: the store holds one or two codes at a time.
    result = tight.run(SEEDS, EPISODES)
    plain = runner(setup, 1, cache_mb=0).run(SEEDS, EPISODES)
    assert counts(result) == counts(plain)
    assert result.cache["bytes"] <= 2**20
    assert result.cache["evictions"] > 0
    assert result.backbone_passes < plain.backbone_passes


def test_every_decoded_batch_has_the_same_shape(setup, monkeypatch):
    r = runner(setup, 5, cache_mb=0, batch_size=16)
    model = r.model
    sizes = []
    decode = model.decode_codes

    def spy(query, supports, *args, **kwargs):
        sizes.append((len(query), len(supports)))
        return decode(query, supports, *args, **kwargs)

    monkeypatch.setattr(model, "decode_codes", spy)
    r.run(SEEDS, 20)  # 20 = 16 + 4 per seed: the partial batch is padded
    assert sizes == [(16, 80)] * 4


def test_plan_orders_by_class_then_query_and_batches_never_mix_seeds_when_straightforward(setup):
    r = runner(setup, 1, cache_mb=64)
    datasets = {seed: r.dataset(seed, EPISODES) for seed in SEEDS}
    plan = r.plan(datasets, range(EPISODES))
    assert len(plan) == len(SEEDS) * EPISODES
    keys = [(e.class_index, e.recipe.query.image) for e in plan]
    assert keys == sorted(keys)
    assert {(e.seed, e.index) for e in plan} == {(s, i) for s in SEEDS for i in range(EPISODES)}
    for e in plan:
        assert e.recipe == datasets[e.seed].episode_recipe(e.index)
    straight = runner(setup, 1, cache_mb=0)
    batches = straight.batches(straight.plan(datasets, range(EPISODES)))
    assert [len(b) for b in batches] == [16, 16, 16, 12] * 2
    assert all(len({e.seed for e in b}) == 1 for b in batches)


def test_decode_batch_matches_the_protocol(setup):
    r = runner(setup, 1, cache_mb=0)
    dataset = r.dataset(SEEDS[0], EPISODES)
    decoded = r.decode_batch(dataset, range(4))
    assert [d.recipe.index for d in decoded] == [0, 1, 2, 3]
    for d in decoded:
        assert d.logits["final"].shape[-2:] == d.label.shape
        assert [c.dim() for c in d.correlations] == [2, 2, 2]
        assert d.query.name == d.recipe.query.image


# -- the store by hand -----------------------------------------------------------------------


def test_code_store_evicts_the_code_needed_farthest_in_the_future():
    uses = {"a": [0, 1], "b": [0, 5], "c": [0, 2], "d": [3]}
    store = CodeStore(20, uses)
    for key in ("a", "b", "c"):
        store.keep(key, key.upper(), 10)
    store.settle(0)  # 30 > 20: "b" (next use 5) goes, "a" (1) and "c" (2) stay
    assert set(store.entries) == {"a", "c"} and store.evictions == 1
    assert store.get("a") == "A" and store.get("b") is None
    store.settle(1)  # "a" has no later use: freed, not counted as an eviction
    assert set(store.entries) == {"c"} and store.evictions == 1 and store.used == 10
    store.settle(2)
    assert store.entries == {} and store.used == 0 and store.peak == 20


def test_code_store_with_no_budget_keeps_nothing():
    store = CodeStore(0, {"a": [0, 1]})
    store.keep("a", np.zeros(1), 8)
    store.settle(0)
    assert store.entries == {} and store.peak == 0
