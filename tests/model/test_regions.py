"""A support's feature 5 computed only where its foreground reaches (hdmnet.model.regions).

The box of a feature map that a region reaches, a convolution computed on boxes against the
whole map, and the model: supports with a small foreground give the outputs of the whole-map
feature 5, on the fused and on the module path, one image at a time and a batch in one call.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hdmnet.model.hdmnet import build_hdmnet
from hdmnet.model.regions import apply_in_boxes, conv_reach, reach_boxes


def test_reach_boxes_cover_nearest_and_bilinear_resizing():
    where = torch.zeros(3, 50, 50, dtype=torch.bool)
    where[0, 10:20, 30:41] = True
    where[2] = True
    boxes = reach_boxes(where, (7, 7))
    assert boxes[1] is None and boxes[2] == (0, 7, 0, 7)
    r0, r1, c0, c1 = boxes[0]
    region = where[:1, None].float()
    for mode, kwargs in (("nearest", {}), ("bilinear", {"align_corners": True})):
        hit = F.interpolate(region, size=(7, 7), mode=mode, **kwargs)[0, 0] > 0
        rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
        assert r0 <= int(rows.min()) and int(rows.max()) < r1
        assert c0 <= int(cols.min()) and int(cols.max()) < c1
    assert (r1 - r0) * (c1 - c0) < 49 // 2  # a small region gives a small box


@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_on_boxes_equals_the_whole_map_inside_and_is_zero_outside(dilation, channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=dilation, dilation=dilation)
    x = torch.randn(4, 6, 12, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    boxes = [(0, 12, 0, 11), (2, 5, 7, 11), None, (0, 3, 0, 2)]
    calls = []

    def on_box(items, box):
        calls.append((items, box))
        return conv(x[items, :, box[0] : box[1], box[2] : box[3]])

    size, reach = (12, 11), conv_reach(conv)
    with torch.no_grad():
        full = conv(x)
        got = apply_in_boxes(on_box, 4, size, boxes, reach)
    assert got.shape == full.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    # The whole-map item alone, each boxed item once on its box grown by the reach.
    grown1 = (max(2 - reach, 0), 5 + reach, 7 - reach, 11)
    assert calls == [
        (slice(0, 1), (0, 12, 0, 11)),
        (slice(1, 2), grown1),
        (slice(3, 4), (0, 3 + reach, 0, 2 + reach)),
    ]
    assert torch.allclose(got[0], full[0], atol=1e-6)  # a batch of 1: rounding may differ
    assert torch.allclose(got[1, :, 2:5, 7:11], full[1, :, 2:5, 7:11], atol=1e-6)
    assert torch.allclose(got[3, :, 0:3, 0:2], full[3, :, 0:3, 0:2], atol=1e-6)
    inside = torch.zeros(4, 1, 12, 11, dtype=torch.bool)
    inside[0] = True
    inside[1, :, 2:5, 7:11] = True
    inside[3, :, 0:3, 0:2] = True
    assert torch.count_nonzero(got * ~inside) == 0
    with torch.no_grad():
        calls.clear()
        assert torch.equal(apply_in_boxes(on_box, 4, size, [(0, 12, 0, 11)] * 4, reach), full)
        assert torch.equal(apply_in_boxes(on_box, 4, size, None, reach), full)
        assert calls == [(slice(0, 4), (0, 12, 0, 11))] * 2  # one call for the whole batch
        assert torch.count_nonzero(apply_in_boxes(on_box, 4, size, [None] * 4, reach)) == 0
    with pytest.raises(ValueError, match="stride"):
        conv_reach(torch.nn.Conv2d(2, 2, 3, stride=2))


def corner_episode(size: int, shots: int):
    """Query, supports and masks whose foreground is a small off-centre rectangle."""
    g = torch.Generator().manual_seed(3)
    query = torch.randn(1, 3, size, size, generator=g)
    supports = torch.randn(1, shots, 3, size, size, generator=g)
    masks = torch.zeros(1, shots, size, size, dtype=torch.long)
    for k in range(shots):
        top, left = 4 + 9 * k, size // 2 + 3 * k
        masks[0, k, top : top + size // 5, left : left + size // 4] = 1
        masks[0, k, top + size // 5, left : left + size // 4] = 255
    return query, supports, masks


@pytest.mark.parametrize("fused", [True, False])
def test_support_feature5_on_its_region_gives_the_whole_map_outputs(fused):
    torch.manual_seed(0)
    model = build_hdmnet("small", 15, 2, embed_dim=16).eval()
    model.configure_inference(fuse_frozen=fused)
    query, supports, masks = corner_episode(97, 2)
    q = model.encode_query(query)
    supports_features = [model.encode_support(supports[:, k], masks[:, k]) for k in range(2)]
    whole = [
        dataclasses.replace(
            s, feat5=model.encode_query(supports[:, k] * (masks[:, k] == 1).unsqueeze(1)).feat5
        )
        for k, s in enumerate(supports_features)
    ]
    # Only part of the map was computed: the rest is zero, where the whole map is not.
    outside = supports_features[0].feat5 == 0
    assert 0.3 < float(outside.float().mean()) < 1.0
    assert torch.count_nonzero(whole[0].feat5 * outside) > 0
    got = model.decode(q, supports_features, masks)
    ref = model.decode(q, whole, masks)
    for a, b in zip(
        (got.final, got.meta, *got.correlations),
        (ref.final, ref.meta, *ref.correlations),
        strict=True,
    ):
        assert float((a - b).abs().max()) < 1e-5
    assert torch.equal(got.final.argmax(1), ref.final.argmax(1))
    # The whole episode in one call (query everywhere, supports on their regions) agrees too.
    batched = model(query, supports, masks)
    assert float((batched.final - ref.final).abs().max()) < 1e-5
