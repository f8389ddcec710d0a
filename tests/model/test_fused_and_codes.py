"""The fast paths of the model give the numbers of the plain one.

- The frozen encoder with BatchNorm folded into oneDNN convolutions (hdmnet.model.fused) against
  the modules themselves: features to a few 1e-6 (relative), outputs within 1e-4, same argmax.
- Codes: decoding from per-support / per-query codes computed one image at a time equals
  decoding the batch from features; one backbone call for a whole episode batch equals the
  per-image calls.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hdmnet.model.fused import FrozenEncoder, fold_bn
from hdmnet.model.hdmnet import (
    PackedPrior,
    QueryCode,
    SupportCode,
    build_hdmnet,
    packed_prior,
    prior_similarity,
)


def episode(batch: int, shots: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, 3, size, size, generator=g)
    supports = torch.randn(batch, shots, 3, size, size, generator=g)
    masks = (torch.rand(batch, shots, size, size, generator=g) > 0.6).long()
    masks[..., :2, :] = 255
    return query, supports, masks


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics, so that folding them is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def build(backbone: str, shots: int, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    model = build_hdmnet(backbone, 15, shots, **kwargs)
    randomise_bn(model, seed)
    with torch.no_grad():
        model.gram_merge.weight.copy_(torch.tensor([1.0, 0.3]).view(1, 2, 1, 1))
        model.cls_merge.weight.copy_(torch.tensor([1.0, 0.5]).view(1, 2, 1, 1))
    return model.eval()


def outputs(model, *args, fused: bool):
    model.configure_inference(fuse_frozen=fused)
    try:
        return model(*args)
    finally:
        model.configure_inference(fuse_frozen=True)


def test_fold_bn_is_conv_then_bn():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = torch.nn.BatchNorm2d(6)
    randomise_bn(bn)
    bn.eval()
    x = torch.randn(2, 4, 9, 9)
    w, b = fold_bn(conv, bn)
    got = torch.nn.functional.conv2d(x, w, b, padding=1)
    assert torch.allclose(got, bn(conv(x)), atol=1e-5)


@pytest.mark.parametrize(("backbone", "size"), [("small", 97), ("resnet50", 65), ("vgg16", 65)])
def test_fused_encoder_features_and_outputs_match_the_modules(backbone, size):
    kwargs = {"embed_dim": 16} if backbone == "small" else {}
    model = build(backbone, 2, **kwargs)
    query, supports, masks = episode(1, 2, size)
    model.configure_inference(fuse_frozen=False)
    plain = model.encode_support(supports[:, 0], masks[:, 0])
    model.configure_inference(fuse_frozen=True)
    fused = model.encode_support(supports[:, 0], masks[:, 0])
    for name in ("layer2", "layer3", "layer4", "feat5"):
        a, b = getattr(fused, name), getattr(plain, name)
        assert a.shape == b.shape and a.dtype == torch.float32
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max()) + 1e-6, name
    a = outputs(model, query, supports, masks, fused=True)
    b = outputs(model, query, supports, masks, fused=False)
    # Probability-like outputs within 1e-4; the base learner's raw logits (hundreds with random
    # ResNet-50 weights) within a relative 1e-5: folding rounds each weight once more, which
    # moves features by about 2e-6 (relative), twice what 1 vs 2 threads moves them.
    mine, plain = (a.final, a.meta, *a.correlations), (b.final, b.meta, *b.correlations)
    for x, y in zip(mine, plain, strict=True):
        assert float((x - y).abs().max()) < 1e-4
    assert float((a.base - b.base).abs().max()) <= 1e-5 * float(b.base.abs().max())
    assert torch.equal(a.final.argmax(1), b.final.argmax(1))


def test_fused_encoder_follows_weight_changes_and_frozen_bn_mode():
    model = build("small", 1, embed_dim=16)
    query, _, _ = episode(1, 1, 49)
    first = model.encode_query(query).feat5
    other = build("small", 1, seed=5, embed_dim=16)
    model.load_state_dict(other.state_dict())  # in-place copies: the encoder must notice
    assert torch.allclose(model.encode_query(query).feat5, other.encode_query(query).feat5)
    assert not torch.allclose(first, other.encode_query(query).feat5)
    # A frozen BatchNorm in training mode (keep_bn_frozen=False) is not folded.
    model.keep_bn_frozen = False
    model.train()
    assert model.frozen_encoder(torch.device("cpu")) is None
    model.eval()
    assert isinstance(model.frozen_encoder(torch.device("cpu")), FrozenEncoder)


def test_fused_model_keeps_official_keys_and_deep_copies():
    model = build("small", 1, embed_dim=16)
    keys = list(model.state_dict())
    query, supports, masks = episode(1, 1, 41)
    out = model(query, supports, masks)
    assert list(model.state_dict()) == keys  # the folded copies are not module state
    twin = copy.deepcopy(model)
    assert torch.equal(twin(query, supports, masks).final, out.final)


@pytest.mark.parametrize("shots", [1, 3])
def test_one_backbone_call_per_episode_batch_equals_per_image_calls(shots):
    model = build("small", shots, embed_dim=16)
    query, supports, masks = episode(2, shots, 57)
    q, s = model.encode_episode(query, supports, masks)
    q_alone = model.encode_query(query)
    for name in ("layer2", "layer3", "layer4", "feat5"):
        assert torch.allclose(getattr(q, name), getattr(q_alone, name), atol=1e-6)
        for k in range(shots):
            alone = model.encode_support(supports[:, k], masks[:, k])
            assert torch.allclose(getattr(s[k], name), getattr(alone, name), atol=1e-6)
    with pytest.raises(ValueError, match="support_masks"):
        model.encode_episode(query, supports, masks[:, :, :-1])


@pytest.mark.parametrize("attention", ["matching", "dot"])
def test_codes_one_image_at_a_time_decode_like_the_batch(attention):
    shots = 3
    model = build("small", shots, embed_dim=16, attention=attention)
    query, supports, masks = episode(2, shots, 57, seed=3)
    masks[1, 2] = 0  # a support without foreground
    masks[0, 1] = 1  # and one without background
    batched = model(query, supports, masks)
    with torch.inference_mode():
        q_codes = [model.query_code(model.encode_query(query[b : b + 1])) for b in range(2)]
        s_codes = [
            model.support_code(
                model.encode_support(supports[b : b + 1, k], masks[b : b + 1, k]),
                masks[b : b + 1, k],
            )
            for b in range(2)
            for k in range(shots)
        ]
    out = model.decode_codes(QueryCode.cat(q_codes), SupportCode.cat(s_codes))
    for a, b in zip(
        (*out[:3], *out.correlations), (*batched[:3], *batched.correlations), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match="support codes"):
        model.decode_codes(QueryCode.cat(q_codes), SupportCode.cat(s_codes[:-1]))
    assert all(c.nbytes > 0 for c in s_codes) and q_codes[0].nbytes > 0


def test_packed_prior_equals_the_prior_on_feature_maps():
    torch.manual_seed(7)
    shots = 3
    query = torch.randn(2, 8, 6, 6)
    support = torch.relu(torch.randn(2 * shots, 8, 6, 6))
    mask = (torch.rand(2 * shots, 1, 47, 47) > 0.7).float()
    mask[0] = 0  # no foreground
    mask[1] = 1  # no background
    packed = PackedPrior.pack(support, mask)
    flat = query.flatten(2)
    got = packed_prior(flat, flat.norm(dim=1), packed).reshape(2, 1, 6, 6)
    assert torch.allclose(got, prior_similarity(query, support, mask), atol=1e-6)
    assert packed.counts[0] == 0 and packed.counts[1] == 36 and packed.positions == 36


def test_bf16_encoder_stays_close_and_returns_float32():
    model = build("small", 1, embed_dim=16)
    query, supports, masks = episode(1, 1, 65)
    plain = model(query, supports, masks)
    model.configure_inference(bf16=True)
    half = model(query, supports, masks)
    model.configure_inference()
    assert half.final.dtype == torch.float32
    assert float((half.final - plain.final).abs().max()) < 0.1


@pytest.mark.parametrize("native", [True, False])
def test_bf16_encoder_warns_only_where_the_cpu_emulates_bfloat16(native, monkeypatch, caplog):
    from hdmnet.model import fused

    model = build("small", 1, embed_dim=16)
    monkeypatch.setattr(fused, "cpu_bf16_supported", lambda: native)
    with caplog.at_level("WARNING", logger="hdmnet.model"):
        FrozenEncoder(model, torch.device("cpu"), torch.bfloat16)
        FrozenEncoder(model, torch.device("cpu"), torch.float32)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if native:
        assert warnings == []
    else:  # one warning, for the bf16 encoder only, naming the missing CPU flags
        assert len(warnings) == 1 and "avx512_bf16" in warnings[0]


def test_cpu_bf16_support_is_what_onednn_reports():
    from hdmnet.model.fused import cpu_bf16_supported

    expected = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert cpu_bf16_supported() is expected


def test_builders_wire_channels_last_and_bf16():
    from hdmnet.model.pspnet import build_pspnet

    model = build_hdmnet("small", 15, 1, embed_dim=16, channels_last=True, bf16=True)
    assert model.channels_last and model.autocast_dtype == torch.bfloat16
    assert model.down_query[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert build_hdmnet("small", 15, 1, embed_dim=16).autocast_dtype is None
    torch.manual_seed(0)
    plain = build_pspnet("small", 16).eval()
    torch.manual_seed(0)
    fast = build_pspnet("small", 16, channels_last=True, bf16=True).eval()
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        # On CPU bf16 leaves the base learner in float32 (it trains its backbone).
        assert torch.allclose(plain(x), fast(x), atol=1e-4)
    assert fast(x).dtype == torch.float32


def test_compiled_frozen_encoder_matches():
    model = build("small", 1, embed_dim=16)
    query, supports, masks = episode(1, 1, 41)
    plain = model(query, supports, masks)
    model.configure_inference(compile_backend="eager")
    compiled = model(query, supports, masks)
    model.configure_inference()
    assert torch.allclose(plain.final, compiled.final, atol=1e-4)
