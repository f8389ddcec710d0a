"""The provenance stamped on every record: commit, machine, threads, checkpoint hashes."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from hdmnet.config import Params
from hdmnet.fileio import file_digest
from hdmnet.tracking import git_state


def checkpoint_hashes(folder: Path) -> dict[str, dict[str, str]]:
    """Path and sha256 of the best and last checkpoints in ``folder``."""
    return {
        name: {"path": str(folder / f"{name}.pth"), "sha256": file_digest(folder / f"{name}.pth")}
        for name in ("best", "last")
    }


def provenance(params: Params, device: torch.device) -> dict[str, Any]:
    return {
        "git": git_state(),
        "hardware": {
            "hostname": platform.node(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
        },
        "preset": params.preset,
    }
