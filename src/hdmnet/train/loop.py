"""The epoch loop both training stages share: poly learning rate, progress, tracking,
validation with best-checkpoint selection, and a resumable state written every epoch.

A run killed at any point and restarted with the same command resumes from the last complete
epoch with every random generator restored; each epoch's data order depends only on
(seed, epoch), so on CPU the result equals that of an uninterrupted run. The best epoch's weights
are kept in the state and ``best.pth`` is written with ``last.pth`` at the end, so a kill at any
point (and an orchestrator deleting the failed job's outputs) never loses the best model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hdmnet.config import Params
from hdmnet.errors import StageError
from hdmnet.jobs.distributed import DistInfo, EpochSampler, barrier
from hdmnet.jobs.provenance import checkpoint_hashes, provenance
from hdmnet.model import save_checkpoint
from hdmnet.model.optim import set_poly_lr
from hdmnet.progress import progress
from hdmnet.records import write_record
from hdmnet.tracking import Tracker
from hdmnet.train.state import (
    History,
    Position,
    Resumed,
    ResumeStateError,
    load_state,
    save_state,
    set_aside,
    unwrap,
)

log = logging.getLogger("hdmnet.train")

StepFn = Callable[[dict[str, Any]], tuple[float, dict[str, float]]]


@dataclass
class Loop:
    """Everything the epoch loop needs; ``step`` trains on one batch and returns its loss
    (and named parts), ``validate`` returns the validation mIoU (%). ``identity`` is what the
    resume state must match (the job identity and the job's coordinates)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loader: Iterable[dict[str, Any]]
    sampler: EpochSampler
    datasets: list[Any]
    epochs: int
    base_lr: float
    step: StepFn
    validate: Callable[[], float]
    state_path: Path
    identity: dict[str, Any]
    info: DistInfo
    desc: str
    val_every: int = 1
    unvalidated_epochs: int = 0  # leading epochs not validated (the last epoch always is)
    tracker: Tracker | None = None  # set when the job's MLflow run starts (setup.run)


def resume_or_start(loop: Loop) -> Resumed:
    """Continue from ``state_path`` if it belongs to this very job, else start afresh (an
    unusable state is moved aside, never trusted)."""
    if loop.state_path.exists():
        try:
            resumed = load_state(loop.state_path, loop.model, loop.optimizer, loop.identity)
        except ResumeStateError as error:
            if loop.info.is_main:
                aside = set_aside(loop.state_path)
                log.warning("%s; moved it to %s and starting afresh", error, aside)
        else:
            if resumed.position.epoch >= loop.epochs:
                log.info("%s: training already complete, writing its final files", loop.desc)
            else:
                log.info("resuming %s at epoch %d", loop.desc, resumed.position.epoch + 1)
            return resumed
    return Resumed(Position(), History(), None)


def fit(loop: Loop) -> tuple[History, dict[str, torch.Tensor]]:
    """Train the remaining epochs; returns the history and the best epoch's weights."""
    if loop.tracker is None:
        raise ValueError(f"{loop.desc}: the loop needs its tracker (train.setup.run sets it)")
    resumed = resume_or_start(loop)
    position, history, best = resumed.position, resumed.history, resumed.best_weights
    steps_per_epoch = len(loop.loader)  # type: ignore[arg-type]
    max_iter = loop.epochs * steps_per_epoch
    if steps_per_epoch == 0:
        raise StageError(f"{loop.desc}: no training batch (list smaller than the batch size?)")
    for epoch in range(position.epoch, loop.epochs):
        started = time.perf_counter()
        loop.sampler.set_epoch(epoch)
        for dataset in loop.datasets:
            dataset.set_epoch(epoch)
        loop.model.train()
        total, count, lr = 0.0, 0, loop.base_lr
        bar = progress(loop.loader, desc=f"{loop.desc} epoch {epoch + 1}/{loop.epochs}")
        for batch in bar:
            lr = set_poly_lr(loop.optimizer, loop.base_lr, position.iteration, max_iter)
            loss, parts = loop.step(batch)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"{loop.desc}: loss became {loss} at iteration {position.iteration}; "
                    "lower the learning rate"
                )
            position.iteration += 1
            total, count = total + loss, count + 1
            loop.tracker.log_metrics({"loss": loss, "lr": lr, **parts}, step=position.iteration)
            bar.set(loss=total / count)
        entry: dict[str, float] = {"epoch": epoch, "loss": total / max(1, count), "lr": lr}
        last = epoch + 1 == loop.epochs
        if last or (epoch >= loop.unvalidated_epochs and (epoch + 1) % loop.val_every == 0):
            metric = loop.validate()
            entry["val_miou"] = metric
            if metric > history.best_metric:
                history.best_metric, history.best_epoch = metric, epoch
                best = {k: v.detach().to("cpu", copy=True) for k, v in _weights(loop).items()}
        entry["seconds"] = time.perf_counter() - started
        history.epochs.append(entry)
        loop.tracker.log_metrics(
            {f"epoch_{k}": v for k, v in entry.items() if k != "epoch"}, step=epoch
        )
        log.info("%s epoch %d/%d: %s", loop.desc, epoch + 1, loop.epochs, _fmt(entry))
        position = Position(epoch + 1, 0, position.iteration)
        if loop.info.is_main:
            save_state(
                loop.state_path,
                loop.model,
                loop.optimizer,
                position,
                history,
                best,
                loop.identity,
            )
        barrier(loop.info)
    if best is None:
        raise StageError(
            f"{loop.desc}: no epoch reached a finite validation mIoU, so there is no best "
            f"checkpoint (see the epochs in the log; {loop.state_path} keeps the state)"
        )
    return history, best


def _weights(loop: Loop) -> dict[str, torch.Tensor]:
    return unwrap(loop.model).state_dict()


def conclude(
    loop: Loop,
    history: History,
    best: dict[str, torch.Tensor],
    checkpoint_meta: dict[str, Any],
    fields: dict[str, Any],
    params: Params,
    started: float,
) -> dict[str, Any]:
    """After ``fit``: write the last and the best checkpoint and the training record (rank 0),
    log them, drop the resume state. ``fields`` are the stage's own record entries.

    The model ends holding the best epoch's weights.
    """
    record: dict[str, Any] = {}
    if loop.info.is_main:
        out = loop.state_path.parent
        model = unwrap(loop.model)
        save_checkpoint(
            out / "last.pth", model, {**checkpoint_meta, "selection": "last"}, epoch=loop.epochs - 1
        )
        model.load_state_dict(best)
        best_meta = {**checkpoint_meta, "selection": "best_val", "val_miou": history.best_metric}
        save_checkpoint(out / "best.pth", model, best_meta, epoch=history.best_epoch)
        record = {
            **fields,
            "epochs": history.epochs,
            "best_epoch": history.best_epoch,
            "best_val_miou": history.best_metric,
            "world_size": loop.info.world_size,
            "checkpoints": checkpoint_hashes(out),
            "config_digest": loop.identity["identity"],
            "seconds": time.perf_counter() - started,
            "mlflow_run_id": loop.tracker.run_id,
            **provenance(params, loop.info.device),
        }
        write_record(out / "record.json", record)
        loop.tracker.log_metrics({"best_val_miou": history.best_metric})
        loop.tracker.log_artifact(out / "record.json")
        if params.tracking.upload_checkpoints:  # else the record holds their paths and hashes
            for name in ("best.pth", "last.pth"):
                loop.tracker.log_artifact(out / name, "checkpoints")
    finish(loop)
    return record


def finish(loop: Loop) -> None:
    """Training is complete and its checkpoints written: drop the resume state, so that a
    forced rerun (whose outputs the orchestrator deleted) trains afresh instead of resuming
    at the end."""
    if loop.info.is_main:
        loop.state_path.unlink(missing_ok=True)


def _fmt(entry: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in entry.items() if k != "epoch")
