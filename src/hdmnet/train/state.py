"""Resumable training state: model, optimiser, position (epoch, iteration), RNG states, history,
and the weights of the best epoch so far.

Written atomically (temp + rename) so a kill during the write leaves the previous state intact.
A resumed run restores every random generator and continues from the recorded position, so on
CPU it ends with the same weights and metrics as a run that was never interrupted.

The best epoch's weights live here, not only in ``best.pth``: an orchestrator deletes a failed
job's declared outputs (Snakemake does), and a resumed run whose later epochs do not beat the best
one must still be able to write it. A state whose training is complete lets a rerun that lost
only its final files finish in seconds.

States are read with ``weights_only=True``: a file in ``results/`` can hold tensors and plain data
only, never code (RNG states are kept as plain lists). A file that is unreadable, not a state, or
a state of another job raises :class:`ResumeStateError`, which the loop answers by setting the
file aside and starting afresh.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hdmnet.errors import StageError
from hdmnet.fileio import atomic_path

FORMAT = "hdmnet-train-state"
VERSION = 2


class ResumeStateError(StageError):
    """A resume state cannot be used for this job (unreadable, not a state, another job)."""


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


@dataclass
class Resumed:
    position: Position
    history: History
    best_weights: dict[str, torch.Tensor] | None


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain lists (loadable weights-only)."""
    version, internal, gauss = random.getstate()
    numpy = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "key": numpy["state"]["key"].tolist(),
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy = state["numpy"]
    key = np.asarray(numpy["key"], dtype=np.uint32)
    np.random.set_state(("MT19937", key, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
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
    best_weights: dict[str, torch.Tensor] | None,
    meta: dict[str, Any],
) -> None:
    """Write the whole training state atomically."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": vars(position),
        "history": vars(history),
        "best_weights": best_weights,
        "rng": rng_state(),
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, expected: dict[str, Any]
) -> Resumed:
    """Restore a state written by :func:`save_state` into ``model`` and ``optimizer``.

    ``expected`` holds the identity of this job (stage, dataset, fold, job identity...); a state
    from another job, or a file that is not a state, raises :class:`ResumeStateError` before
    anything is restored.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refusals, zip and EOF errors come in many types
        raise ResumeStateError(
            f"{path}: not a readable resume state ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no details'})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ResumeStateError(f"{path}: not a resume state of this version of hdmnet")
    meta = payload.get("meta", {})
    differing = {k: (meta.get(k), v) for k, v in expected.items() if meta.get(k) != v}
    if differing:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differing.items())
        raise ResumeStateError(f"{path}: resume state of another job ({details})")
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"])
    return Resumed(
        Position(**payload["position"]), History(**payload["history"]), payload["best_weights"]
    )


def set_aside(path: Path) -> Path:
    """Move an unusable state out of the way (kept for inspection, never read again)."""
    target = path.with_name(path.name + ".rejected")
    path.replace(target)
    return target


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model
