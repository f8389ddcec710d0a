"""The main job end to end, small: `hdmnet demo` runs the whole Snakemake workflow (generate,
download, prepare, base learner, HDMNet, evaluation, tables, report) on a tiny grid, every job
lands in MLflow under one parent run, and a second run has nothing to do."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.workflow.test_snakemake import workflow_copy

# One fold, one shot, one ablation variant, tiny schedules: the graph and every stage's code
# run for real; the numbers are not the point here (tests/train checks learning).
TINY = {
    "synth": {"scale": 0.3},
    "grid": {"folds": [0], "shots": [1]},
    "ablation": {"variants": ["no_distill"], "kshot_variants": [], "folds": [0], "shots": [1]},
    "base": {"pascal": {"epochs": 1, "crop": 65, "val_size": 65, "scale": [0.4, 0.6]}},
    "meta": {"pascal": {"epochs": 1, "image_size": 65, "val_episodes": 8, "test_episodes": 12}},
    "eval": {"seeds": [510, 365]},
}


def merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def run_tiny_demo(
    folder: Path, *args: str, env: dict[str, str] | None = None, extra: dict | None = None
) -> tuple[Path, subprocess.CompletedProcess]:
    """`hdmnet demo ARGS` on a copy of the workflow whose params.yaml is the TINY grid (with
    ``extra`` merged over it)."""
    tree = workflow_copy(folder)
    params = merge(yaml.safe_load((tree / "params.yaml").read_text()), copy.deepcopy(TINY))
    params = merge(params, copy.deepcopy(extra or {}))
    (tree / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HDMNET_PARENT_RUN_ID", None)
    done = subprocess.run(
        [sys.executable, "-m", "hdmnet.cli", "demo", *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    return tree, done


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    return run_tiny_demo(tmp_path_factory.mktemp("pipeline"), "--cores", "2")


def test_demo_runs_every_stage_and_prints_the_table(pipeline):
    tree, done = pipeline
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = tree / "results"
    for variant in ("full", "no_distill"):
        record = json.loads(
            (results / f"metrics/pascal/small/{variant}/fold0-shot1-seed321.json").read_text()
        )
        assert record["seeds"] == [510, 365] and record["episodes_per_seed"] == 12
        assert 0.0 <= record["miou"] <= 100.0
    for name in ("main.md", "main.csv", "main.tex", "ablation.md", "provenance.json"):
        assert (results / "tables" / name).stat().st_size > 0
    html = (results / "report" / "index.html").read_text()
    assert "no_distill" in html and "data:image/png;base64," in html
    assert "| embedded PASCAL-like | small | 1 |" in done.stdout
    assert "Report:" in done.stdout
    assert (tree / "logs" / "train" / "pascal-small-full-fold0-shot1-seed321.log").exists()


def test_jobs_share_one_mlflow_parent_run(pipeline):
    from mlflow.tracking import MlflowClient

    tree, done = pipeline
    assert done.returncode == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tree / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hdmnet")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    stages = sorted(r.data.tags["stage"] for r in children)
    assert stages == ["evaluate", "evaluate", "train", "train", "train-base"]


def test_second_run_does_nothing(pipeline):
    tree, first = pipeline
    assert first.returncode == 0
    outputs = sorted((tree / "results").rglob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in outputs}
    done = subprocess.run(
        [sys.executable, "-m", "hdmnet.cli", "demo"],
        cwd=tree,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in outputs} == before
    assert "Report:" in done.stdout
