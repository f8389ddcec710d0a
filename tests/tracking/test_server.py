"""Against a real ``mlflow server`` on loopback (its own SQLite store and artifact root in a temp
folder), everything a user looks for is found through the REST API: runs named by stage and job
under the pipeline's parent run, checkpoints uploaded when ``tracking.upload_checkpoints`` is
on, the per-seed table, the tables and the report on the parent, and no run left RUNNING after a
job was SIGKILLed.

The jobs are the CLI's own, in this process (as ``trained_setup`` runs them), around the
handlers Snakemake's onstart/onsuccess call; the killed one is a subprocess. The evaluation and
the report reuse the session's trained learners; the base learner trained here (one epoch) only
has to upload its checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.train.test_engines import GRID, RUN, Trained, environ, trained_setup, write_params

from hdmnet import layout, pipeline
from hdmnet.cli import main
from hdmnet.tracking import PARENT_ENV, Tracker

# One cell (fold 0, 1 shot, no ablation) so that tables and report need only the trained run.
ONE_CELL = [
    "grid.folds=[0]",
    "grid.shots=[1]",
    "ablation.variants=[]",
    "ablation.kshot_variants=[]",
    "tracking.upload_checkpoints=true",
]
NAMES = {
    "train-base": "train-base pascal-small-fold0-seed321",
    "train": "train pascal-small-full-fold0-shot1-seed321",
    "evaluate": "evaluate pascal-small-full-fold0-shot1-seed321",
}


@dataclass(frozen=True)
class Server:
    uri: str
    folder: Path  # holds mlflow.db and mlartifacts/, as a project folder does


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job workers
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "mlartifacts"),
        "--workers",
        "1",
    ]
    log = open(folder / "server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    # Its own process group: the server's worker goes with it at the end.
    process = subprocess.Popen(
        command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{(folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer within 240 s")
            time.sleep(0.25)
        yield Server(uri, folder)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def trained(embedded_data) -> Trained:
    return trained_setup(embedded_data)


@dataclass(frozen=True)
class Logged:
    parent: str
    killed: str  # the run of the SIGKILLed training
    killed_pid: int
    params: object  # the evaluation's parameters
    base_record: dict


def _client(server: Server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server.uri)


def _running_train(server: Server, parent: str, timeout: float = 120) -> str:
    client = _client(server)
    experiment = client.get_experiment_by_name("hdmnet")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if experiment is None:
            experiment = client.get_experiment_by_name("hdmnet")
        else:
            found = client.search_runs(
                [experiment.experiment_id],
                filter_string=(
                    "attributes.status = 'RUNNING' and tags.stage = 'train' "
                    f"and tags.`mlflow.parentRunId` = '{parent}'"
                ),
            )
            if found:
                return found[0].info.run_id
        time.sleep(0.2)
    raise AssertionError("the training job's run did not appear")


@pytest.fixture(scope="module")
def logged(trained, server, tmp_path_factory) -> Logged:
    folder = tmp_path_factory.mktemp("on-server")
    results = folder / "results"
    for part in ("base", "meta"):
        shutil.copytree(Path(trained.params.paths.results) / part, results / part)
    params = trained.params.with_overrides([f"paths.results={results}", *ONE_CELL])
    # A one-epoch base learner of its own (it only has to upload its checkpoints).
    quick = params.with_overrides([f"paths.results={folder / 'quick'}", "base.pascal.epochs=1"])
    # A training to kill: it starts from the trained base learner.
    doomed = params.with_overrides([f"paths.results={folder / 'doomed'}"])
    shutil.copytree(results / "base", folder / "doomed" / "base")
    files = {
        name: write_params(p, folder / f"{name}.yaml")
        for name, p in (("main", params), ("quick", quick), ("doomed", doomed))
    }

    with environ(MLFLOW_TRACKING_URI=server.uri, **{PARENT_ENV: None}):
        parent = pipeline.workflow_started(params)
        assert parent is not None and os.environ[PARENT_ENV] == parent
        assert main(["train-base", "--params", str(files["quick"]), *GRID]) == 0
        train = ["train", "--params", str(files["doomed"]), *GRID, "--shot", "1"]
        victim = subprocess.Popen(
            [sys.executable, "-m", "hdmnet.cli", *train],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            killed = _running_train(server, parent)
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        # The next job's run (the evaluation's) ends the killed job's run.
        for command in ("evaluate", "aggregate", "report"):
            cell = [*GRID, "--shot", "1"] if command == "evaluate" else []
            assert main([command, "--params", str(files["main"]), *cell]) == 0, command
        pipeline.workflow_finished(params, ok=True)
    base_dir = layout.base_dir(quick, RUN.base)
    base_record = json.loads((base_dir / "record.json").read_text())
    return Logged(parent, killed, victim.pid, params, base_record)


def _children(server: Server, parent: str) -> dict[str, object]:
    client = _client(server)
    experiment = client.get_experiment_by_name("hdmnet")
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    by_stage = {run.data.tags["stage"]: run for run in found}
    assert len(by_stage) == len(found) == 3, [r.info.run_name for r in found]
    return by_stage


def _files(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _files(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(out)


def test_runs_are_named_by_stage_and_job_under_the_parent(server, logged):
    client = _client(server)
    parent = client.get_run(logged.parent)
    assert parent.info.status == "FINISHED" and parent.data.tags["stage"] == "pipeline"
    assert parent.info.run_name.startswith("pipeline default ")
    children = _children(server, logged.parent)
    assert {stage: run.info.run_name for stage, run in children.items()} == NAMES
    statuses = {stage: run.info.status for stage, run in children.items()}
    assert statuses == {"train-base": "FINISHED", "train": "KILLED", "evaluate": "FINISHED"}
    experiment = client.get_experiment_by_name("hdmnet")
    # The server chose the location: relative to its artifact root, not a path of this machine.
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")


def test_no_run_is_left_running_after_a_sigkilled_job(server, logged):
    client = _client(server)
    experiment = client.get_experiment_by_name("hdmnet")
    running = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    assert running == []
    killed = client.get_run(logged.killed)
    assert killed.info.status == "KILLED" and killed.info.end_time is not None
    # Ended by the next job's run on this host (the evaluation), which found the pid gone.
    assert f"process {logged.killed_pid} " in killed.data.tags["ended_by"]


def test_checkpoints_are_uploaded_when_asked(server, logged, tmp_path):
    client = _client(server)
    run = _children(server, logged.parent)["train-base"]
    assert _files(client, run.info.run_id) == [
        "checkpoints/best.pth",
        "checkpoints/last.pth",
        "record.json",
    ]
    local = client.download_artifacts(run.info.run_id, "checkpoints/best.pth", str(tmp_path))
    digest = hashlib.sha256(Path(local).read_bytes()).hexdigest()
    assert digest == logged.base_record["checkpoints"]["best"]["sha256"]


def test_per_seed_results_are_a_table(server, logged):
    client = _client(server)
    run = _children(server, logged.parent)["evaluate"]
    record = json.loads(layout.metrics_file(logged.params, RUN).read_text())
    experiment = client.get_experiment_by_name("hdmnet")
    # load_table finds the runs through the fluent API, which reads the URI from the environment.
    with environ(MLFLOW_TRACKING_URI=server.uri):
        table = client.load_table(experiment.experiment_id, "per_seed.json", [run.info.run_id])
    assert table["seed"].tolist() == record["seeds"] == [510, 365]
    for name in ("final", "meta"):
        expected = [entry["miou"] for entry in record["outputs"][name]["per_seed"]]
        assert table[f"{name}_miou"].tolist() == pytest.approx(expected)
    assert not [key for key in run.data.metrics if "seed" in key]
    assert run.data.metrics["final_miou"] == pytest.approx(record["miou"])


def test_tables_figures_and_report_are_on_the_parent(server, logged):
    files = _files(_client(server), logged.parent)
    tables = sorted(p.name for p in layout.tables_dir(logged.params).iterdir())
    assert [f for f in files if f.startswith("tables/")] == [f"tables/{n}" for n in tables]
    assert {"tables/main.md", "tables/main.csv", "report/index.html"} <= set(files)
    assert any(f.startswith("figures/") for f in files)


def test_a_run_written_straight_into_the_sqlite_file_is_served(server, logged, tmp_path):
    """A SQLite store's artifacts (mlartifacts/ beside the database) are where a server started
    in that folder with its defaults looks for them."""
    note = tmp_path / "note.txt"
    note.write_text("beside the database")
    params = logged.params.with_overrides([f"tracking.uri=sqlite:///{server.folder / 'mlflow.db'}"])
    with (
        environ(MLFLOW_TRACKING_URI=None, **{PARENT_ENV: None}),
        Tracker(params, "evaluate", "direct") as tracker,
    ):
        tracker.log_artifact(note, "notes")
    client = _client(server)
    assert client.get_run(tracker.run_id).info.run_name == "evaluate direct"
    assert _files(client, tracker.run_id) == ["notes/note.txt"]
    local = client.download_artifacts(tracker.run_id, "notes/note.txt", str(tmp_path / "back"))
    assert Path(local).read_text() == "beside the database"
