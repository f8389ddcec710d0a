"""Models from parameters: the PSPNet base learner and HDMNet of a job, sized by the preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hdmnet import layout
from hdmnet.config import Params
from hdmnet.data.folds import fold_classes
from hdmnet.errors import StageError
from hdmnet.layout import Run
from hdmnet.model import HDMNet, PSPNet, build_hdmnet, build_pspnet


def num_base_classes(params: Params, dataset: str, fold: int) -> int:
    return len(fold_classes(dataset, fold, layout.scheme(params, dataset))[0])


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
