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
BatchNorm, ReLU and residual-sum passes over the activations. Two exact savings of work come
on top: a support's feature 5 only where its foreground reaches (:mod:`hdmnet.model.regions`),
and ``cls``'s share over the PPM branches computed on their small grids (:class:`PyramidTerm`).
``benchmarks/forward.py --parts`` (ResNet-50, 473 px, 2 threads, side by side with the
official-style backbone, nothing else running) measured x1.39 for the 2 images of a 1-shot
episode and x1.48 for the 6 of a 5-shot one (README, "Tests and benchmarks"). The
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
from hdmnet.model.regions import Box, apply_in_boxes, conv_reach, reach_boxes

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
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        dtype: torch.dtype,
        onednn: bool,
        inputs: slice = slice(None),
    ) -> None:
        """``inputs``: the convolution over these input channels only (a share of a sum)."""
        weight, bias = fold_bn(conv, bn)
        weight = weight[:, inputs].contiguous()
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


def interpolation_matrix(n: int, b: int) -> Tensor:
    """``[n, b]``: 1-d linear upsampling from ``b`` to ``n`` positions with aligned corners,
    as ``F.interpolate`` weighs them (bilinear upsampling is this along each axis)."""
    eye = torch.eye(b, dtype=torch.float64).unsqueeze(0)  # b one-hot signals of length b
    return F.interpolate(eye, size=n, mode="linear", align_corners=True)[0].T


class PyramidTerm:
    """The share of ``cls``'s convolution (+ BN scale) that reads the PPM's upsampled branches,
    computed on the branches' small grids.

    A branch enters ``cls`` as ``up(g)``, the bilinear (aligned corners) upsampling of a
    ``b x b`` grid ``g`` to the map. Upsampling is linear and separable, ``up(g) = A g A^T`` per
    channel with ``A`` ``[n, b]``, so the convolution's taps ``W_uv`` read
    ``sum_uv A_u (W_uv g) A_v^T``, where ``A_u`` is ``A`` shifted by tap u's offset with zero
    rows past the map's edge (the convolution's zero padding). Projecting the grid first costs
    ``b^2`` positions instead of the map's thousands: at 473 px this is half of ``cls``'s
    68 GMAC. The sums run in another order than the convolution's, so the result differs from
    it by rounding only (``tests/model/test_fused_and_codes.py``).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None,
        start: int,
        branches: list[int],
        dtype: torch.dtype,
    ) -> None:
        weight, _ = fold_bn(conv, bn)  # the bias goes with the direct share
        self.kernel = conv.kernel_size
        self.dilation = conv.dilation
        self.padding = conv.padding
        self.weights = []
        for width in branches:
            w = weight[:, start : start + width]  # [O, C, Kh, Kw]
            kh, kw = w.shape[2:]
            # [Kh * Kw * O, C]: every tap's projection in one product
            self.weights.append(
                w.permute(2, 3, 0, 1).reshape(kh * kw * w.shape[0], width).to(dtype)
            )
            start += width

    def _shifted(
        self, axis: int, n: int, b: int, lo: int, hi: int, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """``[K, hi - lo, b]``: rows lo..hi of ``A`` shifted by each tap's offset along ``axis``."""
        a = interpolation_matrix(n, b)
        taps = []
        for u in range(self.kernel[axis]):
            rows = torch.arange(lo, hi) + u * self.dilation[axis] - self.padding[axis]
            inside = (rows >= 0) & (rows < n)
            tap = torch.zeros(hi - lo, b, dtype=torch.float64)
            tap[inside] = a[rows[inside]]
            taps.append(tap)
        return torch.stack(taps).to(dtype=dtype, device=device)

    def __call__(self, grids: list[Tensor], size: tuple[int, int], box: Box) -> Tensor:
        """``[N, O, rows, cols]`` (contiguous) on ``box`` of a map of ``size`` from the
        branches' grids ``[N, C, b, b]``."""
        top, bottom, left, right = box
        kh, kw = self.kernel
        total = None
        for grid, weight in zip(grids, self.weights, strict=True):
            n, c, gh, gw = grid.shape
            out = weight.shape[0] // (kh * kw)
            z = weight @ grid.reshape(n, c, gh * gw)  # [N, Kh*Kw*O, gh*gw]
            z = z.view(n, kh, kw, out, gh, gw)
            rows = self._shifted(0, size[0], gh, top, bottom, grid.dtype, grid.device)
            cols = self._shifted(1, size[1], gw, left, right, grid.dtype, grid.device)
            half = torch.einsum("nuvoij,vxj->nuoix", z, cols)
            term = torch.einsum("uyi,nuoix->noyx", rows, half)
            total = term if total is None else total + term
        assert total is not None
        return total


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
            # cls over [layer4, up(branch) for each PPM branch]: the layer4 share as a
            # convolution (with the folded bias), the branches' shares on their grids.
            conv, bn = owner.cls[0], owner.cls[1]
            branches = [stage[1].out_channels for stage in ppm.features]
            direct = conv.in_channels - sum(branches)
            self.cls = FoldedConv(conv, bn, dtype, self.onednn, inputs=slice(0, direct))
            self.cls_reach = conv_reach(conv)
            self.pyramid = PyramidTerm(conv, bn, direct, branches, dtype)

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

    def __call__(self, x: Tensor, where: Tensor | None = None) -> list[Tensor]:
        """``where`` ``[N, H, W]`` (bool): feature 5 only where each image's region reaches,
        zero elsewhere (:mod:`hdmnet.model.regions`); None: everywhere."""
        x = x.to(self.dtype)
        if self.onednn or self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        for steps in self.layers:
            for step in steps:
                x = step(x)
            outs.append(x)
        grids = [conv(pool(x), relu=True) for pool, conv in self.ppm]
        size = (int(x.shape[2]), int(x.shape[3]))
        layer4 = x

        def feat5(items: slice, box: Box) -> Tensor:
            top, bottom, left, right = box
            crop = layer4[items, :, top:bottom, left:right]
            if self.onednn:
                crop = crop.contiguous(memory_format=torch.channels_last)
            branches = self.pyramid([g[items] for g in grids], size, box)
            if self.onednn:
                branches = branches.contiguous(memory_format=torch.channels_last)
            return self.cls(crop, relu=False, add=branches)

        boxes = None if where is None else reach_boxes(where, size)
        feat5_map = apply_in_boxes(feat5, x.shape[0], size, boxes, self.cls_reach)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return [t.to(torch.float32).contiguous(memory_format=fmt) for t in (*outs[2:], feat5_map)]


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
