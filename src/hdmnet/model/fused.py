"""The frozen encoder (backbone, PPM, feature 5) with BatchNorm folded into its convolutions.

HDMNet never trains its backbone, PPM or ``cls``, and keeps their BatchNorm layers in eval mode,
so each conv + BN (+ ReLU, + the residual sum of a bottleneck) is one affine map followed by a
pointwise function. :class:`FrozenEncoder` computes exactly those maps with the BN folded into
the convolution (``w * g / sqrt(v + eps)``, ``b + (beta - mean * g / sqrt(v + eps))``):

- on CPU with oneDNN, through ``torch.ops.mkldnn._convolution_pointwise`` on channels-last
  activations, with the weights reordered once into oneDNN's blocked layout and the ReLU and the
  residual sum fused into the convolution (no separate pass over the activations);
- elsewhere (CUDA, builds without oneDNN), through ``F.conv2d`` with the folded weights.

Only the rounding differs from the module path: folding rounds each weight once more, which
moves the features by about 2e-6 (relative), twice what running on 1 instead of 2 threads moves
them; the HDMNet outputs stay within 1e-4 with the same argmax
(``tests/model/test_fused_and_codes.py``). What it saves is the module path's separate
BatchNorm, ReLU and residual-sum passes over the activations: ``benchmarks/forward.py --parts``
(ResNet-50, 473 px, 2 threads, side by side with the official-style backbone) measured x1.55
for the 2 images of a 1-shot episode and x1.26 for the 6 of a 5-shot one, on the shared 2-core
machine with other jobs running (load average 5-13; README, "Tests and benchmarks"). The
model's parameters are not touched: the encoder holds derived copies (the model's state-dict keys
stay the official ones), and :meth:`FrozenEncoder.matches` tells the owner when the source tensors
changed (a checkpoint was loaded, the model moved to another device) so that it rebuilds the
copies.

``dtype=torch.bfloat16`` gives the bf16 variant: weights and activations in bfloat16 through
oneDNN (AMX / AVX-512-BF16 where the CPU has them), features returned in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdmnet.model.backbone import Bottleneck

log = logging.getLogger("hdmnet.model")


def onednn_available(device: torch.device) -> bool:
    """True where the fused oneDNN convolutions run (CPU builds with mkldnn)."""
    return device.type == "cpu" and bool(torch.backends.mkldnn.is_available())


def cpu_bf16_supported() -> bool:
    """True if oneDNN runs bfloat16 natively on this CPU (AVX-512-BF16 / AMX; lscpu lists
    ``avx512_bf16`` / ``amx_bf16``); elsewhere bf16 convolutions are emulated, and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``bn(conv(x))`` as one convolution (eval-mode BatchNorm).

    Folded in float64 and rounded once to float32.
    """
    weight = conv.weight.detach().double()
    bias = (
        conv.bias.detach().double()
        if conv.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    )
    if bn is not None:
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = (bias - bn.running_mean.detach().double()) * scale + bn.bias.detach().double()
    return weight.float(), bias.float()


class FoldedConv:
    """``relu?(conv(x) * bn + add?)`` with the BatchNorm folded in (see the module docstring)."""

    def __init__(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, dtype: torch.dtype, onednn: bool
    ) -> None:
        weight, bias = fold_bn(conv, bn)
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.onednn = onednn
        self.bias = bias.to(dtype)
        if onednn:
            self.weight = torch.ops.mkldnn._reorder_convolution_weight(
                weight.to(dtype), self.padding, self.stride, self.dilation, self.groups, None
            )
        else:
            self.weight = weight.to(dtype).contiguous()

    def __call__(self, x: Tensor, relu: bool = True, add: Tensor | None = None) -> Tensor:
        if self.onednn:
            args = (self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups)
            if add is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, *args, "relu" if relu else "none", [], ""
                )
            return torch.ops.mkldnn._convolution_pointwise(
                x, add, *args, "add", None, "relu" if relu else None, [], ""
            )
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)
        if add is not None:
            y = y + add
        return torch.relu_(y) if relu else y


Step = Callable[[Tensor], Tensor]


class FrozenEncoder:
    """layer0..layer4, PPM and ``cls[0:2]`` of an HDMNet (or PSPNet) as folded convolutions.

    ``encoder(x)`` returns ``[layer2, layer3, layer4, feature 5]`` in float32 (NCHW-contiguous
    unless ``channels_last``); the images must already be masked and normalised.
    """

    def __init__(
        self,
        owner: nn.Module,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.onednn = onednn_available(device)
        if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_bf16_supported():
            log.warning(
                "model.bf16: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16); the "
                "frozen encoder runs emulated bf16, slower than float32"
            )
        self.sources = tuple(frozen_tensors(owner))
        self.key = tensor_key(self.sources)
        with torch.inference_mode(False), torch.no_grad():
            self.layers = [self._layer(getattr(owner, f"layer{i}")) for i in range(5)]
            ppm = owner.ppm
            self.ppm = [
                (stage[0], FoldedConv(stage[1], stage[2], dtype, self.onednn))
                for stage in ppm.features
            ]
            self.cls = FoldedConv(owner.cls[0], owner.cls[1], dtype, self.onednn)

    def matches(self, owner: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
        """True while the owner's frozen tensors, device and dtype are those it was built from."""
        return (
            device == self.device
            and dtype == self.dtype
            and tensor_key(frozen_tensors(owner)) == self.key
        )

    def _layer(self, layer: nn.Module) -> list[Step]:
        steps: list[Step] = []
        modules = list(layer.children()) if isinstance(layer, nn.Sequential) else [layer]
        i = 0
        while i < len(modules):
            m = modules[i]
            if isinstance(m, Bottleneck):
                steps.append(self._bottleneck(m))
                i += 1
            elif isinstance(m, nn.Conv2d):
                bn = modules[i + 1] if i + 1 < len(modules) else None
                bn = bn if isinstance(bn, nn.BatchNorm2d) else None
                after = i + 1 + (bn is not None)
                relu = after < len(modules) and isinstance(modules[after], nn.ReLU)
                conv = FoldedConv(m, bn, self.dtype, self.onednn)
                steps.append(lambda x, conv=conv, relu=relu: conv(x, relu=relu))
                i = after + relu
            elif isinstance(m, nn.MaxPool2d | nn.ReLU):
                steps.append(m)
                i += 1
            else:
                raise TypeError(f"the frozen encoder cannot fold a {type(m).__name__}")
        return steps

    def _bottleneck(self, block: Bottleneck) -> Step:
        conv1 = FoldedConv(block.conv1, block.bn1, self.dtype, self.onednn)
        conv2 = FoldedConv(block.conv2, block.bn2, self.dtype, self.onednn)
        conv3 = FoldedConv(block.conv3, block.bn3, self.dtype, self.onednn)
        down = None
        if block.downsample is not None:
            down = FoldedConv(block.downsample[0], block.downsample[1], self.dtype, self.onednn)

        def step(x: Tensor) -> Tensor:
            identity = x if down is None else down(x, relu=False)
            return conv3(conv2(conv1(x)), relu=True, add=identity)

        return step

    def __call__(self, x: Tensor) -> list[Tensor]:
        x = x.to(self.dtype)
        if self.onednn or self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for steps in self.layers:
            for step in steps:
                x = step(x)
            outs.append(x)
        pooled = [x]
        for pool, conv in self.ppm:
            y = conv(pool(x), relu=True)
            pooled.append(F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True))
        feat5 = self.cls(torch.cat(pooled, 1), relu=False)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return [t.to(torch.float32).contiguous(memory_format=fmt) for t in (*outs[2:], feat5)]


def frozen_tensors(owner: nn.Module) -> Iterable[Tensor]:
    """Every parameter and buffer the frozen encoder derives from."""
    for name in ("layer0", "layer1", "layer2", "layer3", "layer4", "ppm", "cls"):
        module = getattr(owner, name)
        yield from module.parameters()
        yield from module.buffers()


def tensor_key(tensors: Iterable[Tensor]) -> tuple[tuple[int, int], ...]:
    """Identity of the tensors' current contents: storage address and in-place version."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


__all__ = ["FoldedConv", "FrozenEncoder", "cpu_bf16_supported", "fold_bn", "onednn_available"]
