"""What both training stages and the evaluator share: models from parameters, checkpoint
identities, data locations, devices and the provenance stamped on every record."""

from __future__ import annotations

import hashlib
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.data.folds import fold_classes
from hdmnet.errors import StageError
from hdmnet.layout import Run
from hdmnet.model import HDMNet, PSPNet, build_hdmnet, build_pspnet
from hdmnet.tracking import git_state

SCHEME_OF = {"pascal": "fwb"}  # PASCAL-5i has one split; the name only matters for COCO


def scheme(params: Params, dataset: str) -> str:
    return SCHEME_OF.get(dataset, params.data.coco_split)


def num_base_classes(params: Params, dataset: str, fold: int) -> int:
    return len(fold_classes(dataset, fold, scheme(params, dataset))[0])


def backbone_kwargs(params: Params, backbone: str) -> dict[str, Any]:
    """Constructor arguments that size the small CPU backbone (nothing for the real ones)."""
    if backbone != "small":
        return {}
    return {"blocks": tuple(params.model.small_blocks), "width": params.model.small_width}


def build_base_model(params: Params, dataset: str, backbone: str, fold: int) -> PSPNet:
    pretrained = params.model.pretrained.get(backbone)
    if pretrained is not None and not Path(pretrained).exists():
        raise StageError(
            f"model.pretrained.{backbone}: ImageNet weights {pretrained} not found "
            "(download them, or set the key to null to start from random weights)"
        )
    return build_pspnet(
        backbone,
        num_base_classes(params, dataset, fold) + 1,
        pretrained=pretrained,
        **backbone_kwargs(params, backbone),
    )


def build_meta_model(params: Params, run: Run) -> HDMNet:
    """HDMNet for ``run`` with ``params`` already resolved for the run's variant."""
    model_params = params.model
    model = build_hdmnet(
        run.backbone,
        num_base_classes(params, run.dataset, run.fold),
        run.shot,
        attention=model_params.attention,
        num_stages=model_params.stages,
        distill=model_params.distill,
        ensemble=model_params.ensemble,
        fix_quirks=model_params.fix_quirks,
        embed_dim=model_params.embed_dim,
        **backbone_kwargs(params, run.backbone),
    )
    model.distill_weight = params.meta.distill_weight
    model.base_weight = params.meta.base_weight
    return model


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


def dataset_root(params: Params, dataset: str) -> Path:
    root = layout.prepared_dir(params, dataset)
    if not (root / "prepared.json").exists():
        raise StageError(
            f"{root / 'prepared.json'} not found: prepare the data first "
            f"(hdmnet download --dataset {dataset} && hdmnet prepare {dataset})"
        )
    return root


def fold_folder(params: Params, dataset: str, fold: int) -> Path:
    folder = layout.fold_dir(params, dataset, fold)
    if not (folder / "summary.json").exists():
        raise StageError(f"fold lists {folder} not found: run hdmnet prepare {dataset}")
    return folder


def data_hash(fold_dir: Path) -> str:
    """Hash of a fold's lists: identifies the exact data a model saw."""
    digest = hashlib.sha256()
    for name in ("train.txt", "val.txt"):
        digest.update((fold_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    from hdmnet.fileio import file_digest

    return file_digest(path, "sha256")


def checkpoint_hashes(folder: Path) -> dict[str, dict[str, str]]:
    """Path and sha256 of the best and last checkpoints in ``folder``."""
    return {
        name: {"path": str(folder / f"{name}.pth"), "sha256": file_hash(folder / f"{name}.pth")}
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


def set_threads(params: Params) -> None:
    torch.set_num_threads(params.train.threads)
