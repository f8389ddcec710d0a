"""MLflow tracking: runs, params, metrics and tags reach the SQLite store, also under contention;
artifacts go to a location relative to the store; runs of killed processes do not stay RUNNING."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hdmnet.config import load_params
from hdmnet.tracking import (
    PARENT_ENV,
    Store,
    Tracker,
    end_parent_run,
    flatten,
    process_alive,
    process_start,
    run_name,
    start_parent_run,
)

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

# A job that opens its run and waits to be killed (prints its run id when the run exists).
VICTIM = """
import sys, time
from hdmnet.config import load_params
from hdmnet.tracking import Tracker
params = load_params(sys.argv[1], ["tracking.uri=" + sys.argv[2]])
with Tracker(params, "train", "victim") as tracker:
    print(tracker.run_id, flush=True)
    time.sleep(600)
"""


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def params_for(uri: str, *overrides: str):
    return load_params(ROOT / "params.yaml", [f"tracking.uri={uri}", *overrides])


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A SQLite store with MLflow's tables made once (that takes seconds); tests copy it."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    Store(f"sqlite:///{path}")
    return path


@pytest.fixture
def uri(tmp_path, monkeypatch, empty_store):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_flatten_makes_dotted_string_params():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "None", "e": "{}"}


def test_run_names_say_the_stage_and_the_job():
    assert run_name("train", "pascal-small-full-fold0-shot1-seed321") == (
        "train pascal-small-full-fold0-shot1-seed321"
    )
    assert run_name("evaluate", "pascal-small-full-fold0-shot1-seed321") == (
        "evaluate pascal-small-full-fold0-shot1-seed321"
    )
    assert run_name("train-base", "base-pascal-small-fold0-seed321") == (
        "train-base pascal-small-fold0-seed321"
    )


def test_run_records_params_metrics_tags_and_parent(uri):
    params = params_for(uri)
    parent = start_parent_run(params, "pipeline-test")
    assert os.environ[PARENT_ENV] == parent
    with Tracker(params, "evaluate", "eval-fold0", tags={"dataset": "pascal", "fold": 0}) as t:
        t.log_metrics({"miou": 0.5, "fbiou": 0.7})
        t.log_metrics({"loss": 2.0}, step=3)
    run = client(uri).get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "evaluate eval-fold0"
    assert run.data.metrics["miou"] == 0.5 and run.data.metrics["loss"] == 2.0
    assert run.data.params["meta.pascal.epochs"] == str(params.meta.pascal.epochs)
    assert run.data.params["grid.folds"] == "[0, 1, 2, 3]"
    tags = run.data.tags
    assert tags["stage"] == "evaluate" and tags["dataset"] == "pascal" and tags["fold"] == "0"
    assert tags["mlflow.parentRunId"] == parent
    assert tags["gpu_type"] == "cpu" and tags["preset"] == "default"
    assert tags["git_dirty"] in {"true", "false", "unknown"} and "hostname" in tags
    assert tags["pid"] == str(os.getpid()) and tags["process_start"] == process_start()


def test_failed_job_is_marked_failed_and_ctrl_c_killed(uri):
    params = params_for(uri)
    with pytest.raises(RuntimeError), Tracker(params, "train", "boom") as tracker:
        raise RuntimeError("boom")
    assert client(uri).get_run(tracker.run_id).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt), Tracker(params, "train", "ctrl-c") as tracker:
        raise KeyboardInterrupt
    assert client(uri).get_run(tracker.run_id).info.status == "KILLED"


def test_disabled_tracking_and_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = params_for(uri, "tracking.enabled=false")
    with Tracker(params, "train", "off") as tracker:
        tracker.log_metrics({"loss": 1.0})
        tracker.log_table("t.json", [{"a": 1}])
    assert tracker.run_id is None
    params = params_for(uri)
    with Tracker(params, "train", "rank1", rank=1) as tracker:
        tracker.log_metrics({"loss": 1.0})
    assert tracker.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_artifacts_live_beside_the_store_and_a_copy_writes_into_its_own(tmp_path, monkeypatch):
    """The experiment's location is relative (mlflow-artifacts:/...), resolved against the
    store's folder: a copied project logs into the copy, the original is left alone."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_ENV, raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    note = tmp_path / "note.txt"
    note.write_text("hello")
    monkeypatch.chdir(original)  # the default URI is relative: sqlite:///mlflow.db
    params = load_params(ROOT / "params.yaml")
    assert params.tracking.uri == "sqlite:///mlflow.db"
    with Tracker(params, "train", "first") as first:
        first.log_artifact(note, "notes")
    experiment = client(f"sqlite:///{original / 'mlflow.db'}").get_experiment_by_name("hdmnet")
    assert experiment.artifact_location == "mlflow-artifacts:/hdmnet"
    stored = original / "mlartifacts/hdmnet" / first.run_id / "artifacts/notes/note.txt"
    assert stored.read_text() == "hello"

    shutil.copytree(original, copy)
    before = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    monkeypatch.chdir(copy)
    with Tracker(params, "train", "second") as second:
        second.log_artifact(note)
    assert (copy / "mlartifacts/hdmnet" / second.run_id / "artifacts/note.txt").exists()
    assert not (original / "mlartifacts/hdmnet" / second.run_id).exists()
    files = sorted(p.relative_to(original) for p in original.rglob("*") if p.is_file())
    assert files == before


def test_an_experiment_of_the_old_absolute_location_moves_to_the_portable_one(uri, tmp_path):
    from mlflow.tracking import MlflowClient

    old = (tmp_path / "mlartifacts").as_uri()
    MlflowClient(tracking_uri=uri).create_experiment("hdmnet", artifact_location=old)
    with Tracker(params_for(uri), "train", "after") as tracker:
        pass
    assert client(uri).get_experiment_by_name("hdmnet").artifact_location == (
        "mlflow-artifacts:/hdmnet"
    )
    assert client(uri).get_run(tracker.run_id).info.artifact_uri.startswith("mlflow-artifacts:/")


def test_per_seed_results_are_a_table_in_mlflow_format(uri, tmp_path):
    import pandas as pd

    rows = [{"seed": 510, "final_miou": 40.0}, {"seed": 365, "final_miou": 42.5}]
    with Tracker(params_for(uri), "evaluate", "table") as tracker:
        tracker.log_table("per_seed.json", rows)
    run = client(uri).get_run(tracker.run_id)
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [
        {"path": "per_seed.json", "type": "table"}
    ]
    path = tmp_path / "mlartifacts/hdmnet" / tracker.run_id / "artifacts/per_seed.json"
    table = json.loads(path.read_text())
    assert table == {"columns": ["seed", "final_miou"], "data": [[510, 40.0], [365, 42.5]]}
    assert pd.read_json(path, orient="split").to_dict("records") == rows


def test_a_sigkilled_jobs_run_is_ended_killed_by_the_next_run(uri, tmp_path):
    script = tmp_path / "victim.py"
    script.write_text(VICTIM)
    victim = subprocess.Popen(
        [sys.executable, str(script), str(ROOT / "params.yaml"), uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        run_id = victim.stdout.readline().strip()
        assert run_id, victim.stderr.read()
        assert client(uri).get_run(run_id).info.status == "RUNNING"
        # Alive: a new run leaves it alone.
        with Tracker(params_for(uri), "train", "neighbour"):
            pass
        assert client(uri).get_run(run_id).info.status == "RUNNING"
        os.kill(victim.pid, signal.SIGKILL)
        # Killed but not yet reaped (a zombie) already counts as gone.
        deadline = time.monotonic() + 30
        while process_alive(victim.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_alive(victim.pid)
        with Tracker(params_for(uri), "train", "next"):
            pass
    finally:
        victim.kill()
        victim.wait()
    run = client(uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    assert f"process {victim.pid}" in run.data.tags["ended_by"]


def test_a_reused_pid_does_not_keep_a_dead_run_alive():
    assert process_alive(os.getpid(), process_start())
    assert not process_alive(os.getpid(), "1")  # same pid, another start: a later process


def test_the_parent_run_ends_its_children_left_running(uri, tmp_path):
    """However a job died (another host, no pid to check), when the pipeline ends none of its
    jobs runs: the parent's end marks them KILLED; the parent gets the outputs."""
    params = params_for(uri)
    parent = start_parent_run(params, "pipeline-test")
    store = Store(uri)
    experiment = store.experiment_id("hdmnet")
    orphan = store.client.create_run(
        experiment,
        run_name="train elsewhere",
        tags={"mlflow.parentRunId": parent, "hostname": "node-17", "pid": "4242"},
    ).info.run_id
    stranger = store.client.create_run(experiment, run_name="not ours").info.run_id
    table = tmp_path / "main.md"
    table.write_text("| a |")
    end_parent_run(params, parent, ok=True, artifacts={"tables": [table]})
    mlflow_client = client(uri)
    assert mlflow_client.get_run(parent).info.status == "FINISHED"
    assert mlflow_client.get_run(orphan).info.status == "KILLED"
    assert "node-17" in mlflow_client.get_run(orphan).data.tags["ended_by"]
    assert mlflow_client.get_run(stranger).info.status == "RUNNING"
    assert (tmp_path / "mlartifacts/hdmnet" / parent / "artifacts/tables/main.md").exists()


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
    assert sorted(r.info.run_name for r in runs) == [f"train job{j}" for j in range(8)]
    for run in runs:
        assert run.info.status == "FINISHED"
        history = mlflow_client.get_metric_history(run.info.run_id, "loss")
        assert len(history) == 300
        assert run.data.metrics["miou"] == int(run.info.run_name[len("train job") :]) / 10
        assert len(run.data.params) == len(flatten(load_params(ROOT / "params.yaml").to_dict()))


def test_sqlite_location_is_what_the_database_holds(uri, tmp_path):
    """What MLflow stored, read back without MLflow: no absolute path anywhere."""
    with Tracker(params_for(uri), "train", "paths"):
        pass
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        query = "SELECT artifact_location FROM experiments WHERE name = 'hdmnet'"
        locations = [row[0] for row in db.execute(query)]
        uris = [row[0] for row in db.execute("SELECT artifact_uri FROM runs")]
    assert all(str(tmp_path) not in value for value in locations + uris), (locations, uris)
