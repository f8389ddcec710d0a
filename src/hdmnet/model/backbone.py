"""Backbones of the PSPNet base learner: deep-stem dilated ResNet, VGG-16-BN, and a small variant.

Every backbone exposes ``layer0`` .. ``layer4`` as attributes so that the models that own them
(PSPNet, HDMNet) can re-expose the very same modules under the official key names. The small
variant is the same :class:`ResNet` class with fewer blocks and narrower widths, so CPU demos and
tests run through exactly the code used at full size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

# The backbone names are the parameter schema's (hdmnet.config); build_backbone builds each.
from hdmnet.config import BACKBONES
from hdmnet.model.weights import load_state_into, read_torch_file, strip_prefix

if TYPE_CHECKING:
    from hdmnet.config import Model

# Per-backbone block counts of layer1..layer4 (ResNet) -- MODEL.md section 1.
RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
# Defaults of the small CPU variant: one block per stage, a quarter of the width.
SMALL_DEFAULTS = {"blocks": (1, 1, 1, 1), "width": 0.25}

# torchvision VGG-16-BN ``features`` indices of layer0..layer4 (MODEL.md section 1).
VGG_SLICES = ((0, 7), (7, 14), (14, 24), (24, 34), (34, 43))
# VGG-16 configuration: output channels of the 3x3 convs, "M" for a 2x2 max pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1) with the stride and dilation on the 3x3 conv."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Deep-stem ResNet dilated to output stride 8 (PSPNet / semseg variant).

    ``blocks`` gives the bottleneck count of layer1..layer4 and ``width`` scales every channel
    count (stem 64/64/128, planes 64/128/256/512), so ``ResNet((1, 1, 1, 1), width=0.25)`` is the
    small CPU variant and ``ResNet((3, 4, 6, 3))`` is ResNet-50 with the official channel counts.
    """

    def __init__(self, blocks: Sequence[int] = (3, 4, 6, 3), width: float = 1.0) -> None:
        super().__init__()
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"ResNet needs four positive block counts, got blocks={blocks!r}")
        if width <= 0:
            raise ValueError(f"ResNet width multiplier must be positive, got width={width!r}")

        def ch(c: int) -> int:
            return max(1, round(c * width))

        stem = (ch(64), ch(64), ch(128))
        self.layer0 = nn.Sequential(
            nn.Conv2d(3, stem[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem[0]),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem[0], stem[1], 3, padding=1, bias=False),
            nn.BatchNorm2d(stem[1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem[1], stem[2], 3, padding=1, bias=False),
            nn.BatchNorm2d(stem[2]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self._inplanes = stem[2]
        # (planes, stride, dilation): layer3/layer4 trade their stride for dilation 2/4 (OS 8).
        plan = ((ch(64), 1, 1), (ch(128), 2, 1), (ch(256), 1, 2), (ch(512), 1, 4))
        self.layer1 = self._make_layer(plan[0], int(blocks[0]))
        self.layer2 = self._make_layer(plan[1], int(blocks[1]))
        self.layer3 = self._make_layer(plan[2], int(blocks[2]))
        self.layer4 = self._make_layer(plan[3], int(blocks[3]))
        self.channels = tuple(p * Bottleneck.expansion for p, _, _ in plan)
        self.width = float(width)
        self.is_vgg = False
        _init_conv_bn(self)

    def _make_layer(self, spec: tuple[int, int, int], count: int) -> nn.Sequential:
        planes, stride, dilation = spec
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        layers = [Bottleneck(self._inplanes, planes, stride, dilation, downsample)]
        self._inplanes = out
        layers += [Bottleneck(out, planes, 1, dilation) for _ in range(count - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return the outputs of layer0..layer4."""
        return run_layers(self, x)


class VGG16BN(nn.Module):
    """VGG-16-BN ``features`` cut into layer0..layer4 at the official indices.

    Each layer is an ``nn.Sequential`` whose indices restart at 0, which is how the official
    checkpoints name them (``layer1.0`` is torchvision's ``features.7``).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        features: list[nn.Module] = []
        in_ch = 3
        for item in VGG16_CFG:
            if item == "M":
                features.append(nn.MaxPool2d(2, stride=2))
            else:
                out = max(1, round(int(item) * width))
                features += [nn.Conv2d(in_ch, out, 3, padding=1), nn.BatchNorm2d(out)]
                features.append(nn.ReLU(inplace=True))
                in_ch = out
        for i, (start, stop) in enumerate(VGG_SLICES):
            setattr(self, f"layer{i}", nn.Sequential(*features[start:stop]))
        c = [max(1, round(v * width)) for v in (128, 256, 512, 512)]
        self.channels = (c[0], c[1], c[2], c[3])
        self.width = float(width)
        self.is_vgg = True
        _init_conv_bn(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return the outputs of layer0..layer4."""
        return run_layers(self, x)


def _init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs and unit BatchNorm, as the semseg ResNet does."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def run_layers(owner: nn.Module, x: Tensor) -> list[Tensor]:
    """Run ``owner.layer0`` .. ``owner.layer4`` in sequence and return the five outputs."""
    outs = []
    for i in range(5):
        x = getattr(owner, f"layer{i}")(x)
        outs.append(x)
    return outs


def build_backbone(
    name: str, blocks: Sequence[int] | None = None, width: float | None = None
) -> ResNet | VGG16BN:
    """Build a backbone by name, one of :data:`hdmnet.config.BACKBONES`: ``resnet50``,
    ``resnet101``, ``vgg16`` or ``small``.

    ``blocks`` / ``width`` customise the small variant (defaults ``(1, 1, 1, 1)`` and 0.25); they
    are refused for the full-size backbones, whose shapes are fixed by the official release.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if name == "small":
        return ResNet(
            SMALL_DEFAULTS["blocks"] if blocks is None else blocks,
            SMALL_DEFAULTS["width"] if width is None else width,
        )
    _refuse_small_kwargs(name, blocks, width)
    return VGG16BN() if name == "vgg16" else ResNet(RESNET_BLOCKS[name])


def backbone_options(model: Model, name: str) -> dict[str, Any]:
    """:func:`build_backbone`'s sizing arguments from ``params.model``: ``model.small_blocks``
    and ``model.small_width`` for the small backbone, nothing for the full-size ones."""
    if name != "small":
        return {}
    return {"blocks": tuple(model.small_blocks), "width": model.small_width}


def _refuse_small_kwargs(name: str, blocks: object, width: object) -> None:
    if blocks is not None or width is not None:
        raise ValueError(
            f"backbone {name!r} has fixed shapes; blocks={blocks!r} / width={width!r} "
            "are only accepted for backbone 'small'"
        )


# ---------------------------------------------------------------------------------------------
# ImageNet weights
# ---------------------------------------------------------------------------------------------

# PSPNet "resnet50_v2" stem names -> index inside our layer0.
_RESNET_STEM = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4, "conv3": 6, "bn3": 7}


def imagenet_to_backbone_keys(state: Mapping[str, Tensor], is_vgg: bool) -> dict[str, Tensor]:
    """Rename an ImageNet state dict to our ``layer0..layer4`` keys (classifier dropped).

    ResNet: PSPNet's "resnet50_v2" format (``conv1``/``bn1``/``conv2``/``bn2``/``conv3``/``bn3``
    deep stem, ``layer1..4``, ``fc``). VGG: torchvision's ``features.N`` / ``classifier.N``.
    A ``module.`` prefix is stripped.
    """
    state = strip_prefix(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if is_vgg:
            if head == "classifier":
                continue
            if head != "features":
                raise KeyError(f"unexpected key {key!r} in a torchvision VGG-16-BN state dict")
            index_str, _, param = rest.partition(".")
            index = int(index_str)
            for layer, (start, stop) in enumerate(VGG_SLICES):
                if start <= index < stop:
                    out[f"layer{layer}.{index - start}.{param}"] = value
                    break
            # index 43 (the last max pool) has no parameters, so nothing is dropped here.
        else:
            if head == "fc":
                continue
            if head in _RESNET_STEM:
                out[f"layer0.{_RESNET_STEM[head]}.{rest}"] = value
            elif head in ("layer1", "layer2", "layer3", "layer4"):
                out[key] = value
            else:
                raise KeyError(f"unexpected key {key!r} in a resnet50_v2 / resnet101_v2 state dict")
    return out


def load_imagenet_weights(backbone: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load ImageNet weights from a local file into ``backbone`` (layer0..layer4, strict).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` listing missing, unexpected
    and mis-shaped keys otherwise.
    """
    path = Path(path)
    state = read_torch_file(path)
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    mapped = imagenet_to_backbone_keys(state, bool(getattr(backbone, "is_vgg", False)))
    load_state_into(backbone, mapped, source=str(path))


def backbone_out_channels(backbone: nn.Module) -> dict[str, int]:
    """Channel counts of layer1..layer4 of a built backbone."""
    c = backbone.channels
    return {"layer1": c[0], "layer2": c[1], "layer3": c[2], "layer4": c[3]}


__all__ = [
    "BACKBONES",
    "VGG16BN",
    "Bottleneck",
    "ResNet",
    "backbone_options",
    "backbone_out_channels",
    "build_backbone",
    "imagenet_to_backbone_keys",
    "load_imagenet_weights",
    "run_layers",
]
