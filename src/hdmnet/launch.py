"""Launching a training job on its devices: claim free GPUs, start torchrun for several.

On a multi-GPU machine Snakemake limits how many GPUs' worth of jobs run at once (the ``gpu``
resource) but does not say which cards a job gets. A job therefore claims its own: an exclusive
lock file per card under ``HDMNET_GPU_LOCKS`` (default /tmp/hdmnet-gpu-locks), held for the
job's lifetime, so jobs running side by side never share a card. Under SLURM (or whenever
CUDA_VISIBLE_DEVICES is already set) the scheduler's choice is kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from hdmnet.errors import StageError

LOCK_DIR_ENV = "HDMNET_GPU_LOCKS"


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


@contextlib.contextmanager
def claim_gpus(count: int, total: int | None = None) -> Iterator[list[int]]:
    """Hold exclusive locks on ``count`` free GPU ids and set CUDA_VISIBLE_DEVICES to them."""
    if count <= 0 or os.environ.get("CUDA_VISIBLE_DEVICES"):
        yield []
        return
    total = visible_gpu_count() if total is None else total
    if count > total:
        raise StageError(
            f"the job needs {count} GPUs but the machine has {total} "
            "(on a machine without GPUs: -s train.gpus=0)"
        )
    lock_dir = Path(os.environ.get(LOCK_DIR_ENV, "/tmp/hdmnet-gpu-locks"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    handles = []
    try:
        for gpu in range(total):
            handle = open(lock_dir / f"gpu{gpu}.lock", "w")  # noqa: SIM115 - held past the loop
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handles.append((gpu, handle))
            if len(handles) == count:
                break
        if len(handles) < count:
            raise StageError(
                f"only {len(handles)} of {count} GPUs are free (locks in {lock_dir}); "
                "lower the gpu resource given to Snakemake"
            )
        ids = [gpu for gpu, _ in handles]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
        yield ids
    finally:
        for _, handle in handles:
            handle.close()


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Run ``hdmnet <argv>`` in ``nproc`` processes with torchrun (one node)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "hdmnet.cli",
        *worker_argv(argv),
    ]
    return subprocess.call(command)


def worker_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc``: the workers do not need it, and torchrun's own parser
    rejects it anywhere on its command line (an ambiguous prefix of ``--nproc-per-node``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
