"""Checks a job makes before its long work: the checkpoints it reads are the right ones (their
cell and their job identity), and its results folder can be written."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hdmnet.errors import StageError
from hdmnet.layout import Run


def base_cell(dataset: str, backbone: str, fold: int) -> dict[str, Any]:
    """What a base-learner checkpoint must say about itself to be used for this fold."""
    return {"kind": "pspnet", "dataset": dataset, "backbone": backbone, "fold": fold}


def meta_cell(run: Run) -> dict[str, Any]:
    """What a meta-learner checkpoint must say about itself to be tested as ``run``."""
    return {
        "kind": "hdmnet",
        "dataset": run.dataset,
        "backbone": run.backbone,
        "fold": run.fold,
        "shot": run.shot,
        "variant": run.variant,
    }


def require_identity(path: Path, meta: dict[str, Any], expected: str, remake: str) -> None:
    """Refuse a pipeline checkpoint that the current parameters did not produce.

    ``meta`` is the checkpoint's metadata, ``expected`` the job identity the current parameters
    give, ``remake`` the command that makes the right one.
    """
    found = meta.get("identity")
    if found != expected:
        made = f"identity {found}" if found else "no identity: not made by this pipeline"
        raise StageError(
            f"{path} was not made with the current parameters ({made}; they give {expected}): "
            f"make it again ({remake}); a base learner from elsewhere goes in with "
            "hdmnet import-base"
        )


def ensure_writable(folder: Path) -> Path:
    """Check that files can be written in ``folder`` (or where it will be created), before any
    long work; nothing is left behind."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a folder", str(existing))
        with tempfile.TemporaryFile(dir=existing, prefix=".write-check-"):
            pass
    except OSError as error:
        raise StageError(
            f"{folder}: cannot write results there ({error.strerror or error}); fix its "
            "permissions or point paths.results elsewhere"
        ) from None
    return folder
