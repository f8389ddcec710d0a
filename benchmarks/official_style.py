"""HDMNet's forward computed the way the official release computes it, on our model's weights.

The benchmarks need a reference that costs what the official code costs, operation for
operation, without the official code's dependencies (mmcv, mmseg, einops, CUDA-only paths). This
module is that reference. It was written from a reading of the official ``model/HDMNet.py``,
``model/Transformer.py`` and ``model/MaskMultiheadAttention.py`` (Pbihao/HDMNet) and of its
``test.py``; it reuses our modules' parameters (identical state-dict keys) but none of our
forward code except the plain building blocks (convolutions, LayerNorm, linear maps, the MixFFN
convolution stack), so it spends its time where the official forward spends it:

- Backbone. The query batch goes through layer0..layer4, PPM and ``cls[0:2]`` once; all B*K
  support images of the batch go through them in ONE batched call, after being multiplied by
  their ``mask == 1`` (one backbone pass per image: the official forward takes both priors from
  that pass). Outputs of layer1..layer4 are cloned, as the official feature extractor does.
  Everything here runs under ``no_grad``.
- Priors. Per shot, the dense ``[B, M, N]`` cosine matrix between every masked support position
  and every query position (two batched matrix products, for the dot products and the norms),
  max over support positions; shot mean. For feature 5 and for layer4.
- Prototype. ``avg_pool2d``-based masked average pooling, tiled to the feature size with
  ``repeat`` (a materialised copy), as in the official ``Weighted_GAP``.
- Transformer. Tokens per stage as in the official mix transformer. Self-attention: einsum
  scores, explicit softmax and product (no fused attention), with the per-head score means that
  the official attention computes and the self-attention layers throw away. Matching: the
  support mask is expanded to a dense ``[B * heads, Nq, K * Ls]`` float tensor (``repeat`` then
  ``repeat_interleave``), scores for every (query, support) token pair, softmax over the query
  axis, ``masked_fill`` of the background columns, correlation as a masked mean over the full
  dense matrix. No foreground-only shortcut anywhere.
- Ensemble. Gram matrices per shot in a Python loop, the double sort of the k-shot weighting.
- Grad mode. The official ``test.py`` calls the model in eval mode WITHOUT ``torch.no_grad``
  (only the feature extractor has one), so autograd records the meta learner's graph during
  evaluation. ``grad=True`` (the default here for evaluation, as the official test loop does)
  reproduces that; ``grad=False`` wraps the forward in ``no_grad`` (the cheaper variant, shown
  as well by ``benchmarks/forward.py``).

How it was checked against the official code (``tests/test_benchmarks.py`` runs the numerical
part on every ``make test``):

- Numbers: on identical weights and inputs its outputs equal our model's (which equal the
  official code's to 3.6e-7, issue 14) within 1e-4, with identical argmax, in eval mode for 1
  and 5 shots; in training mode (dropouts off) its losses and gradients equal ours.
- Structure: :func:`count_backbone_passes` counts images through ``layer0`` (1 + K per episode,
  as the official forward; the old reference of ``benchmarks/forward.py`` made 1 + 2K), and the
  tests check the one batched call for all supports and the dense ``[B * heads, Nq, K * Ls]``
  matching mask. Its backbone is the module path (conv, BN, ReLU as separate ops) that both the
  official code and ours ran at about 1.9 s per image in issue 14.
- Time: ``benchmarks/forward.py`` times it next to our model and prints the official timings of
  issue 14 (5.03 s for 1 shot, 18.2 s for 5 shots) beside it. On an idle machine on 2026-11-29
  it took 3.87 s and 15.91 s (three runs that day gave 14.2-17.7 s at 5 shots): 23% and 13%
  under the official figures of another day, with the same passes and operations; the README
  quotes the interleaved ratios, which carry over between machines better than the seconds.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from hdmnet.model.hdmnet import HDMNet, HDMNetOutput
from hdmnet.model.transformer import EncoderLayer, MatchLayer, MixTransformer

COSINE_EPS = 1e-7


# ---------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------


def extract(model: HDMNet, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
    """layer0..layer4 outputs (layer1..4 cloned) and feature 5, under ``no_grad``.

    ``mask`` is the float ``[N, 1, H, W]`` 0/1 support mask (resized with nearest to the image
    size, which is the identity at equal size, as the official extractor does).
    """
    results = []
    with torch.no_grad():
        if mask is not None:
            x = x * F.interpolate(mask, size=x.shape[-2], mode="nearest")
        feat = model.layer0(x)
        results.append(feat)
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            feat = layer(feat)
            results.append(feat.clone())
        results.append(model.cls(model.ppm(feat)))
    return results


# ---------------------------------------------------------------------------------------------
# Meta-learner pieces
# ---------------------------------------------------------------------------------------------


def weighted_gap(feat: Tensor, mask: Tensor) -> Tensor:
    """avg_pool2d form of masked average pooling -> ``[N, C, 1, 1]``."""
    h, w = feat.shape[-2:]
    feat = feat * mask
    area = F.avg_pool2d(mask, (h, w)) * h * w + 0.0005
    return F.avg_pool2d(feat, kernel_size=(h, w)) * h * w / area


def dense_similarity(q: Tensor, s: Tensor, mask: Tensor) -> Tensor:
    """Max over support positions of the full cosine matrix -> ``[B, 1, h, w]``."""
    mask = F.interpolate((mask == 1).float(), q.shape[-2:])
    s = s * mask
    b, c, h, w = q.shape
    q_flat = q.contiguous().view(b, c, -1)
    q_norm = torch.norm(q_flat, 2, 1, True)
    s_flat = s.contiguous().view(b, c, -1).contiguous().permute(0, 2, 1).contiguous()
    s_norm = torch.norm(s_flat, 2, 2, True)
    sim = torch.bmm(s_flat, q_flat) / (torch.bmm(s_norm, q_norm) + COSINE_EPS)
    return sim.max(1)[0].view(b, 1, h, w)


def gram(feat: Tensor) -> Tensor:
    b, c, h, w = feat.shape
    f = feat.reshape(b, c, h * w)
    f_t = f.permute(0, 2, 1)
    return torch.bmm(f, f_t) / (torch.bmm(f.norm(2, 2, True), f_t.norm(2, 1, True)) + 1e-7)


def to_batches(x: Tensor, heads: int) -> Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).permute(0, 2, 1, 3).reshape(b * heads, n, c // heads)


def from_batches(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.reshape(b // heads, heads, n, d).permute(0, 2, 1, 3).reshape(b // heads, n, d * heads)


def attention(
    proj: torch.nn.Module, heads: int, q: Tensor, kv: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Self- (mask None) or matching (mask ``[B, Nq, Ls]``) attention, dense, per-head batches."""
    q, k, v = proj.linear_q(q), proj.linear_k(kv), proj.linear_v(kv)
    q, k, v = to_batches(q, heads), to_batches(k, heads), to_batches(v, heads)
    if mask is not None:
        mask = mask.repeat_interleave(heads, 0)
        q, k = F.normalize(q, dim=2), F.normalize(k, dim=2)
        scores = torch.einsum("bmc,bnc->bmn", q, k) / 0.1
        attn = F.softmax(scores, dim=-2).masked_fill(mask == 0, 0)
        weight = (scores * mask).sum(2) / (mask.sum(2) + 1e-9)
    else:
        scores = torch.einsum("bmc,bnc->bmn", q, k) / (math.sqrt(q.shape[-1]) + 1e-9)
        attn = F.softmax(scores, dim=-1)
        weight = scores.mean(2)
    if heads > 1:
        weight = weight.reshape(weight.shape[0] // heads, heads, weight.shape[1]).mean(1)
    return proj.linear_o(from_batches(attn.matmul(v), heads)), weight


def nlc_to_nchw(x: Tensor, hw: tuple[int, int]) -> Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, hw[0], hw[1]).contiguous()


def nchw_to_nlc(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2).contiguous()


def encoder_layer(layer: EncoderLayer, x: Tensor, hw: tuple[int, int]) -> Tensor:
    sa = layer.attn
    q = layer.norm1(x)
    kv = q
    if sa.sr_ratio > 1:
        kv = sa.norm(nchw_to_nlc(sa.sr(nlc_to_nchw(kv, hw))))
    out, _ = attention(sa.attn, sa.attn.heads, q, kv, None)
    x = x + layer.drop(out)
    return x + nchw_to_nlc(layer.ffn.layers(nlc_to_nchw(layer.norm2(x), hw)))


def match_layer(
    layer: MatchLayer, x: Tensor, hw: tuple[int, int], source: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    proj = layer.attn.attn
    out, weight = attention(proj, proj.heads, layer.norm1(x), layer.norm1(source), mask)
    x = x + layer.drop(out)
    return x + nchw_to_nlc(layer.ffn.layers(nlc_to_nchw(layer.norm2(x), hw))), weight


def mix_transformer(
    mt: MixTransformer, q_x: Tensor, s_x: Tensor, mask: Tensor, similarity: Tensor, shots: int
) -> tuple[Tensor, list[Tensor]]:
    """The official stage loop: tokens, dense masks, matching from coarse to fine, decoding."""
    queries, supports, shapes, masks, sims = [], [], [], [], []
    for i, (embed, layer1, layer2, norm) in enumerate(mt.down_sample_layers):
        q_x = embed.projection(q_x)
        q_hw = (q_x.shape[2], q_x.shape[3])
        q_x = embed.norm(q_x.flatten(2).transpose(1, 2))
        s_x = embed.projection(s_x)
        s_hw = (s_x.shape[2], s_x.shape[3])
        s_x = embed.norm(s_x.flatten(2).transpose(1, 2))
        q_x, s_x = encoder_layer(layer1, q_x, q_hw), encoder_layer(layer1, s_x, s_hw)
        q_x, s_x = encoder_layer(layer2, q_x, q_hw), encoder_layer(layer2, s_x, s_hw)
        q_x, s_x = norm(q_x), norm(s_x)
        m = F.interpolate(mask, s_hw, mode="nearest")
        n, _, h, w = m.shape
        m = m.reshape(n // shots, shots, 1, h * w).permute(0, 2, 1, 3).reshape(n // shots, 1, -1)
        m = m.repeat(1, q_hw[0] * q_hw[1], 1)
        sims.append(F.interpolate(similarity, q_hw, mode="bilinear", align_corners=True))
        queries.append(q_x)
        supports.append(s_x.reshape(n // shots, shots * s_x.shape[1], s_x.shape[2]))
        shapes.append(q_hw)
        masks.append(m)
        if i != mt.num_stages - 1:
            q_x, s_x = nlc_to_nchw(q_x, q_hw), nlc_to_nchw(s_x, s_hw)

    outs = None
    weights = []
    for i in reversed(range(mt.num_stages)):
        match, conv = mt.match_layers[i]
        out, weight = match_layer(match, queries[i], shapes[i], supports[i], masks[i])
        out = nlc_to_nchw(out, shapes[i])
        weights.append(weight.view(out.shape[0], shapes[i][0], shapes[i][1]))
        out = conv(torch.cat([out, sims[i]], dim=1))
        if outs is None:
            outs = mt.parse_layers[i](out)
        else:
            outs = F.interpolate(outs, size=out.shape[-2:], mode="bilinear")
            outs = outs + mt.parse_layers[i](out + outs)
    return mt.cls(outs), weights


# ---------------------------------------------------------------------------------------------
# The forward
# ---------------------------------------------------------------------------------------------


def forward(
    model: HDMNet,
    query: Tensor,
    supports: Tensor,
    support_masks: Tensor,
    class_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """(final, meta, base logits at the input size, correlation maps coarse to fine).

    ``query`` ``[B, 3, H, W]``, ``supports`` ``[B, K, 3, H, W]``, ``support_masks``
    ``[B, K, H, W]`` (0/1/255); ``class_ids`` (base-class index per query) in training.
    """
    if model.is_vgg:
        raise NotImplementedError("the reference covers the ResNet backbones")
    h, w = query.shape[-2:]
    b, shots = supports.shape[:2]
    q_feats = extract(model, query)
    query_feat = model.down_query(torch.cat([q_feats[3], q_feats[2]], 1))

    mask = (support_masks.reshape(b * shots, 1, h, w) == 1).float()
    s_feats = extract(model, supports.reshape(b * shots, *supports.shape[2:]), mask)
    supp_feat = model.down_supp(torch.cat([s_feats[3], s_feats[2]], 1))
    size = s_feats[3].shape[-2:]
    proto = weighted_gap(
        supp_feat, F.interpolate(mask, size=size, mode="bilinear", align_corners=True)
    )
    proto = proto.repeat(1, 1, supp_feat.shape[-2], supp_feat.shape[-1])
    low = s_feats[2].reshape(b, shots, *s_feats[2].shape[1:])

    if shots == 1:
        sim4 = dense_similarity(q_feats[4], s_feats[4], support_masks)
        sim5 = dense_similarity(q_feats[5], s_feats[5], support_masks)
    else:
        m = mask.reshape(b, shots, 1, h, w)
        f4 = s_feats[4].reshape(b, shots, *s_feats[4].shape[1:])
        f5 = s_feats[5].reshape(b, shots, *s_feats[5].shape[1:])
        sim5 = torch.stack(
            [dense_similarity(q_feats[5], f5[:, i], m[:, i]) for i in range(shots)], 1
        ).mean(1)
        sim4 = torch.stack(
            [dense_similarity(q_feats[4], f4[:, i], m[:, i]) for i in range(shots)], 1
        ).mean(1)
    similarity = torch.cat([sim5, sim4], 1)

    supp_feat = model.supp_merge(torch.cat([supp_feat, proto], 1))
    proto = proto.reshape(b, shots, *proto.shape[1:]).mean(1)
    query_feat = model.query_merge(torch.cat([query_feat, proto, similarity * 10], 1))
    meta_out, weights = mix_transformer(
        model.transformer.mix_transformer, query_feat, supp_feat, mask, similarity, shots
    )
    base_out = model.base_learnear(q_feats[5])
    meta_soft, base_soft = meta_out.softmax(1), base_out.softmax(1)

    q_gram = gram(q_feats[2])
    norm_max = torch.ones_like(q_gram).norm(dim=(1, 2))
    est = torch.cat(
        [((q_gram - gram(low[:, i])).norm(dim=(1, 2)) / norm_max).reshape(b, 1, 1, 1)
         for i in range(shots)],
        1,
    )  # fmt: skip
    if shots > 1:
        val1, idx1 = est.sort(1)
        _, idx2 = idx1.sort(1)
        weight = model.kshot_rw(val1)
        # The official un-sort gathers with idx1[idx2] (the identity permutation).
        weight = weight.gather(1, idx1.gather(1, idx2))
        weight_soft = torch.softmax(weight, 1)
    else:
        weight_soft = torch.ones_like(est)
    est = (weight_soft * est).sum(1, True)

    bg, fg = meta_soft[:, 0:1], meta_soft[:, 1:]
    if model.training and class_ids is not None:
        ids = torch.arange(model.num_base_classes + 1, device=base_soft.device)
        base_map = torch.cat(
            [base_soft[i, (ids != 0) & (ids != int(class_ids[i]) + 1)].unsqueeze(0).sum(1, True)
             for i in range(b)],
            0,
        )  # fmt: skip
    else:
        base_map = base_soft[:, 1:].sum(1, True)
    est_map = est.expand_as(fg)
    bg = model.gram_merge(torch.cat([bg, est_map], 1))
    fg = model.gram_merge(torch.cat([fg, est_map], 1))
    final = torch.cat([model.cls_merge(torch.cat([bg, base_map], 1)), fg], 1)

    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)

    return up(final), up(meta_out), up(base_out), weights


def eval_forward(
    model: HDMNet, query: Tensor, supports: Tensor, support_masks: Tensor, grad: bool = True
) -> HDMNetOutput:
    """Eval-mode forward as the official test loop runs it (``grad=True``: no ``no_grad``)."""
    model.eval()
    ctx = contextlib.nullcontext() if grad else torch.no_grad()
    with ctx:
        final, meta, base, corrs = forward(model, query, supports, support_masks)
    return HDMNetOutput(final, meta, base, None, corrs)


def _ce(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target.long(), ignore_index=255)


def distill(t: Tensor, s: Tensor) -> Tensor:
    if t.shape[-2:] != s.shape[-2:]:
        t = F.interpolate(t.unsqueeze(1), size=s.shape[-2:], mode="bilinear").squeeze(1)
    t = t.flatten(1).softmax(1)
    s = s.flatten(1).softmax(1)
    return (t * torch.log(t + 1e-12) - t * torch.log(s + 1e-12)).sum(1).mean()


def train_losses(
    model: HDMNet,
    query: Tensor,
    supports: Tensor,
    support_masks: Tensor,
    query_mask: Tensor,
    query_base_mask: Tensor,
    class_ids: Tensor,
) -> dict[str, Tensor]:
    """Training forward and the official loss terms (``model`` must be in training mode)."""
    final, meta, base, weights = forward(model, query, supports, support_masks, class_ids)
    main = _ce(final, query_mask) + _ce(meta, query_mask)
    teacher = (query_mask == 1).float()
    teacher = teacher.masked_fill(teacher == 0, -1e9)
    total_distill = final.new_zeros(())
    for weight in weights:
        total_distill = total_distill + distill(teacher, weight)
        teacher = weight.detach()
    total_distill = total_distill / 3
    base_term = _ce(base, query_base_mask)
    total = main + model.distill_weight * total_distill + model.base_weight * base_term
    return {"main": main, "distill": total_distill, "base": base_term, "total": total}


@contextlib.contextmanager
def count_backbone_passes(model: HDMNet) -> Iterator[list[int]]:
    """Count images entering ``layer0`` while the block runs (``counter[0]``)."""
    counter = [0]

    def hook(_module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        counter[0] += int(args[0].shape[0])

    handle = model.layer0.register_forward_pre_hook(hook)
    try:
        yield counter
    finally:
        handle.remove()


__all__ = [
    "count_backbone_passes",
    "eval_forward",
    "extract",
    "forward",
    "train_losses",
]
