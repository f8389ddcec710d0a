"""Checkpoints: official HDMNet, BAM PSPNet base learners, and our own (with metadata).

Official files are ``{'epoch', 'state_dict', 'optimizer'}`` with our key names, possibly
prefixed by ``module.``; BAM PSPNet files name the classifier ``cls.0/1/4``. Ours add
``format``, ``version`` and ``meta`` (dataset, fold, shot, backbone, config) so that a checkpoint
of the wrong dataset / shot / backbone is refused with a clear message.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hdmnet.errors import HdmnetError, MissingFileError
from hdmnet.fileio import atomic_path
from hdmnet.model.backbone import strip_prefix

FORMAT = "hdmnet-checkpoint"
VERSION = 1
# Fields compared by check_compatible, in the order they are reported.
META_FIELDS = ("kind", "dataset", "fold", "shot", "backbone")
NUM_CLASSES_TO_DATASET = {16: "pascal", 61: "coco"}
BN_COUNTER = "num_batches_tracked"


class CheckpointError(HdmnetError, ValueError):
    """A checkpoint file cannot be used for the requested model."""


def read_torch_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``torch.load`` (weights only, on CPU) with clear errors for a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"cannot read checkpoint {path}: it holds objects other than tensors and plain data, "
            "so it was refused unread (files are loaded weights-only: they cannot run code)"
        ) from None
    except Exception as exc:  # zip and EOF errors come in many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return dict(obj)


def state_dict_of(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict inside a checkpoint dict (or the dict itself), ``module.`` stripped."""
    inner = obj.get("state_dict")
    state = inner if isinstance(inner, Mapping) else obj
    if not all(isinstance(v, Tensor) for v in state.values()):
        bad = [k for k, v in state.items() if not isinstance(v, Tensor)][:5]
        raise CheckpointError(f"not a state dict: non-tensor entries {bad}")
    return strip_prefix(state)


def describe_mismatch(
    model_state: Mapping[str, Tensor], state: Mapping[str, Tensor], limit: int = 20
) -> str:
    """Human-readable list of missing / unexpected keys and shape mismatches ('' if none).

    A missing BatchNorm ``num_batches_tracked`` is tolerated: files saved by old PyTorch
    versions (torchvision's VGG-16-BN, PSPNet's resnet50_v2) do not have it.
    """
    missing = [k for k in model_state if k not in state and not k.endswith(BN_COUNTER)]
    unexpected = [k for k in state if k not in model_state]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(model_state[k].shape)}"
        for k in model_state
        if k in state and tuple(state[k].shape) != tuple(model_state[k].shape)
    ]
    parts = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            shown = ", ".join(items[:limit]) + (
                f", ... ({len(items)} in all)" if len(items) > limit else ""
            )
            parts.append(f"{title}: {shown}")
    return "; ".join(parts)


def load_state_into(
    module: nn.Module, state: Mapping[str, Tensor], source: str = "state dict"
) -> None:
    """Strict ``load_state_dict`` that names every missing/unexpected key and shape mismatch."""
    own = module.state_dict()
    problems = describe_mismatch(own, state)
    if problems:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: {problems}")
    module.load_state_dict(_with_bn_counters(own, state), strict=True)


def _with_bn_counters(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fill absent ``num_batches_tracked`` entries with the model's own values."""
    filled = dict(state)
    for key, value in own.items():
        if key.endswith(BN_COUNTER) and key not in filled:
            filled[key] = value
    return filled


def pspnet_to_hdmnet_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a PSPNet state dict (BAM / ours) to HDMNet's frozen-module keys.

    ``cls.0``/``cls.1`` stay (conv + BN = feature 5); ``cls.4`` becomes ``base_learnear.2``.
    """
    out = {}
    for key, value in strip_prefix(state).items():
        if key.startswith("cls.4."):
            out["base_learnear.2." + key[len("cls.4.") :]] = value
        else:
            out[key] = value
    return out


def load_base_learner_into(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Copy backbone, PPM, cls and base learner weights of a PSPNet into an HDMNet (strict)."""
    from hdmnet.model.hdmnet import FROZEN_MODULES

    mapped = pspnet_to_hdmnet_keys(state_dict_of(state))
    target = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in FROZEN_MODULES}
    problems = describe_mismatch(target, mapped)
    if problems:
        raise CheckpointError(f"PSPNet base learner does not fit this HDMNet: {problems}")
    result = model.load_state_dict(_with_bn_counters(target, mapped), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


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
        from hdmnet.model.hdmnet import HDMNet

        if isinstance(model, HDMNet) and meta.get("kind") == "pspnet":
            try:
                load_base_learner_into(model, state)
            except CheckpointError as exc:
                raise CheckpointError(f"{path}: {exc}") from None
        else:
            load_state_into(model, state, source=str(path))
    obj["state_dict"] = state
    obj["meta"] = meta
    return obj


__all__ = [
    "FORMAT",
    "CheckpointError",
    "check_compatible",
    "describe_mismatch",
    "infer_meta",
    "load_base_learner_into",
    "load_checkpoint",
    "load_state_into",
    "pspnet_to_hdmnet_keys",
    "read_torch_file",
    "save_checkpoint",
    "state_dict_of",
]
