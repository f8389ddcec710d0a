"""A training run killed inside its second epoch and started again with the same command ends
with the very weights and metrics of a run that was never interrupted (CPU, one thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.train.test_engines import GRID, RUN, trained_setup, write_params

from hdmnet import layout
from hdmnet.layout import BaseRun

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("HDMNET_PARENT_RUN_ID", None)


def start(command: str, params_file: Path, log: Path, *extra: str) -> subprocess.Popen:
    """``hdmnet <command>`` as a child process, its output going to ``log``."""
    with open(log, "w") as out:
        args = [sys.executable, "-m", "hdmnet.cli", command, "--params", str(params_file)]
        return subprocess.Popen([*args, *GRID, *extra], stdout=out, stderr=out, env=ENV)


def finish(proc: subprocess.Popen, log: Path) -> str:
    assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    return log.read_text()


def kill_inside_second_epoch(proc: subprocess.Popen, log: Path, state: Path, line: str) -> None:
    """Wait until epoch 1 is logged and its state written, let epoch 2 start, then SIGKILL."""
    deadline = time.monotonic() + 900
    while not (state.exists() and line in log.read_text()):
        assert proc.poll() is None, f"the run ended before epoch 1 was saved:\n{log.read_text()}"
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.05)
    time.sleep(0.5)  # some batches into epoch 2 (each epoch takes several seconds)
    assert proc.poll() is None, "the run finished before it could be killed mid-epoch"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def assert_same_results(folder: Path, reference: Path) -> None:
    for name in ("best.pth", "last.pth"):
        ours = torch.load(folder / name, weights_only=True)
        ref = torch.load(reference / name, weights_only=True)
        assert ours["epoch"] == ref["epoch"] and ours["meta"] == ref["meta"]
        assert ours["state_dict"].keys() == ref["state_dict"].keys()
        for key, tensor in ref["state_dict"].items():
            assert torch.equal(ours["state_dict"][key], tensor), f"{name}: {key} differs"
    ours = json.loads((folder / "record.json").read_text())
    ref = json.loads((reference / "record.json").read_text())

    def metrics(epochs: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]

    assert metrics(ours["epochs"]) == metrics(ref["epochs"])
    assert (ours["best_epoch"], ours["best_val_miou"]) == (ref["best_epoch"], ref["best_val_miou"])
    # (The files themselves differ in bytes: torch.save names the archive after the temp file.)
    assert ours["checkpoints"].keys() == ref["checkpoints"].keys() == {"best", "last"}


def run_killed_and_resumed(command: str, params_file: Path, out: Path, tmp: Path) -> str:
    """Uninterrupted run into ``out`` (then moved aside), killed run, resumed run; returns
    the resumed run's log. Both runs write to the same folder, so even paths agree."""
    reference = out.with_name(out.name + "-reference")
    reference_log = tmp / "reference.log"
    finish(start(command, params_file, reference_log, *extra_args(command)), reference_log)
    out.rename(reference)

    log = tmp / "killed.log"
    proc = start(command, params_file, log, *extra_args(command))
    line = "epoch 1/2:"
    kill_inside_second_epoch(proc, log, out / "state.pth", line)
    state = torch.load(out / "state.pth", map_location="cpu", weights_only=True)
    assert state["position"]["epoch"] == 1 and len(state["history"]["epochs"]) == 1
    assert not (out / "last.pth").exists() and not (out / "record.json").exists()

    resumed_log = tmp / "resumed.log"
    text = finish(start(command, params_file, resumed_log, *extra_args(command)), resumed_log)
    assert_same_results(out, reference)
    return text


def extra_args(command: str) -> list[str]:
    return ["--shot", "1"] if command == "train" else []


def test_killed_base_training_resumes_to_the_uninterrupted_result(embedded_data, tmp_path):
    params = embedded_data.with_overrides(
        [
            f"paths.results={tmp_path / 'results'}",
            "tracking.enabled=false",
            "base.pascal.epochs=2",
            "base.pascal.batch_size=8",
            "base.pascal.crop=33",
            "base.pascal.val_size=33",
            "train.workers=0",
            "train.threads=1",
        ],
    )
    params_file = write_params(params, tmp_path / "params.yaml")
    out = layout.base_dir(params, BaseRun("pascal", "small", 0, 321))
    log = run_killed_and_resumed("train-base", params_file, out, tmp_path)
    assert "resuming base-pascal-small-fold0-seed321 at epoch 2" in log
    assert "epoch 1/2:" not in log and "epoch 2/2:" in log  # epoch 1 was not trained again


def test_a_job_rerun_with_another_thread_count_resumes(embedded_data, tmp_path):
    """Threads (like GPUs and loader workers) change how a result is computed, not what it is:
    they are not part of the job's identity, so the rerun continues the killed run."""
    params = embedded_data.with_overrides(
        [
            f"paths.results={tmp_path / 'results'}",
            "tracking.enabled=false",
            "base.pascal.epochs=2",
            "base.pascal.crop=33",
            "base.pascal.val_size=33",
            "train.workers=0",
            "train.threads=1",
        ],
    )
    params_file = write_params(params, tmp_path / "params.yaml")
    out = layout.base_dir(params, BaseRun("pascal", "small", 0, 321))
    log = tmp_path / "killed.log"
    proc = start("train-base", params_file, log)
    kill_inside_second_epoch(proc, log, out / "state.pth", "epoch 1/2:")
    resumed_log = tmp_path / "resumed.log"
    proc = start("train-base", params_file, resumed_log, "-s", "train.threads=2")
    text = finish(proc, resumed_log)
    assert "resuming base-pascal-small-fold0-seed321 at epoch 2" in text
    assert "epoch 1/2:" not in text and "epoch 2/2:" in text
    record = json.loads((out / "record.json").read_text())
    assert len(record["epochs"]) == 2 and record["hardware"]["threads"] == 2


@pytest.mark.slow
def test_killed_meta_training_resumes_to_the_uninterrupted_result(embedded_data, tmp_path):
    """The same for HDMNet meta-training (AdamW, episodes, cached validation features)."""
    trained = trained_setup(embedded_data)
    params = trained.params.with_overrides(
        [
            f"paths.results={tmp_path / 'results'}",
            "tracking.enabled=false",
            "meta.pascal.epochs=2",
            "meta.pascal.batch_size=8",
            "meta.pascal.image_size=65",
            "meta.pascal.val_episodes=40",
        ],
    )
    base = Path(trained.base["checkpoints"]["best"]["path"])
    target = layout.base_checkpoint(params, BaseRun("pascal", "small", 0, 321))
    target.parent.mkdir(parents=True)
    target.write_bytes(base.read_bytes())
    params_file = write_params(params, tmp_path / "params.yaml")
    out = layout.meta_dir(params, RUN)
    log = run_killed_and_resumed("train", params_file, out, tmp_path)
    assert f"resuming train {RUN.name} at epoch 2" in log
