"""What both training stages do around their epoch loop: start the processes, seed, load epochs
in a resumable order, wrap the model for several processes, and run the loop inside its MLflow
run, ending in checkpoints and a training record.

The stages (``base.py``, ``meta.py``) keep only what is their own: datasets, model, optimiser,
step and validation.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from hdmnet.config import Params
from hdmnet.data.episodes import collate
from hdmnet.jobs.distributed import (
    DistInfo,
    EpochSampler,
    cleanup,
    init_distributed,
    per_process_batch,
    set_threads,
)
from hdmnet.tracking import Tracker
from hdmnet.train.loop import Loop, conclude, fit
from hdmnet.train.state import seed_everything


def begin(params: Params, seed: int) -> tuple[DistInfo, float]:
    """Threads, processes and generators of a training job; returns them and its start time."""
    started = time.perf_counter()
    set_threads(params)
    info = init_distributed()
    seed_everything(seed)
    return info, started


def epoch_loader(
    dataset: Dataset, global_batch: int, seed: int, info: DistInfo, workers: int
) -> tuple[DataLoader, EpochSampler, int]:
    """This process's share of every epoch, in an order that depends only on (seed, epoch);
    returns the loader, its sampler and the per-process batch."""
    batch = per_process_batch(global_batch, info.world_size)
    sampler = EpochSampler(len(dataset), seed, True, info.rank, info.world_size)  # type: ignore[arg-type]
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
    )
    return loader, sampler, batch


def across_processes(
    model: torch.nn.Module, info: DistInfo, sync_bn: bool = False, find_unused: bool = False
) -> torch.nn.Module:
    """DistributedDataParallel across processes, else the model itself. ``sync_bn``: batch
    statistics over all GPUs (for a model whose BatchNorm layers train)."""
    if not info.distributed:
        return model
    if sync_bn and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused
    )


def run(
    loop: Loop,
    *,
    stage: str,
    name: str,
    tracking: Params,
    tags: dict[str, Any],
    checkpoint_meta: dict[str, Any],
    fields: dict[str, Any],
    params: Params,
    started: float,
) -> dict[str, Any]:
    """Fit ``loop`` inside the job's MLflow run (``tags`` also go into the record, with the
    stage's own ``fields``), write the checkpoints and the training record, end the process
    group; returns the record."""
    tags = {**tags, "world_size": loop.info.world_size}
    with Tracker(tracking, stage, name, tags=tags, rank=loop.info.rank) as tracker:
        loop.tracker = tracker
        history, best = fit(loop)
        record = conclude(loop, history, best, checkpoint_meta, {**tags, **fields}, params, started)
    cleanup(loop.info)
    return record
