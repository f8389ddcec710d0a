"""Computing a feature map only where it will be read.

A support's feature 5 (PSPNet's ``cls`` convolution + BN over the PPM output: at 473 px a 3x3
convolution from 4096 to 512 channels on 60x60 positions, about 68 GMAC, as much as 40% of the
frozen encoder's work per image) is read only at the support's foreground: by the priors
(mask nearest-resized to the feature map, :class:`hdmnet.model.hdmnet.PackedPrior`) and by
masked-average prototypes (mask bilinear-resized with aligned corners). So each support needs it
only inside the box those resized masks reach. Computing a same-padded convolution on that box
grown by the convolution's reach gives the box's values exactly (the convolution there sees the
same inputs; at the map's border its zero padding is the map's own), and leaves every position
outside the box at zero. A query needs the whole map: its box is the whole map, and all whole-map
items of a batch run in one call, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Rows [r0, r1) and columns [c0, c1) of a feature map.
Box = tuple[int, int, int, int]


def conv_reach(conv: nn.Conv2d) -> int:
    """How many positions away a same-padded, stride-1 convolution reads."""
    if tuple(conv.stride) != (1, 1):
        raise ValueError(f"only stride-1 convolutions can run on a box, got stride {conv.stride}")
    return max(d * (k // 2) for d, k in zip(conv.dilation, conv.kernel_size, strict=True))


def reach_boxes(where: Tensor, size: tuple[int, int]) -> list[Box | None]:
    """For each item of ``where`` ``[N, H, W]`` (bool, image size), the box of a feature map of
    ``size`` in which the region resized to ``size`` is non-zero, nearest or bilinear with
    aligned corners (the two ways the model resizes support masks); None for an empty region."""
    region = where.unsqueeze(1).float()
    near = F.interpolate(region, size=size, mode="nearest")
    bilinear = F.interpolate(region, size=size, mode="bilinear", align_corners=True)
    hit = ((near + bilinear) > 0).squeeze(1)
    boxes: list[Box | None] = []
    for item in hit:
        rows = item.any(1).nonzero().flatten().tolist()
        cols = item.any(0).nonzero().flatten().tolist()
        boxes.append(None if not rows else (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1))
    return boxes


def apply_in_boxes(
    fn: Callable[[slice, Box], Tensor],
    n: int,
    size: tuple[int, int],
    boxes: Sequence[Box | None] | None,
    reach: int,
) -> Tensor:
    """A map ``[n, C, *size]`` computed inside each item's box, zero outside it (an item whose
    box is None is all zero; ``boxes`` None: every item everywhere).

    ``fn(items, box)`` computes the map of the ``items`` (a slice) on ``box`` with a same-padded
    convolution reading ``reach`` positions away: items whose box is the whole map go in one
    call, the others one by one on their box grown by ``reach``, of which only the box is kept
    (at the grown box's inner edge the convolution's zero padding stands in for the map).
    """
    h, w = size
    whole: Box = (0, h, 0, w)
    if boxes is None or all(box == whole for box in boxes):
        return fn(slice(0, n), whole)
    parts: list[tuple[slice, Tensor, Box]] = []
    i = 0
    while i < n:
        box = boxes[i]
        if box == whole:  # a run of whole-map items: one call
            stop = next((j for j in range(i, n) if boxes[j] != whole), n)
            parts.append((slice(i, stop), fn(slice(i, stop), whole), whole))
            i = stop
            continue
        if box is not None:
            r0, r1, c0, c1 = box
            top, left = max(r0 - reach, 0), max(c0 - reach, 0)
            grown = (top, min(r1 + reach, h), left, min(c1 + reach, w))
            y = fn(slice(i, i + 1), grown)[:, :, r0 - top : r1 - top, c0 - left : c1 - left]
            parts.append((slice(i, i + 1), y, box))
        i += 1
    if not parts:  # every region empty: one position gives the channels, dtype and layout
        probe = fn(slice(0, 1), (0, 1, 0, 1))
        return probe.new_zeros(n, probe.shape[1], h, w)
    first = parts[0][1]
    out = first.new_zeros(n, first.shape[1], h, w)
    if first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    for items, y, (r0, r1, c0, c1) in parts:
        out[items, :, r0:r1, c0:c1] = y
    return out


__all__ = ["Box", "apply_in_boxes", "conv_reach", "reach_boxes"]
