"""Checkpoints: official HDMNet, BAM PSPNet base learners, and our own (with metadata).

Official files are ``{'epoch', 'state_dict', 'optimizer'}`` with our key names, possibly
prefixed by ``module.``; BAM PSPNet files name the classifier ``cls.0/1/4``. Ours add
``format``, ``version`` and ``meta`` (dataset, fold, shot, backbone, config) so that a checkpoint
of the wrong dataset / shot / backbone is refused with a clear message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hdmnet.fileio import atomic_path
from hdmnet.model.hdmnet import HDMNet
from hdmnet.model.weights import (
    CheckpointError,
    load_state_into,
    read_torch_file,
    state_dict_of,
    strip_prefix,
)

FORMAT = "hdmnet-checkpoint"
VERSION = 1
# Fields compared by check_compatible, in the order they are reported.
META_FIELDS = ("kind", "dataset", "fold", "shot", "backbone")
NUM_CLASSES_TO_DATASET = {16: "pascal", 61: "coco"}


def infer_meta(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """What a state dict without metadata reveals: kind, dataset, shot, backbone."""
    state = strip_prefix(state)
    meta: dict[str, Any] = {}
    if any(k.startswith("transformer.") for k in state):
        meta["kind"] = "hdmnet"
        head = state.get("base_learnear.2.weight")
        rw = state.get("kshot_rw.0.weight")
        meta["shot"] = int(rw.shape[1]) if rw is not None else 1
    else:
        meta["kind"] = "pspnet"
        head = state.get("cls.4.weight")
    if head is not None and int(head.shape[0]) in NUM_CLASSES_TO_DATASET:
        meta["dataset"] = NUM_CLASSES_TO_DATASET[int(head.shape[0])]
    meta_backbone = _infer_backbone(state)
    if meta_backbone is not None:
        meta["backbone"] = meta_backbone
    return meta


def _infer_backbone(state: Mapping[str, Tensor]) -> str | None:
    if "layer1.0.conv1.weight" in state:
        blocks = len({k.split(".")[1] for k in state if k.startswith("layer3.")})
        stem = state.get("layer0.0.weight")
        if stem is not None and int(stem.shape[0]) == 64:
            return {6: "resnet50", 23: "resnet101"}.get(blocks, "small")
        return "small"
    if "layer1.0.weight" in state:
        return "vgg16"
    return None


def check_compatible(
    meta: Mapping[str, Any], expected: Mapping[str, Any], source: str = "checkpoint"
) -> None:
    """Raise :class:`CheckpointError` if ``meta`` contradicts ``expected`` on any shared field.

    Only fields present in both are compared (an official checkpoint has no fold, for
    example); every conflict is listed in the message.
    """
    conflicts = [
        f"{key}: {source} has {meta[key]!r}, expected {expected[key]!r}"
        for key in (*META_FIELDS, *sorted(set(expected) - set(META_FIELDS)))
        if key in expected and key in meta and meta[key] != expected[key]
    ]
    if conflicts:
        raise CheckpointError(f"{source} is for another setting: " + "; ".join(conflicts))


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    meta: Mapping[str, Any],
    *,
    epoch: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``{'format', 'version', 'meta', 'epoch', 'state_dict', 'optimizer', ...}`` atomically.

    ``meta`` should hold kind, dataset, fold, shot, backbone and config (model kwargs); it
    must be plain data (str/int/float/bool/None, lists, dicts) so files load weights-only.
    """
    missing = [k for k in ("kind", "dataset", "backbone") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta for {path} lacks {missing}")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "meta": dict(meta),
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    if extra:
        payload.update(extra)
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    expected: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read a checkpoint (ours, official HDMNet, BAM PSPNet) and optionally load it.

    The metadata (ours, or inferred from the shapes for official files) is checked against
    ``expected``; the state dict is loaded strictly into ``model``. A PSPNet checkpoint given
    with an HDMNet model fills its base learner (backbone, PPM, cls) only. Returns the full
    checkpoint dict with ``meta`` and a ``module.``-free ``state_dict``.
    """
    path = Path(path)
    obj = read_torch_file(path)
    state = state_dict_of(obj)
    meta = dict(infer_meta(state))
    if obj.get("format") == FORMAT:
        meta.update(obj.get("meta") or {})
    if expected:
        check_compatible(meta, expected, source=str(path))
    if model is not None:
        if isinstance(model, HDMNet) and meta.get("kind") == "pspnet":
            try:
                model.load_base_learner(state)
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
        else:
            load_state_into(model, state, source=str(path))
    obj["state_dict"] = state
    obj["meta"] = meta
    return obj


__all__ = ["FORMAT", "check_compatible", "infer_meta", "load_checkpoint", "save_checkpoint"]
