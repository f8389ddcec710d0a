"""Multi-process training on CPU: ``hdmnet train-base --nproc 2`` (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.train.test_engines import (
    GRID,
    iterations_per_epoch,
    train_items,
    write_params,
)

from hdmnet import layout
from hdmnet.layout import BaseRun

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop("HDMNET_PARENT_RUN_ID", None)
SMALL = [
    "base.pascal.epochs=1",
    "base.pascal.crop=33",
    "base.pascal.val_size=33",
    "train.workers=0",
    "train.threads=1",
]


def train_base_2_processes(params_file) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hdmnet.cli", "train-base", "--nproc", "2"]
    return subprocess.run(
        [*command, "--params", str(params_file), *GRID],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )


def test_two_gloo_processes_train_and_only_rank_0_writes(embedded_data, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = embedded_data.with_overrides(
        [
            *SMALL,
            f"paths.results={tmp_path / 'results'}",
            f"tracking.uri={uri}",
            "tracking.enabled=true",
            "base.pascal.batch_size=8",
        ],
    )
    done = train_base_2_processes(write_params(params, tmp_path / "params.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]

    out = layout.base_dir(params, BaseRun("pascal", "small", 0, 321))
    # One set of outputs, no temp files left; the finished run dropped its resume state.
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "last.pth", "record.json"]
    record = json.loads((out / "record.json").read_text())
    assert record["world_size"] == 2
    assert (record["global_batch"], record["per_process_batch"]) == (8, 4)
    assert len(record["epochs"]) == 1 and 0 <= record["epochs"][0]["val_miou"] <= 100

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # rank 1 logs nothing
    run = runs[0]
    assert run.info.run_id == record["mlflow_run_id"] and run.info.status == "FINISHED"
    assert (run.data.tags["world_size"], run.data.tags["global_batch"]) == ("2", "8")
    # Each process takes half the (padded) list: half the iterations of one process.
    iterations = iterations_per_epoch(train_items(params), 4, processes=2)
    assert iterations == -(-train_items(params) // 2) // 4
    assert len(client.get_metric_history(run.info.run_id, "loss")) == iterations
    assert run.data.metrics["epoch_val_miou"] == record["epochs"][0]["val_miou"]


def test_a_global_batch_the_processes_cannot_share_fails_clearly(embedded_data, tmp_path):
    params = embedded_data.with_overrides(
        [
            *SMALL,
            f"paths.results={tmp_path / 'results'}",
            "tracking.enabled=false",
            "base.pascal.batch_size=5",
        ],
    )
    done = train_base_2_processes(write_params(params, tmp_path / "params.yaml"))
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "global batch 5 is not divisible by 2 processes" in output
    assert "batch_size parameter to a multiple" in output
    out = layout.base_dir(params, BaseRun("pascal", "small", 0, 321))
    assert not out.exists() or not any(out.iterdir())
