"""Resumable training state: model, optimiser, position (epoch, iteration), RNG states, history.

Written atomically (temp + rename) so a kill during the write leaves the previous state intact.
A resumed run restores every random generator and continues from the recorded position, so on
CPU it ends with the same weights and metrics as a run that was never interrupted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hdmnet.fileio import atomic_path


@dataclass
class Position:
    """Where training stands: ``batch`` batches of ``epoch`` are done (0 at an epoch start)."""

    epoch: int = 0
    batch: int = 0
    iteration: int = 0


@dataclass
class History:
    """What the run has measured so far (kept in the state so a resume keeps the curves)."""

    best_metric: float = float("-inf")
    best_epoch: int = -1
    epochs: list[dict[str, float]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    position: Position,
    history: History,
    meta: dict[str, Any],
) -> None:
    """Write the whole training state atomically."""
    payload = {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": vars(position),
        "history": vars(history),
        "rng": rng_state(),
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, expected: dict[str, Any]
) -> tuple[Position, History]:
    """Restore a state written by :func:`save_state` into ``model`` and ``optimizer``.

    ``expected`` holds the identity of this run (stage, dataset, fold, config digest...); a state
    from another run is refused rather than silently continued.
    """
    payload = torch.load(path, map_location="cpu", weights_only=False)
    meta = payload.get("meta", {})
    differing = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if differing:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differing.items())
        raise ValueError(
            f"{path}: resume state belongs to another configuration ({details}); "
            "delete it to start afresh"
        )
    _unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"])
    return Position(**payload["position"]), History(**payload["history"])


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
