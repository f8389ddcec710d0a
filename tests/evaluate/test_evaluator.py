"""Acceptance of ``hdmnet evaluate``: the metrics record, determinism, feature reuse, refusals.

Uses the base and meta learner trained once per session by ``trained_setup`` (2 seeds x 60
episodes of the embedded PASCAL fold 0, 1 shot).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from tests.train.test_engines import RUN, Trained, trained_setup, write_params

from hdmnet import layout
from hdmnet.data.classes import VOC_CLASSES
from hdmnet.layout import Run
from hdmnet.records import read_metrics

NUMBERS = ("miou", "fbiou", "outputs", "classes", "class_names", "seeds", "episodes_per_seed")


@pytest.fixture(scope="module")
def trained(embedded_data) -> Trained:
    return trained_setup(embedded_data)


def evaluate_again(trained: Trained, cache_mb: int | None = None) -> dict:
    from hdmnet.evaluate.evaluator import evaluate

    return evaluate(trained.params, RUN, cache_mb=cache_mb)


def test_metrics_record_holds_every_seed_and_consistent_summaries(trained):
    record = read_metrics(layout.metrics_file(trained.params, RUN))
    assert record["miou"] == trained.metrics["miou"]
    assert (record["dataset"], record["fold"], record["shot"], record["variant"]) == (
        "pascal",
        0,
        1,
        "full",
    )
    assert record["seeds"] == [510, 365] and record["episodes_per_seed"] == 60
    assert record["classes"] == [1, 2, 3, 4, 5]
    assert record["class_names"] == list(VOC_CLASSES[:5])
    for name in ("final", "meta"):
        out = record["outputs"][name]
        assert [s["seed"] for s in out["per_seed"]] == [510, 365]
        mious = np.array([s["miou"] for s in out["per_seed"]])
        fbious = np.array([s["fbiou"] for s in out["per_seed"]])
        assert np.all((mious >= 0) & (mious <= 100)) and np.all((fbious > 0) & (fbious <= 100))
        assert out["miou"] == pytest.approx(mious.mean(), abs=1e-9)
        assert out["miou_std"] == pytest.approx(mious.std(), abs=1e-9)
        assert out["fbiou"] == pytest.approx(fbious.mean(), abs=1e-9)
        assert out["fbiou_std"] == pytest.approx(fbious.std(), abs=1e-9)
        # Per-class IoU, averaged over seeds: its class mean is the seeds' mean mIoU.
        assert sorted(out["class_iou"]) == ["1", "2", "3", "4", "5"]
        assert np.mean(list(out["class_iou"].values())) == pytest.approx(out["miou"], abs=1e-6)
    assert record["miou"] == record["outputs"]["final"]["miou"]
    assert record["fbiou"] == record["outputs"]["final"]["fbiou"]
    base = record["outputs"]["base"]
    assert sorted(base["class_iou"], key=int) == [str(c) for c in range(1, 16)]
    assert 0 <= base["miou"] <= 100

    checkpoint = record["checkpoint"]
    best = layout.meta_dir(trained.params, RUN) / "best.pth"
    assert Path(checkpoint["path"]) == best and checkpoint["selection"] == "best_val"
    assert checkpoint["sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()
    assert checkpoint["epoch"] == trained.meta["best_epoch"]

    timing = record["timing"]
    assert timing["seconds"] > 0
    assert timing["ms_per_episode"] == pytest.approx(1000 * timing["seconds"] / 120)
    # Queries and supports recur across episodes and seeds: most encodings are reused.
    assert timing["cache"]["hits"] > timing["cache"]["misses"] > 0
    assert record["data_hash"] == trained.meta["data_hash"]
    assert record["config"]["eval"]["seeds"] == [510, 365]
    assert record["mlflow_run_id"] == trained.metrics["mlflow_run_id"]


def test_a_second_evaluation_and_one_without_feature_reuse_give_identical_metrics(trained):
    again = evaluate_again(trained)
    plain = evaluate_again(trained, cache_mb=0)
    for record in (again, plain):
        assert {k: record[k] for k in NUMBERS} == {k: trained.metrics[k] for k in NUMBERS}
    assert again["timing"]["cache"]["hits"] > 0
    # Without reuse every episode encodes its query and supports afresh: nothing is kept.
    cache = plain["timing"]["cache"]
    assert cache["hits"] == 0 and cache["bytes"] == 0 and cache["misses"] == 2 * 120
    assert plain["checkpoint"]["sha256"] == trained.metrics["checkpoint"]["sha256"]


@pytest.mark.parametrize(
    ("grid", "conflict"),
    [
        (["--dataset", "pascal", "--backbone", "small", "--fold", "0", "--shot", "5"], "shot"),
        (["--dataset", "pascal", "--backbone", "small", "--fold", "3", "--shot", "1"], "fold"),
        (["--dataset", "coco", "--backbone", "small", "--fold", "0", "--shot", "1"], "dataset"),
        (["--dataset", "pascal", "--backbone", "vgg16", "--fold", "0", "--shot", "1"], "backbone"),
    ],
)
def test_a_checkpoint_of_another_setting_is_refused(trained, grid, conflict, capsys):
    from hdmnet.cli import main

    checkpoint = trained.meta["checkpoints"]["best"]["path"]
    args = ["evaluate", "--params", str(trained.params_file), *grid, "--checkpoint", checkpoint]
    args += ["--name", "other"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("hdmnet evaluate: error:") and checkpoint in err
    assert "is for another setting" in err and f"{conflict}:" in err


def test_a_missing_meta_checkpoint_names_the_training_stage(trained, tmp_path, capsys):
    from hdmnet.cli import main

    params = trained.params.with_overrides([f"paths.results={tmp_path}"])
    params_file = write_params(params, tmp_path / "p.yaml")
    grid = ["--dataset", "pascal", "--backbone", "small", "--fold", "0", "--shot", "1"]
    assert main(["evaluate", "--params", str(params_file), *grid, "--variant", "stages_1"]) == 2
    err = capsys.readouterr().err
    missing = layout.meta_dir(params, Run("pascal", "small", "stages_1", 0, 1, 321))
    assert str(missing / "best.pth") in err and "not found" in err
    # The suggested command keeps the parameter file: pasted, it runs with these parameters.
    cell = "--dataset pascal --backbone small --fold 0 --shot 1 --variant stages_1 --seed 321"
    assert f"hdmnet train --params {params_file} {cell}" in err
    assert not (tmp_path / "metrics").exists()
