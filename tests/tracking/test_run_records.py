"""What train-base, train and evaluate leave in the MLflow store (SQLite in the session's temp
dir): one run each under the pipeline's parent run, named by stage and job, with parameters,
per-iteration and per-epoch metrics, final metrics, the per-seed table and the provenance tags;
the records name their runs."""

from __future__ import annotations

import json
import platform
import re
import subprocess
from pathlib import Path

import pytest
from tests.train.test_engines import (
    RUN,
    Trained,
    iterations_per_epoch,
    train_items,
    trained_setup,
)

from hdmnet import layout
from hdmnet.tracking import Store, tracking_uri


@pytest.fixture(scope="module")
def trained(embedded_data) -> Trained:
    return trained_setup(embedded_data)


@pytest.fixture(scope="module")
def runs(trained):
    """The runs of the setup's pipeline, by stage, and the MLflow client."""
    from mlflow.tracking import MlflowClient

    uri = trained.params.tracking.uri
    assert uri.startswith("sqlite:///") and uri == tracking_uri(trained.params)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(trained.params.tracking.experiment)
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{trained.parent_run_id}'",
    )
    by_stage = {run.data.tags["stage"]: run for run in found}
    assert len(found) == len(by_stage) == 3, [r.info.run_name for r in found]
    return client, by_stage


def test_the_pipeline_has_a_parent_run_and_three_named_children(trained, runs):
    client, by_stage = runs
    parent = client.get_run(trained.parent_run_id)
    assert parent.info.run_name == "engines-acceptance" and parent.info.status == "FINISHED"
    assert parent.data.tags["stage"] == "pipeline"
    names = {stage: run.info.run_name for stage, run in by_stage.items()}
    assert names == {
        "train-base": "train-base pascal-small-fold0-seed321",
        "train": "train pascal-small-full-fold0-shot1-seed321",
        "evaluate": "evaluate pascal-small-full-fold0-shot1-seed321",
    }
    assert all(run.info.status == "FINISHED" for run in by_stage.values())
    # Every record names its run.
    assert by_stage["train-base"].info.run_id == trained.base["mlflow_run_id"]
    assert by_stage["train"].info.run_id == trained.meta["mlflow_run_id"]
    assert by_stage["evaluate"].info.run_id == trained.metrics["mlflow_run_id"]


def test_runs_carry_the_parameters_and_provenance_tags(trained, runs):
    _, by_stage = runs
    records = {"train-base": trained.base, "train": trained.meta, "evaluate": trained.metrics}
    for stage, run in by_stage.items():
        params, tags = run.data.params, run.data.tags
        assert params["meta.pascal.epochs"] == "2" and params["base.pascal.crop"] == "65"
        assert params["eval.seeds"] == "[510, 365]" and params["grid.train_seeds"] == "[321]"
        assert tags["stage"] == stage and tags["preset"] == "default"
        assert tags["dataset"] == "pascal" and tags["backbone"] == "small"
        assert tags["fold"] == "0"
        assert tags["hostname"] == platform.node() and tags["gpu_type"] == "cpu"
        # A commit of this repository (others may commit while a job runs, so the tag and the
        # record, taken minutes apart, need not name the same one).
        for commit in (tags["git_commit"], records[stage]["git"]["git_commit"]):
            assert re.fullmatch(r"[0-9a-f]{40}", commit)
            assert _object_type(commit) == "commit"
        assert tags["git_dirty"] in {"true", "false"}
        assert tags["data_hash"] == records[stage]["data_hash"]
        assert re.fullmatch(r"[0-9a-f]{16}", tags["data_hash"])
        assert tags["mlflow.parentRunId"] == trained.parent_run_id
        if stage != "train-base":
            assert (tags["shot"], tags["variant"]) == ("1", "full")
        if stage != "evaluate":
            assert (tags["world_size"], tags["global_batch"]) == ("1", "4")


@pytest.mark.parametrize("stage", ["train-base", "train"])
def test_training_runs_log_every_iteration_and_every_epoch(trained, runs, stage):
    client, by_stage = runs
    run = by_stage[stage]
    record = trained.base if stage == "train-base" else trained.meta
    run_id = run.info.run_id
    iterations = 2 * iterations_per_epoch(train_items(trained.params), 4)
    assert iterations == 2 * (train_items(trained.params) // 4) > 100
    loss = client.get_metric_history(run_id, "loss")
    lr = client.get_metric_history(run_id, "lr")
    assert sorted(m.step for m in loss) == list(range(1, iterations + 1))
    assert sorted(m.step for m in lr) == list(range(1, iterations + 1))
    by_step = {m.step: m.value for m in lr}
    assert by_step[1] == pytest.approx(record["config"][_section(stage)]["pascal"]["lr"])
    assert all(by_step[i] > by_step[i + 1] for i in range(1, iterations))  # poly decay
    # The epoch means in the record are the means of the logged iteration losses.
    per_epoch = iterations // 2
    values = [m.value for m in sorted(loss, key=lambda m: m.step)]
    for epoch, entry in enumerate(record["epochs"]):
        chunk = values[epoch * per_epoch : (epoch + 1) * per_epoch]
        assert entry["loss"] == pytest.approx(sum(chunk) / len(chunk), rel=1e-9)
    for key in ("loss", "lr", "val_miou", "seconds"):
        history = client.get_metric_history(run_id, f"epoch_{key}")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1]
        logged = [m.value for m in sorted(history, key=lambda m: m.step)]
        assert logged == pytest.approx([e[key] for e in record["epochs"]])
    assert run.data.metrics["best_val_miou"] == pytest.approx(record["best_val_miou"])
    if stage == "train":
        parts = [k for k in run.data.metrics if k.startswith("loss_")]
        assert parts and all(len(client.get_metric_history(run_id, k)) == iterations for k in parts)
    # Checkpoints are uploaded only with tracking.upload_checkpoints (off here).
    assert artifacts(trained, run) == ["record.json"]


def test_the_evaluation_run_logs_final_metrics_and_a_per_seed_table(trained, runs):
    _, by_stage = runs
    run = by_stage["evaluate"]
    record = trained.metrics
    metrics = run.data.metrics
    for name in ("final", "meta"):
        for key in ("miou", "miou_std", "fbiou", "fbiou_std"):
            assert metrics[f"{name}_{key}"] == pytest.approx(record["outputs"][name][key])
    assert metrics["final_miou"] == pytest.approx(record["miou"])
    assert metrics["base_class_miou"] == pytest.approx(record["outputs"]["base"]["miou"])
    # Per-seed values are a table, not a metric whose steps are seed numbers.
    assert not [key for key in metrics if "seed" in key]
    assert artifacts(trained, run) == sorted(
        ["per_seed.json", layout.metrics_file(trained.params, RUN).name]
    )
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "per_seed.json", "type": "table"}
    ]
    table = json.loads((artifact_dir(trained, run) / "per_seed.json").read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    final, meta = (record["outputs"][name]["per_seed"] for name in ("final", "meta"))
    expected = [
        {"seed": f["seed"], "final_miou": f["miou"], "final_fbiou": f["fbiou"]}
        | {"meta_miou": m["miou"], "meta_fbiou": m["fbiou"]}
        for f, m in zip(final, meta, strict=True)
    ]
    assert [r["seed"] for r in rows] == record["seeds"] == [510, 365]
    assert rows == [pytest.approx(e) for e in expected]


def artifact_dir(trained, run) -> Path:
    """Where the run's artifacts are: beside the SQLite store, at its relative location."""
    folder = Store(trained.params.tracking.uri).local_artifact_dir(run.info.artifact_uri)
    assert folder is not None, run.info.artifact_uri
    return folder


def artifacts(trained, run) -> list[str]:
    folder = artifact_dir(trained, run)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _object_type(sha: str) -> str:
    done = subprocess.run(["git", "cat-file", "-t", sha], capture_output=True, text=True)
    return done.stdout.strip()


def _section(stage: str) -> str:
    return "base" if stage == "train-base" else "meta"
