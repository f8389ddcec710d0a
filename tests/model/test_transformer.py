"""Matching attention, correlation maps and the transformer's stage sizes, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from hdmnet.model.transformer import (
    CrossAttention,
    MixTransformer,
    dot_attention,
    matching_attention,
    matching_attention_sparse,
)


def hand_case():
    # One batch item, one head, two query and two support tokens of dim 2.
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[1.0, 0.0]])  # support token 1 is background
    return q, k, v, mask


def test_matching_attention_by_hand():
    q, k, v, mask = hand_case()
    out, corr = matching_attention(q, k, v, mask)
    # Normalised scores / 0.1: [[10, 7.0711], [0, 7.0711]]. Softmax over the QUERY axis:
    # column 0 -> [1, e^-10] / (1 + e^-10); column 1 is background -> zeroed.
    a = 1 / (1 + math.exp(-10))
    b = math.exp(-10) / (1 + math.exp(-10))
    expected = torch.tensor([[a * 1, a * 2], [b * 1, b * 2]])
    assert torch.allclose(out[0, 0], expected, atol=1e-6)
    # Correlation: mean raw score over foreground support tokens, i.e. column 0 / (1 + 1e-9).
    assert torch.allclose(corr[0], torch.tensor([10.0, 0.0]), atol=1e-5)


def test_matching_attention_softmax_is_over_queries_and_temperature_is_0_1():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 3, 4), torch.eye(3).view(1, 1, 3, 3)
    mask = torch.ones(1, 3)
    # With v = identity, the output is the attention matrix itself.
    attn, _ = matching_attention(q, k, v[..., :3], mask)
    assert torch.allclose(attn[0, 0].sum(0), torch.ones(3), atol=1e-6)  # columns sum to 1
    qn = q / q.norm(dim=-1, keepdim=True)
    kn = k / k.norm(dim=-1, keepdim=True)
    expected = torch.softmax(qn[0, 0] @ kn[0, 0].T / 0.1, dim=0)
    assert torch.allclose(attn[0, 0], expected, atol=1e-6)


def test_background_support_tokens_are_zeroed_without_renormalising():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 6, 4), torch.randn(1, 1, 4, 4)
    v = torch.eye(4).view(1, 1, 4, 4)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    attn, _ = matching_attention(q, k, v, mask)
    full, _ = matching_attention(q, k, v, torch.ones(1, 4))
    assert torch.equal(attn[0, 0][:, [1, 3]], torch.zeros(6, 2))
    assert torch.allclose(attn[0, 0][:, [0, 2]], full[0, 0][:, [0, 2]], atol=1e-7)


@pytest.mark.parametrize("fg", [[1, 0, 1, 1, 0, 0, 1, 0], [0] * 8, [1] * 8])
def test_sparse_matching_equals_dense(fg):
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 2, 5, 3), torch.randn(2, 2, 8, 3), torch.randn(2, 2, 8, 3)
    mask = torch.tensor([fg, fg[::-1]], dtype=torch.float32)
    dense = matching_attention(q, k, v, mask)
    sparse = matching_attention_sparse(q, k, v, mask)
    for d, s in zip(dense, sparse, strict=True):
        assert torch.allclose(d, s, atol=1e-6)


def test_cross_attention_heads_take_contiguous_channels_and_average_correlations():
    torch.manual_seed(3)
    layer = CrossAttention(4, heads=2)
    with torch.no_grad():
        for lin in (
            layer.attn.linear_q,
            layer.attn.linear_k,
            layer.attn.linear_v,
            layer.attn.linear_o,
        ):
            lin.weight.copy_(torch.eye(4))
    query, support = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    out, corr = layer(query, support, mask)
    heads = []
    corrs = []
    for h in range(2):
        ch = slice(2 * h, 2 * h + 2)
        o, c = matching_attention(
            query[None, :, :, ch], support[None, :, :, ch], support[None, :, :, ch], mask
        )
        heads.append(o[0, 0])
        corrs.append(c[0])
    assert torch.allclose(out[0], torch.cat(heads, -1), atol=1e-6)
    assert torch.allclose(corr[0], (corrs[0] + corrs[1]) / 2, atol=1e-6)


def test_dot_attention_is_softmax_over_keys():
    torch.manual_seed(4)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    out, corr = dot_attention(q, k, v, torch.tensor([[1.0, 0, 0, 0, 1]]))
    scores = q[0, 0] @ k[0, 0].T / 2.0
    assert torch.allclose(out[0, 0], scores.softmax(-1) @ v[0, 0], atol=1e-6)
    assert torch.allclose(corr[0], (scores[:, 0] + scores[:, 4]) / 2, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "stage_sizes"), [(60, [15, 30, 60]), (13, [4, 7, 13]), (8, [2, 4, 8])]
)
@pytest.mark.parametrize("shots", [1, 3])
def test_transformer_shapes_and_correlation_maps(size, stage_sizes, shots):
    torch.manual_seed(5)
    net = MixTransformer(embed_dim=16).eval()
    q = torch.randn(2, 16, size, size)
    s = torch.randn(2 * shots, 16, size, size)
    mask = (torch.rand(2 * shots, 1, size * 8, size * 8) > 0.5).float()
    sim = torch.rand(2, 2, size, size)
    with torch.no_grad():
        logits, corrs = net(q, s, mask, sim)
    assert tuple(logits.shape) == (2, 2, size, size)
    assert [tuple(c.shape) for c in corrs] == [(2, n, n) for n in stage_sizes]


def test_transformer_fewer_stages():
    net = MixTransformer(embed_dim=16, num_stages=2).eval()
    assert len(net.down_sample_layers) == 2
    with torch.no_grad():
        logits, corrs = net(
            torch.randn(1, 16, 12, 12),
            torch.randn(1, 16, 12, 12),
            torch.ones(1, 1, 96, 96),
            torch.rand(1, 2, 12, 12),
        )
    assert tuple(logits.shape) == (1, 2, 12, 12)
    assert [tuple(c.shape) for c in corrs] == [(1, 6, 6), (1, 12, 12)]
    with pytest.raises(ValueError, match="num_stages"):
        MixTransformer(num_stages=4)


def test_returned_correlation_is_the_matching_statistic_of_the_finest_stage(monkeypatch):
    # The finest map must equal the matching module applied to what the match layer sees.
    torch.manual_seed(6)
    net = MixTransformer(embed_dim=16, num_stages=1).eval()
    seen = {}
    cross = net.match_layers[0][0].attn
    attend = cross.attend

    def spy(query, k, v, mask):
        seen.update(args=(query, k, v, mask))
        return attend(query, k, v, mask)

    monkeypatch.setattr(cross, "attend", spy)
    q, s = torch.randn(1, 16, 6, 6), torch.randn(1, 16, 6, 6)
    mask = (torch.rand(1, 1, 48, 48) > 0.3).float()
    with torch.no_grad():
        _, corrs = net(q, s, mask, torch.rand(1, 2, 6, 6))
        query, k, v, token_mask = seen["args"]
        qh = cross.attn.split(cross.attn.linear_q(query))
        _, corr = matching_attention(qh, k, v, token_mask)
    assert torch.allclose(corrs[0].flatten(), corr.flatten(), atol=1e-5)
    # The keys handed over are the L2-normalised per-head keys (projected once per support).
    assert torch.allclose(k.norm(dim=-1), torch.ones_like(k[..., 0]), atol=1e-6)
    expected_mask = torch.nn.functional.interpolate(mask, size=(6, 6), mode="nearest").flatten()
    assert torch.equal(token_mask.flatten(), expected_mask)
