"""Fault injection on the tiny pipeline: whatever is killed, dry-run or evaluated on the side, the
tables only ever show numbers that the current parameters produced.

One module-wide pipeline run (the tiny grid of test_pipeline, with two meta-training epochs so
that a training can be killed between its epochs); each test works on its own copy of the tree.
Processes are found by their working directory, so nothing outside the test's tree is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tests.workflow.test_pipeline import merge, run_tiny_demo

from hdmnet import identity, layout
from hdmnet.config import load_params
from hdmnet.layout import BaseRun, Run

RUNS = [Run("pascal", "small", variant, 0, 1, 321) for variant in ("full", "no_distill")]
TWO_EPOCHS = {"meta": {"pascal": {"epochs": 2}}}


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HDMNET_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env


def snakemake(*args: str) -> list[str]:
    profile = ("--profile", "workflow/profiles/default", "--cores", "2")
    return [sys.executable, "-m", "snakemake", *profile, *args]


def run(tree: Path, command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=tree, env=environment(), capture_output=True, text=True)


def processes(tree: Path, *words: str) -> list[int]:
    """PIDs of processes running in ``tree`` whose command line holds every word."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        text = [a.decode(errors="replace") for a in argv]
        if cwd == str(tree) and all(
            any(w == part or part.endswith("/" + w) for part in text) for w in words
        ):
            found.append(int(entry.name))
    return found


def wait_for(condition, what: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def tree_params(tree: Path, *files: str):
    """The parameters of a Snakemake run in ``tree`` (params.yaml with config files over it)."""
    raw = yaml.safe_load((tree / "params.yaml").read_text())
    for name in files:
        raw = merge(raw, yaml.safe_load((tree / name).read_text()))
    (tree / ".merged.yaml").write_text(yaml.safe_dump(raw))
    return load_params(tree / ".merged.yaml", [f"paths.results={tree / 'results'}"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    tree, done = run_tiny_demo(tmp_path_factory.mktemp("faults"), extra=TWO_EPOCHS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tree


@pytest.fixture
def tree(finished, tmp_path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def test_a_killed_retrain_never_leaves_a_stale_number(tree):
    """Change the meta-learning rate, SIGKILL the retraining between its epochs, run again while
    a dry run with another parameter file looks on: the retrain resumes to the result of an
    uninterrupted run, every evaluation reruns, the tables show the new rate's numbers only, and
    a further run has nothing to do."""
    lr = 2 * tree_params(tree).meta.pascal.lr  # a change of the preset's rate, whatever it is
    (tree / "lr.yaml").write_text(yaml.safe_dump({"meta": {"pascal": {"lr": lr}}}))
    (tree / "other.yaml").write_text(
        yaml.safe_dump({"eval": {"seeds": [1, 2, 3]}, "meta": {"pascal": {"test_episodes": 5}}})
    )
    new = tree_params(tree, "lr.yaml")

    first = subprocess.Popen(
        snakemake("--configfile", "lr.yaml"),
        cwd=tree,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    states = wait_for(lambda: list(tree.glob("results/meta/**/state.pth")), "a first epoch")
    killed = [p for p in processes(tree, "hdmnet", "train")]
    assert killed, "no training process to kill"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert first.wait(timeout=300) != 0
    killed_dirs = [s.parent for s in states]
    for folder in killed_dirs:
        assert (folder / "state.pth").exists() and not (folder / "best.pth").exists()

    # The rerun, with a dry run of other parameters while it trains.
    second = subprocess.Popen(
        snakemake("--configfile", "lr.yaml"),
        cwd=tree,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(lambda: processes(tree, "hdmnet", "train"), "the retraining", timeout=300)
    run(tree, snakemake("-n", "--configfile", "other.yaml"))
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-3000:]

    logs = "".join(p.read_text() for p in (tree / "logs" / "train").glob("*.log"))
    assert "resuming train" in logs
    for run_ in RUNS:
        record = json.loads(layout.metrics_file(new, run_).read_text())
        assert record["config"]["meta"]["pascal"]["lr"] == lr, run_
        assert record["config_digest"] == identity.evaluation(new, run_)
        # The live run's protocol, not the dry run's.
        assert (record["seeds"], record["episodes_per_seed"]) == ([510, 365], 12)
        checkpoint = tree / record["checkpoint"]["path"]
        assert torch.load(checkpoint, weights_only=True)["meta"]["identity"] == (
            identity.meta_learner(new, run_)
        )
    table = (tree / "results/tables/main.csv").read_text()
    full = json.loads(layout.metrics_file(new, RUNS[0]).read_text())
    assert f"{full['miou']:.1f}" in (tree / "results/tables/main.md").read_text() and table
    # Nothing of the dry run's parameters was written.
    for path in (tree / ".snakemake/hdmnet-params").iterdir():
        assert yaml.safe_load(path.read_text())["eval"]["seeds"] == [510, 365], path

    # The resumed training equals an uninterrupted one with the new rate.
    for folder in killed_dirs:
        variant = folder.parent.parent.parent.name
        reference_tree = tree.parent / f"reference-{variant}"
        reference = new.with_overrides(
            [f"paths.results={reference_tree}", "tracking.enabled=false"]
        )
        base = layout.base_dir(reference, BaseRun("pascal", "small", 0, 321))
        shutil.copytree(layout.base_dir(new, BaseRun("pascal", "small", 0, 321)), base)
        params_file = tree / f"reference-{variant}.yaml"
        params_file.write_text(yaml.safe_dump(reference.to_dict()))
        grid = ["--dataset", "pascal", "--backbone", "small", "--fold", "0", "--shot", "1"]
        done = run(
            tree,
            [sys.executable, "-m", "hdmnet.cli", "train", "--params", str(params_file), *grid,
             "--variant", variant],
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        reference_dir = layout.meta_dir(reference, Run("pascal", "small", variant, 0, 1, 321))
        for name in ("best.pth", "last.pth"):
            ours = torch.load(folder / name, weights_only=True)
            theirs = torch.load(reference_dir / name, weights_only=True)
            assert ours["epoch"] == theirs["epoch"], name
            for key, tensor in theirs["state_dict"].items():
                assert torch.equal(ours["state_dict"][key], tensor), f"{variant} {name}: {key}"

    again = run(tree, snakemake("-n", "--configfile", "lr.yaml"))
    assert "Nothing to be done" in again.stdout + again.stderr


def test_evaluating_an_external_checkpoint_leaves_the_pipelines_records_alone(tree):
    results = tree / "results"
    before = {p: p.read_bytes() for p in results.rglob("*") if p.is_file()}
    external = tree / "official.pth"
    shutil.copy(results / "meta/pascal/small/full/fold0/shot1/seed321/best.pth", external)
    grid = ["--dataset", "pascal", "--backbone", "small", "--fold", "0", "--shot", "1"]
    command = [sys.executable, "-m", "hdmnet.cli", "evaluate", "--params", "params.yaml", *grid]
    done = run(tree, [*command, "--checkpoint", str(external), "--name", "official"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p: p.read_bytes() for p in before} == before
    record = json.loads(
        (results / "external/official/pascal/small/full/fold0-shot1.json").read_text()
    )
    assert record["external"]["name"] == "official" and record["checkpoint"]["path"] == str(
        external
    )
    # Without a name the command says what is missing instead of writing anywhere.
    done = run(tree, [*command, "--checkpoint", str(external)])
    assert done.returncode == 2 and "--name" in done.stderr


def test_an_imported_base_learner_is_used_instead_of_training_one(tree):
    params = load_params(tree / "params.yaml", [f"paths.results={tree / 'results'}"])
    folder = layout.base_dir(params, BaseRun("pascal", "small", 0, 321))
    ours = torch.load(folder / "best.pth", weights_only=True)["state_dict"]
    bam = tree / "bam_pspnet_fold0.pth"  # BAM's layout: DataParallel prefixes, no metadata
    torch.save({"epoch": 99, "state_dict": {f"module.{k}": v for k, v in ours.items()}}, bam)
    shutil.rmtree(folder)
    grid = ["--dataset", "pascal", "--backbone", "small", "--fold", "0"]
    done = run(tree, [sys.executable, "-m", "hdmnet.cli", "import-base", str(bam), *grid])
    assert done.returncode == 0, done.stderr[-2000:]
    installed = torch.load(folder / "best.pth", weights_only=True)
    assert installed["meta"]["identity"] == identity.base_learner(
        params, BaseRun("pascal", "small", 0, 321)
    )
    assert installed["meta"]["imported"]["path"] == str(bam)
    record = json.loads((folder / "record.json").read_text())
    assert (
        record["selection"] == "imported"
        and record["config_digest"] == (installed["meta"]["identity"])
    )
    planned = run(tree, snakemake("-n"))
    text = planned.stdout + planned.stderr
    assert planned.returncode == 0, text
    assert "rule train_base" not in text and "rule train:" in text  # meta learners retrain on it


def test_hdmnet_demo_continues_after_ctrl_c(tree):
    raw = yaml.safe_load((tree / "params.yaml").read_text())
    raw["meta"]["pascal"]["lr"] = 0.003  # something to retrain
    (tree / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    demo = [sys.executable, "-m", "hdmnet.cli", "demo"]
    first = subprocess.Popen(
        demo,
        cwd=tree,
        env=environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # with Ctrl-C's default action: a test run started in the background (`cmd &` in a
        # script) inherits SIGINT ignored, and the demo would then never see it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for(lambda: processes(tree, "hdmnet", "train"), "a training job", timeout=300)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C
    assert first.wait(timeout=300) != 0
    done = run(tree, demo)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "continuing an interrupted run" in done.stderr
    params = load_params(tree / "params.yaml", [f"paths.results={tree / 'results'}"])
    for run_ in RUNS:
        record = json.loads(layout.metrics_file(params, run_).read_text())
        assert record["config_digest"] == identity.evaluation(params, run_)
