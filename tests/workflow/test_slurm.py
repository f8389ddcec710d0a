"""The SLURM profile for real: a one-node cluster on localhost runs the reduced pipeline through
`workflow/profiles/slurm` (snakemake-executor-plugin-slurm), every job goes through sbatch, and
the outputs are those of a local run. Skipped, with the reason, where the cluster cannot start
(no root, no slurm-wlm/munge: scripts/ensure_test_tools.sh installs them)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.workflow.local_slurm import ClusterUnavailable, LocalSlurm
from tests.workflow.test_pipeline import run_tiny_demo

SUBMITTED = re.compile(r"SLURM jobid (\d+)")


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> Iterator[tuple[Path, subprocess.CompletedProcess, dict]]:
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as why:
        cluster.stop()
        pytest.skip(f"no local SLURM cluster: {why}")
    try:
        tree, done = run_tiny_demo(
            tmp_path_factory.mktemp("slurm-pipeline"),
            "--profile",
            "workflow/profiles/slurm",
            env=cluster.env,
        )
        job_states = {}
        for job_id in sorted(set(SUBMITTED.findall(done.stdout + done.stderr))):
            shown = subprocess.run(
                ["scontrol", "show", "job", job_id], env=cluster.env, capture_output=True, text=True
            )
            state = re.search(r"JobState=(\w+)", shown.stdout)
            rule = re.search(r"Comment=rule_([a-z_]+?)(?:_wildcards_|\s|$)", shown.stdout)
            job_states[job_id] = (
                state.group(1) if state else shown.stderr.strip(),
                rule.group(1) if rule else None,
            )
        yield tree, done, job_states
    finally:
        cluster.stop()


def test_pipeline_runs_through_slurm(slurm_run):
    tree, done, _ = slurm_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for variant in ("full", "no_distill"):
        path = tree / f"results/metrics/pascal/small/{variant}/fold0-shot1-seed321.json"
        record = json.loads(path.read_text())
        assert record["seeds"] == [510, 365] and record["episodes_per_seed"] == 12
    assert (tree / "results/report/index.html").stat().st_size > 0
    assert "Report:" in done.stdout


def test_every_heavy_job_was_a_completed_slurm_job(slurm_run):
    tree, done, jobs = slurm_run
    assert done.returncode == 0
    assert {state for state, _ in jobs.values()} == {"COMPLETED"}, jobs
    # Each job's SLURM comment names its rule: every compute job of the reduced grid went through
    # sbatch; generation, downloads, tables and the report are local rules (no node needed, and
    # cluster nodes often have no network), run where Snakemake runs.
    rules = sorted(rule for _, rule in jobs.values())
    assert rules == sorted(["prepare", "train_base"] + ["train"] * 2 + ["evaluate"] * 2), jobs
    for local in ("synth.log", "download/pascal.log", "aggregate.log", "report.log"):
        assert (tree / "logs" / local).exists(), local
