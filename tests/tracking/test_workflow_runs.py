"""Any Snakemake invocation that runs jobs is one MLflow parent run (the workflow's onstart,
onsuccess and onerror handlers), not only ``hdmnet demo``: its jobs' runs are its children, the
tables it wrote are attached, a failed invocation ends FAILED, a job killed with SIGKILL does not
stay RUNNING, and an invocation with nothing to do makes no run.

The workflow is a copy of the project's, with two extra rules whose jobs open a Tracker run as
the pipeline's jobs do (one writes a table, one is killed), so no stage has to run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.workflow.test_snakemake import workflow_copy

EXTRA_RULES = """

rule tracked_ok:
    output:
        "results/tables/note.md",
    shell:
        "{python} job.py ok {{output}}"


rule tracked_killed:
    output:
        "killed.txt",
    shell:
        "{python} job.py killed {{output}}"
"""

JOB = """
import os, signal, sys
from pathlib import Path
from hdmnet.config import load_params
from hdmnet.tracking import Tracker

what, output = sys.argv[1], Path(sys.argv[2])
with Tracker(load_params("params.yaml"), "evaluate", f"job {what}") as tracker:
    if what == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("| a table |")
"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    tree = workflow_copy(tmp_path_factory.mktemp("workflow-runs"))
    with open(tree / "Snakefile", "a") as snakefile:
        snakefile.write(EXTRA_RULES.format(python=sys.executable))
    (tree / "job.py").write_text(JOB)
    return tree


def snakemake(tree: Path, *targets: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HDMNET_"))}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "snakemake", "--cores", "1", *targets]
    return subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)


def runs(tree: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tree / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("hdmnet")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def parents(tree: Path) -> list:
    return [r for r in runs(tree) if r.data.tags.get("stage") == "pipeline"]


def children(tree: Path, parent) -> list:
    parent_id = parent.info.run_id
    return [r for r in runs(tree) if r.data.tags.get("mlflow.parentRunId") == parent_id]


@pytest.fixture(scope="module")
def succeeded(tree):
    done = snakemake(tree, "results/tables/note.md")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_a_snakemake_run_is_a_parent_run_with_its_jobs_and_tables(tree, succeeded):
    (parent,) = parents(tree)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("pipeline default ")
    assert parent.data.tags["pid"] != str(os.getpid())  # Snakemake's own process
    (job,) = children(tree, parent)
    assert job.info.run_name == "evaluate job ok" and job.info.status == "FINISHED"
    artifacts = tree / "mlartifacts" / "hdmnet" / parent.info.run_id / "artifacts"
    assert (artifacts / "tables" / "note.md").read_text() == "| a table |"


def test_nothing_to_do_makes_no_run(tree, succeeded):
    before = len(runs(tree))
    done = snakemake(tree, "results/tables/note.md")
    assert done.returncode == 0 and "Nothing to be done" in done.stdout + done.stderr
    assert len(runs(tree)) == before


def test_a_failed_run_ends_failed_and_its_killed_job_killed(tree, succeeded):
    done = snakemake(tree, "killed.txt")
    assert done.returncode != 0
    failed = [p for p in parents(tree) if p.info.status != "FINISHED"]
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    (job,) = children(tree, failed[0])
    assert job.info.run_name == "evaluate job killed"
    assert job.info.status == "KILLED" and "ended_by" in job.data.tags
    assert not [r for r in runs(tree) if r.info.status == "RUNNING"]
