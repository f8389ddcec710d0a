"""HDMNet behaviour on the small backbone: shapes, encode/decode, training step, ensemble maths."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hdmnet.model.hdmnet import (
    build_hdmnet,
    gram_estimates,
    gram_matrix,
    kshot_weights,
    prior_similarity,
    prior_similarity_dense,
    weighted_gap,
)
from hdmnet.model.optim import build_hdmnet_optimizer


def episode(batch: int, shots: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, size, size, generator=g)
    supports = torch.randn(batch, shots, 3, size, size, generator=g)
    masks = (torch.rand(batch, shots, size, size, generator=g) > 0.6).long()
    masks[..., :2, :] = 255  # ignore labels must count as background
    query_mask = (torch.rand(batch, size, size, generator=g) > 0.5).long()
    base_mask = torch.randint(0, 16, (batch, size, size), generator=g)
    return query, supports, masks, query_mask, base_mask


@pytest.mark.parametrize("shots", [1, 5])
@pytest.mark.parametrize("size", [65, 97])
def test_eval_output_shapes(shots, size):
    torch.manual_seed(0)
    model = build_hdmnet("small", 15, shots, embed_dim=16).eval()
    query, supports, masks, _, _ = episode(1, shots, size)
    out = model(query, supports, masks)
    assert tuple(out.final.shape) == (1, 2, size, size)
    assert tuple(out.meta.shape) == (1, 2, size, size)
    assert tuple(out.base.shape) == (1, 16, size, size)
    feat = (size - 1) // 8 + 1
    stage1 = (feat - 1) // 2 + 1
    stage2 = (stage1 - 1) // 2 + 1
    assert [tuple(c.shape[1:]) for c in out.correlations] == [
        (stage2,) * 2,
        (stage1,) * 2,
        (feat,) * 2,
    ]
    assert out.losses is None
    assert all(torch.isfinite(t).all() for t in (out.final, out.meta, out.base))


def test_forward_is_encode_then_decode_and_eval_is_deterministic():
    torch.manual_seed(1)
    model = build_hdmnet("small", 15, 2, embed_dim=16).eval()
    query, supports, masks, _, _ = episode(2, 2, 49)
    first = model(query, supports, masks)
    second = model(query, supports, masks)
    q = model.encode_query(query)
    s = [model.encode_support(supports[:, k], masks[:, k]) for k in range(2)]
    third = model.decode(q, s, masks)
    for a, b, c in zip(first[:3], second[:3], third[:3], strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)
    # Support features depend on the mask: the image is multiplied by (mask == 1).
    other = model.encode_support(supports[:, 0], torch.ones_like(masks[:, 0]))
    assert not torch.equal(other.layer4, s[0].layer4)
    manual = model.encode_query(supports[:, 0] * (masks[:, 0] == 1).unsqueeze(1))
    for name in ("layer2", "layer3", "layer4"):
        assert torch.equal(getattr(manual, name), getattr(s[0], name))
    # Feature 5 of a support: the same wherever the (resized) foreground reads it.
    fg = (masks[:, :1] == 1).float()
    read = F.interpolate(fg, size=manual.feat5.shape[-2:], mode="nearest") > 0
    assert read.any()
    assert torch.allclose(manual.feat5 * read, s[0].feat5 * read, atol=1e-6)


def test_encode_does_not_keep_a_graph_and_cached_features_survive_decode():
    model = build_hdmnet("small", 15, 1, embed_dim=16).eval()
    query, supports, masks, _, _ = episode(1, 1, 41)
    q = model.encode_query(query)
    s = [model.encode_support(supports[:, 0], masks[:, 0])]
    snapshot = q.feat5.clone()
    model.decode(q, s, masks)
    assert torch.equal(q.feat5, snapshot)  # no in-place op touched the cached features
    assert not q.layer4.requires_grad


def test_training_step_changes_only_trained_parameters():
    torch.manual_seed(2)
    model = build_hdmnet("small", 15, 5, embed_dim=16)
    model.train()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and not any(m.training for m in bn)  # fix_bn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_hdmnet_optimizer(model, lr=1e-3)
    query, supports, masks, query_mask, base_mask = episode(2, 5, 49)
    out = model(query, supports, masks, query_mask, base_mask, class_ids=torch.tensor([0, 7]))
    assert set(out.losses) == {"main", "distill", "base", "total"}
    assert all(math.isfinite(float(v.detach())) for v in out.losses.values())
    out.losses["total"].backward()
    optimizer.step()
    after = model.state_dict()
    params = dict(model.named_parameters())
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for key, value in after.items():
        if key in params and id(params[key]) in in_optimizer:
            assert not torch.equal(value, before[key]), f"{key} was not updated"
        else:  # frozen params, kshot_rw (official quirk) and all BN statistics
            assert torch.equal(value, before[key]), f"{key} changed"
    assert all(
        not params[k].requires_grad for k in params if k.startswith(("layer", "ppm", "cls."))
    )
    assert params["kshot_rw.0.weight"].requires_grad
    assert id(params["kshot_rw.0.weight"]) not in in_optimizer


def test_training_requires_targets():
    model = build_hdmnet("small", 15, 1, embed_dim=16).train()
    query, supports, masks, query_mask, _ = episode(1, 1, 33)
    with pytest.raises(ValueError, match="query_mask"):
        model(query, supports, masks)
    with pytest.raises(ValueError, match="class_ids"):
        model(query, supports, masks, query_mask)
    with pytest.raises(ValueError, match="class_ids"):
        model(query, supports, masks, query_mask, class_ids=torch.tensor([15]))
    with pytest.raises(ValueError, match="got 2 supports"):
        model(query, torch.cat([supports, supports], 1), torch.cat([masks, masks], 1))


def test_variants_run_and_switch_behaviour():
    query, supports, masks, query_mask, base_mask = episode(1, 2, 41)
    ids = torch.tensor([3])
    torch.manual_seed(3)
    plain = build_hdmnet("small", 15, 2, embed_dim=16, distill=False, ensemble=False).train()
    out = plain(query, supports, masks, query_mask, base_mask, ids)
    assert float(out.losses["distill"]) == 0.0
    assert torch.equal(out.final, out.meta)
    dot = build_hdmnet("small", 15, 2, embed_dim=16, attention="dot", num_stages=1).eval()
    out = dot(query, supports, masks)
    assert len(out.correlations) == 1 and tuple(out.final.shape) == (1, 2, 41, 41)
    fixed = build_hdmnet("small", 15, 2, embed_dim=16, fix_quirks=True)
    names = [g["name"] for g in build_hdmnet_optimizer(fixed).param_groups]
    assert "kshot_rw" in names
    with pytest.raises(ValueError, match="attention"):
        build_hdmnet("small", 15, 1, attention="linear")


def test_eval_losses_when_targets_given_and_no_grad():
    model = build_hdmnet("small", 15, 1, embed_dim=16).eval()
    query, supports, masks, query_mask, base_mask = episode(1, 1, 33)
    out = model(query, supports, masks, query_mask, base_mask)
    assert out.losses is not None and math.isfinite(float(out.losses["total"]))
    assert not out.final.requires_grad


# -- hand-computed pieces -------------------------------------------------------------------


def test_weighted_gap_by_hand():
    feat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert math.isclose(float(weighted_gap(feat, mask)), 4.0 / 2.0005, rel_tol=1e-6)


def test_gram_estimate_by_hand():
    query = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # channels orthogonal: Gram = I
    support = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])  # channels equal: Gram = ones
    assert torch.allclose(gram_matrix(query)[0], torch.eye(2), atol=1e-6)
    assert torch.allclose(gram_matrix(support)[0], torch.ones(2, 2), atol=1e-6)
    # ||I - ones||_F / ||ones(2, 2)||_F = sqrt(2) / 2
    est = gram_estimates(query, support)
    assert est.shape == (1, 1)
    assert math.isclose(float(est), math.sqrt(2) / 2, rel_tol=1e-6)


def test_kshot_weights_official_quirk_and_fix():
    est = torch.tensor([[0.3, 0.1, 0.2]])
    identity = torch.nn.Identity()  # the re-weighting returns the sorted values themselves
    quirk = kshot_weights(est, identity, fix_quirks=False)
    fixed = kshot_weights(est, identity, fix_quirks=True)
    # Official: weights of the sorted estimates [0.1, 0.2, 0.3] multiply [0.3, 0.1, 0.2].
    assert torch.allclose(quirk, torch.softmax(torch.tensor([[0.1, 0.2, 0.3]]), 1))
    assert torch.allclose(fixed, torch.softmax(est, 1))
    assert torch.equal(kshot_weights(est[:, :1], None), torch.ones(1, 1))


def test_ensemble_by_hand():
    model = build_hdmnet("small", 2, 1, embed_dim=16)
    meta = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1)  # softmax -> [0.25, 0.75]
    base = torch.tensor([0.0, 0.0, math.log(2.0)]).view(1, 3, 1, 1)  # -> [0.25, 0.25, 0.5]
    with torch.no_grad():
        model.gram_merge.weight.copy_(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    est = torch.tensor([0.3])
    model.eval()
    final = model._ensemble(meta, base, est, None)
    # bg' = 0.25 + 2 * 0.3 = 0.85, fg' = 0.75 + 0.6 = 1.35, base map = 0.25 + 0.5
    assert torch.allclose(final.flatten(), torch.tensor([0.85 - 0.75, 1.35]), atol=1e-6)
    model.train()
    final = model._ensemble(meta, base, est, torch.tensor([1]))  # base class 1 -> channel 2
    assert torch.allclose(final.flatten(), torch.tensor([0.85 - 0.25, 1.35]), atol=1e-6)


def test_prior_similarity_by_hand():
    query = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 2, 1, 2)  # positions [1,0] and [1,1]
    support = torch.tensor([[-1.0, 5.0], [0.0, 5.0]]).view(1, 2, 1, 2)  # [-1,0] fg, [5,5] bg
    fg_bg = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    all_fg = torch.ones(1, 1, 1, 2)
    # Background positions give cosine 0, so negative foreground maxima are floored at 0.
    for fn in (prior_similarity, prior_similarity_dense):
        assert torch.allclose(fn(query, support, fg_bg).flatten(), torch.zeros(2), atol=1e-6)
        got = fn(query, support, all_fg).flatten()
        assert torch.allclose(got, torch.tensor([1 / math.sqrt(2), 1.0]), atol=1e-6)


@pytest.mark.parametrize("shots", [1, 3])
def test_prior_similarity_sparse_equals_dense(shots):
    torch.manual_seed(7)
    query = torch.randn(2, 8, 6, 6)
    support = torch.relu(torch.randn(2 * shots, 8, 6, 6))
    mask = (torch.rand(2 * shots, 1, 47, 47) > 0.7).float()
    mask[0] = 0  # a shot without foreground
    if shots > 1:
        mask[1] = 1  # and one that is all foreground
    assert torch.allclose(
        prior_similarity(query, support, mask),
        prior_similarity_dense(query, support, mask),
        atol=1e-6,
    )


@pytest.mark.parametrize("attention", ["matching", "dot"])
def test_foreground_sparse_path_equals_dense_reference(attention):
    torch.manual_seed(8)
    model = build_hdmnet("small", 15, 3, embed_dim=16, attention=attention).eval()
    query, supports, masks, _, _ = episode(2, 3, 57)
    masks[0, 1] = 0  # a support without foreground
    sparse = model(query, supports, masks)
    model.set_foreground_sparsity(False)
    dense = model(query, supports, masks)
    for a, b in zip(
        [*sparse[:3], *sparse.correlations], [*dense[:3], *dense.correlations], strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5)


def test_channels_last_and_bf16_options_keep_outputs_close():
    torch.manual_seed(9)
    model = build_hdmnet("small", 15, 1, embed_dim=16).eval()
    query, supports, masks, _, _ = episode(1, 1, 41)
    plain = model(query, supports, masks)
    model.configure_inference(channels_last=True)
    fast = model(query, supports, masks)
    assert torch.allclose(plain.final, fast.final, atol=1e-4)
    model.configure_inference(bf16=True)
    half = model(query, supports, masks)
    assert half.final.dtype in (torch.bfloat16, torch.float32)
    assert torch.allclose(plain.final, half.final.float(), atol=0.1)
