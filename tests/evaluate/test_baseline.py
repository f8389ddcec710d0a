"""The training-free baseline: its similarities by hand, its threshold, and its scores on the
evaluator's episodes (the session's trained fold-0 base learner)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.train.test_engines import RUN, Trained, trained_setup

from hdmnet.data.episodes import EpisodeDataset, binary_mask, load_pair
from hdmnet.data.transforms import EvalTransform
from hdmnet.evaluate.baseline import (
    BaselineScorer,
    baseline_encoder,
    evaluate_baseline,
    prototype_similarity,
    similarity,
)
from hdmnet.evaluate.metrics import FewShotMeter, summarise_seeds, upsample_to_label
from hdmnet.jobs.inputs import dataset_root, fold_folder


@pytest.fixture(scope="module")
def trained(embedded_data) -> Trained:
    return trained_setup(embedded_data)


def test_prototype_similarity_by_hand() -> None:
    # Support: channel 0 on its left half (the mask), channel 1 on its right half.
    support = torch.zeros(1, 2, 2, 2)
    support[0, 0, :, 0] = 2.0
    support[0, 1, :, 1] = 5.0
    mask = torch.tensor([[[[1, 0], [1, 255]]]])  # [B, K, H, W]: the left column only
    query = torch.zeros(1, 2, 1, 3)
    query[0, :, 0, 0] = torch.tensor([3.0, 0.0])  # along the prototype
    query[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # orthogonal to it
    query[0, :, 0, 2] = torch.tensor([1.0, 1.0])  # at 45 degrees
    sim = prototype_similarity(query, [support], mask)
    assert sim.shape == (1, 1, 1, 3)
    assert sim[0, 0, 0].tolist() == pytest.approx([1.0, 0.0, 2**-0.5], abs=1e-4)


def test_shots_share_one_mean_prototype() -> None:
    a, b = torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    a[0, 0], b[0, 1] = 1.0, 1.0
    masks = torch.ones(1, 2, 1, 1, dtype=torch.long)
    query = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    assert prototype_similarity(query, [a, b], masks).item() == pytest.approx(1.0, abs=1e-4)


def test_prior_method_is_hdmnets_prior_mask() -> None:
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)  # positions (1,0), (0,1)
    support = torch.zeros(1, 2, 1, 2)
    support[0, :, 0, 0] = torch.tensor([0.0, 2.0])  # foreground position: along (0, 1)
    support[0, :, 0, 1] = torch.tensor([5.0, 0.0])  # masked out
    masks = torch.tensor([[[[1, 0]]]])
    sim = similarity("prior", query, [support], masks)
    assert sim[0, 0, 0].tolist() == pytest.approx([0.0, 1.0], abs=1e-4)
    with pytest.raises(ValueError, match="method"):
        similarity("nearest", query, [support], masks)


def test_scores_the_evaluators_episodes_at_every_threshold(trained) -> None:
    params = trained.params
    schedule = params.meta.pascal
    scorer = BaselineScorer(
        baseline_encoder(params, RUN),
        dataset_root(params, "pascal"),
        fold_folder(params, "pascal", RUN.fold),
        "val",
        RUN.shot,
        schedule.image_size,
    )
    seeds = params.eval.seeds
    sweep = scorer.sweep("prototype", "layer4", seeds, schedule.test_episodes, [-1.01, 0.5, 1.01])
    # Nothing above a cosine of 1.01: no foreground, every class IoU 0.
    assert sweep[1.01]["miou"] == 0.0
    # Everything above -1.01: all foreground, each class IoU is its share of the labels.
    assert 0.0 < sweep[-1.01]["miou"] < 100.0
    assert [s["seed"] for s in sweep[0.5]["per_seed"]] == list(seeds)
    assert sweep[0.5]["miou"] == pytest.approx(np.mean([s["miou"] for s in sweep[0.5]["per_seed"]]))
    # The evaluator's classes and seeds; each distinct image (and support class) encoded once.
    assert list(sweep[0.5]["class_iou"]) == list(trained.metrics["outputs"]["final"]["class_iou"])
    assert trained.metrics["seeds"] == list(seeds)
    episodes = len(seeds) * schedule.test_episodes
    assert 0 < scorer.encodings < episodes * (1 + RUN.shot) / 2


def test_evaluate_baseline_picks_its_threshold_on_base_class_episodes(trained) -> None:
    result = evaluate_baseline(trained.params, RUN, "prototype", "feat5", (0.3, 0.6, 0.9))
    tuning = result["tuning_miou"]
    assert result["threshold"] == max(tuning, key=tuning.get)
    assert result["test"]["miou"] == result["sweep_miou"][result["threshold"]]
    assert set(result["sweep_miou"]) == {0.3, 0.6, 0.9}
    assert (result["method"], result["layer"]) == ("prototype", "feat5")
    with pytest.raises(ValueError, match="method"):
        evaluate_baseline(trained.params, RUN, "nearest")


def test_the_evaluator_records_the_baseline_of_its_own_episodes(trained) -> None:
    # eval.baseline (default prototype): the metrics record carries the baseline, computed on
    # the tested model's frozen encoder, equal to the baseline on the base learner's checkpoint.
    section = trained.metrics["baseline"]
    assert section["method"] == trained.params.eval.baseline == "prototype"
    alone = evaluate_baseline(trained.params, RUN, "prototype")
    assert section["miou"] == pytest.approx(alone["test"]["miou"], abs=1e-9)
    assert section["threshold"] == alone["threshold"]
    assert [s["seed"] for s in section["per_seed"]] == trained.metrics["seeds"]
    assert list(section["class_iou"]) == list(trained.metrics["outputs"]["final"]["class_iou"])
    assert section["sweep_miou"][str(section["threshold"])] == section["miou"]


@torch.inference_mode()
def straightforward_baseline(params, encoder, method, seeds, episodes, threshold):
    """Every episode encodes its own images, features of all layers kept for the episode only:
    the plain order the scorer's query-by-query order must reproduce count for count."""
    schedule = params.meta.pascal
    root = dataset_root(params, "pascal")
    transform = EvalTransform(schedule.image_size)
    per_seed = {}
    for seed in seeds:
        data = EpisodeDataset(
            root,
            fold_folder(params, "pascal", RUN.fold),
            "val",
            RUN.shot,
            transform,
            num_episodes=episodes,
            seed=seed,
        )
        meter = per_seed[seed] = FewShotMeter(len(data.classes))
        for index in range(episodes):
            recipe = data.episode_recipe(index)
            image, query_mask = load_pair(root, recipe.query, data.num_classes)
            query = encoder.encode_query(torch.from_numpy(transform(image, [])[0])[None])
            feats, masks = [], []
            for item in recipe.supports:
                image, mask = load_pair(root, item, data.num_classes)
                tensor, (label,) = transform(image, [binary_mask(mask, recipe.class_id)])
                mask_t = torch.from_numpy(label.astype(np.int64))[None]
                feats.append(encoder.encode_support(torch.from_numpy(tensor)[None], mask_t).layer4)
                masks.append(mask_t)
            sim = similarity(method, query.layer4, feats, torch.stack(masks, 1))
            label = binary_mask(query_mask, recipe.class_id)
            sim = upsample_to_label(sim, label.shape)[0, 0]
            meter.update(
                data.classes.index(recipe.class_id),
                (sim > threshold).long(),
                torch.from_numpy(label.astype(np.int64)),
            )
    return summarise_seeds(per_seed, tuple(data.classes))


@pytest.mark.parametrize("method", ["prototype", "prior"])
def test_query_by_query_scoring_keeps_little_and_counts_as_the_plain_order(trained, method):
    params = trained.params
    encoder = baseline_encoder(params, RUN)
    scorer = BaselineScorer(
        encoder,
        dataset_root(params, "pascal"),
        fold_folder(params, "pascal", RUN.fold),
        "val",
        RUN.shot,
        params.meta.pascal.image_size,
    )
    seeds, episodes = params.eval.seeds[:2], 12
    got = scorer.sweep(method, "layer4", seeds, episodes, [0.5])[0.5]
    want = straightforward_baseline(params, encoder, method, seeds, episodes, 0.5)
    assert got["per_seed"] == want["per_seed"]
    assert got["class_iou"] == want["class_iou"]
    # Kept: per distinct (support image, class) a 1 x C prototype, or its layer4 map and mask.
    supports = len(scorer._supports)
    with torch.inference_mode():
        channels = encoder.encode_query(torch.zeros(1, 3, 33, 33)).layer4.shape[1]
    if method == "prototype":
        assert scorer.kept_bytes == supports * channels * 4
    else:
        assert scorer.kept_bytes > supports * channels * 4
