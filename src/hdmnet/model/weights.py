"""Weight files: reading them safely and fitting their state dicts to a module.

The leaf of the model package (it imports no model module): the backbones, HDMNet and the
checkpoint format all read weight files through it. Files are read weights-only, so a file can
hold tensors and plain data but never code.
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


def strip_prefix(state: Mapping[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop a DataParallel/DDP ``module.`` prefix from every key that has it."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


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


def load_base_learner_into(
    model: nn.Module, state: Mapping[str, Any], frozen_modules: tuple[str, ...]
) -> None:
    """Copy backbone, PPM, cls and base learner weights of a PSPNet into the ``frozen_modules``
    of an HDMNet (strict)."""
    mapped = pspnet_to_hdmnet_keys(state_dict_of(state))
    target = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in frozen_modules}
    problems = describe_mismatch(target, mapped)
    if problems:
        raise CheckpointError(f"PSPNet base learner does not fit this HDMNet: {problems}")
    result = model.load_state_dict(_with_bn_counters(target, mapped), strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
