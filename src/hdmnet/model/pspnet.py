"""PSPNet base learner (BAM protocol): backbone, pyramid pooling module and classifier.

Attribute names follow BAM's PSPNet (``layer0..layer4``, ``ppm.features.N.M``, ``cls.N``) so its
checkpoints load without renaming; HDMNet copies these modules (``HDMNet.load_base_learner``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdmnet import layout
from hdmnet.data.folds import fold_classes
from hdmnet.errors import StageError
from hdmnet.model.backbone import (
    backbone_options,
    build_backbone,
    load_imagenet_weights,
    run_layers,
)

if TYPE_CHECKING:
    from hdmnet.config import Params
    from hdmnet.layout import BaseRun

IGNORE_INDEX = 255
PPM_BINS = (1, 2, 3, 6)


class PPM(nn.Module):
    """Pyramid pooling: ``[x, up(b1), up(b2), up(b3), up(b6)]`` concatenated on channels."""

    def __init__(self, in_dim: int, reduction_dim: int, bins: Sequence[int] = PPM_BINS) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_dim, reduction_dim, 1, bias=False),
                nn.BatchNorm2d(reduction_dim),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_dim = in_dim + reduction_dim * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [x]
        outs += [
            F.interpolate(f(x), size=size, mode="bilinear", align_corners=True)
            for f in self.features
        ]
        return torch.cat(outs, 1)


def make_classifier(
    in_dim: int, mid_dim: int, num_classes: int, dropout: float = 0.1
) -> nn.Sequential:
    """PSPNet ``cls``: conv3x3 (no bias), BN, ReLU, Dropout2d, conv1x1 -> class logits."""
    return nn.Sequential(
        nn.Conv2d(in_dim, mid_dim, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid_dim),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=dropout),
        nn.Conv2d(mid_dim, num_classes, 1),
    )


def head_dims(backbone: nn.Module, cls_dim: int | None = None) -> tuple[int, int, int]:
    """(fea_dim, ppm reduction dim, classifier width) derived from the backbone's channels.

    ResNet: 2048, 512, 512; VGG: 512, 128, 512. The classifier width is 512 scaled by the
    backbone's width multiplier (so 128 for the default small variant) unless given.
    """
    fea_dim = backbone.channels[3]
    if cls_dim is None:
        cls_dim = max(1, round(512 * backbone.width))
    return fea_dim, fea_dim // len(PPM_BINS), cls_dim


class PSPNet(nn.Module):
    """PSPNet base learner; ``forward`` returns logits upsampled to the input size."""

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        cls_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(
                f"PSPNet needs num_classes >= 2 (background + classes), got {num_classes}"
            )
        for i in range(5):
            setattr(self, f"layer{i}", getattr(backbone, f"layer{i}"))
        self.is_vgg = bool(backbone.is_vgg)
        self.channels = tuple(backbone.channels)
        fea_dim, red_dim, mid_dim = head_dims(backbone, cls_dim)
        self.ppm = PPM(fea_dim, red_dim)
        self.cls = make_classifier(self.ppm.out_dim, mid_dim, num_classes, dropout)
        self.num_classes = num_classes
        self.channels_last = False
        self.autocast_dtype: torch.dtype | None = None

    @classmethod
    def from_config(cls, params: Params, base: BaseRun) -> PSPNet:
        """The base learner of ``base`` as ``params`` describe it: the one place that says which
        parameter fills which argument of :func:`build_pspnet` (``model.pretrained``, the small
        backbone's size, ``model.channels_last``, ``model.bf16``)."""
        pretrained = params.model.pretrained.get(base.backbone)
        if pretrained is not None and not Path(pretrained).exists():
            raise StageError(
                f"model.pretrained.{base.backbone}: ImageNet weights {pretrained} not found "
                "(download them, or set the key to null to start from random weights)"
            )
        return build_pspnet(
            base.backbone,
            num_base_classes(params, base.dataset, base.fold) + 1,
            pretrained=pretrained,
            channels_last=params.model.channels_last,
            bf16=params.model.bf16,
            **backbone_options(params.model, base.backbone),
        )

    def configure_inference(self, channels_last: bool = False, bf16: bool = False) -> PSPNet:
        """``model.channels_last``: channels-last weights and inputs. ``model.bf16``: bfloat16
        autocast of the forward on CUDA (the base learner trains its backbone, so on CPU it
        stays float32); logits are returned in float32."""
        self.channels_last = channels_last
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return self

    def backbone_layers(self) -> list[nn.Module]:
        """The five backbone stages (trained at the base learning rate)."""
        return [getattr(self, f"layer{i}") for i in range(5)]

    def head_layers(self) -> list[nn.Module]:
        """PPM and classifier (trained at 10x the base learning rate in BAM's PASCAL schedule)."""
        return [self.ppm, self.cls]

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, C, H, W]`` for images ``[B, 3, H, W]``."""
        size = x.shape[-2:]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.autocast_dtype is not None and x.device.type == "cuda":
            autocast = torch.autocast(device_type="cuda", dtype=self.autocast_dtype)
        with autocast:
            feat = run_layers(self, x)[4]
            logits = self.cls(self.ppm(feat))
        return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True)

    @staticmethod
    def loss(logits: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy with 255 ignored (BAM's base-learner loss)."""
        return F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX)


def num_base_classes(params: Params, dataset: str, fold: int) -> int:
    """Base classes of ``fold`` (background not counted) under the split scheme that ``params``
    choose for ``dataset``."""
    return len(fold_classes(dataset, fold, layout.scheme(params, dataset))[0])


def build_pspnet(
    backbone: str,
    num_classes: int,
    pretrained: str | os.PathLike[str] | None = None,
    cls_dim: int | None = None,
    blocks: Sequence[int] | None = None,
    width: float | None = None,
    channels_last: bool = False,
    bf16: bool = False,
) -> PSPNet:
    """Build a PSPNet; ``num_classes`` counts background (16 for PASCAL-5i, 61 for COCO-20i).

    ``pretrained`` is a local ImageNet weight file for the backbone (PSPNet "resnet50_v2" /
    torchvision VGG-16-BN format). ``blocks``/``width``/``cls_dim`` size the ``small`` variant.
    ``channels_last`` / ``bf16``: :meth:`PSPNet.configure_inference`.
    """
    net = build_backbone(backbone, blocks=blocks, width=width)
    if pretrained is not None:
        load_imagenet_weights(net, pretrained)
    model = PSPNet(net, num_classes, cls_dim=cls_dim)
    return model.configure_inference(channels_last=channels_last, bf16=bf16)


__all__ = [
    "IGNORE_INDEX",
    "PPM",
    "PPM_BINS",
    "PSPNet",
    "build_pspnet",
    "head_dims",
    "make_classifier",
    "num_base_classes",
]
