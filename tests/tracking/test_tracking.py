"""MLflow tracking: runs, params, metrics and tags reach the SQLite store, also under contention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hdmnet.config import load_params
from hdmnet.tracking import PARENT_ENV, Tracker, flatten, start_parent_run

ROOT = Path(__file__).resolve().parents[2]

JOB = """
import sys
from hdmnet.config import load_params
from hdmnet.tracking import Tracker
params = load_params(sys.argv[1], ["tracking.uri=" + sys.argv[2]])
job = int(sys.argv[3])
with Tracker(params, "train", f"job{job}", tags={"fold": job % 4, "shot": 1}) as tracker:
    for step in range(300):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    tracker.log_metrics({"miou": job / 10})
"""


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture
def uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_flatten_makes_dotted_string_params():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "None", "e": "{}"}


def test_run_records_params_metrics_tags_and_parent(uri):
    params = load_params(ROOT / "params.yaml", [f"tracking.uri={uri}"])
    parent = start_parent_run(params, "pipeline-test")
    assert os.environ[PARENT_ENV] == parent
    with Tracker(params, "evaluate", "eval-fold0", tags={"dataset": "pascal", "fold": 0}) as t:
        t.log_metrics({"miou": 0.5, "fbiou": 0.7})
        t.log_metrics({"loss": 2.0}, step=3)
    run = client(uri).get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["miou"] == 0.5 and run.data.metrics["loss"] == 2.0
    assert run.data.params["meta.pascal.epochs"] == str(params.meta.pascal.epochs)
    assert run.data.params["grid.folds"] == "[0, 1, 2, 3]"
    tags = run.data.tags
    assert tags["stage"] == "evaluate" and tags["dataset"] == "pascal" and tags["fold"] == "0"
    assert tags["mlflow.parentRunId"] == parent
    assert tags["gpu_type"] == "cpu" and tags["preset"] == "default"
    assert tags["git_dirty"] in {"true", "false", "unknown"} and "hostname" in tags


def test_failed_job_is_marked_failed(uri):
    params = load_params(ROOT / "params.yaml", [f"tracking.uri={uri}"])
    with pytest.raises(RuntimeError), Tracker(params, "train", "boom") as tracker:
        raise RuntimeError("boom")
    assert client(uri).get_run(tracker.run_id).info.status == "FAILED"


def test_disabled_tracking_and_other_ranks_write_nothing(uri, tmp_path):
    params = load_params(ROOT / "params.yaml", [f"tracking.uri={uri}", "tracking.enabled=false"])
    with Tracker(params, "train", "off") as tracker:
        tracker.log_metrics({"loss": 1.0})
    assert tracker.run_id is None
    params = load_params(ROOT / "params.yaml", [f"tracking.uri={uri}"])
    with Tracker(params, "train", "rank1", rank=1) as tracker:
        tracker.log_metrics({"loss": 1.0})
    assert tracker.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_eight_concurrent_jobs_lose_nothing(uri, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(JOB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(ROOT / "params.yaml"), uri, str(job)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for job in range(8)
    ]
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name("hdmnet")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{j}" for j in range(8)]
    for run in runs:
        assert run.info.status == "FINISHED"
        history = mlflow_client.get_metric_history(run.info.run_id, "loss")
        assert len(history) == 300
        assert run.data.metrics["miou"] == int(run.info.run_name[3:]) / 10
        assert len(run.data.params) == len(flatten(load_params(ROOT / "params.yaml").to_dict()))
