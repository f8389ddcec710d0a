"""HDMNet's hierarchical transformer: self-attention stages, matching, coarse-to-fine decoding.

Module and attribute names reproduce the official state_dict keys
(``transformer.mix_transformer.{down_sample_layers, match_layers, parse_layers, cls}``).
Tokens are ``[B, N, C]`` with N = h * w in row-major order; feature maps are ``[B, C, h, w]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6
MATCH_TEMPERATURE = 0.1
ATTENTIONS = ("matching", "dot")

# Per-stage settings of the official release (stage 0 is the finest, 60x60 at 473 input).
STAGE_HEADS = (2, 4, 8)
STAGE_SR = (4, 2, 1)
STAGE_PATCH = (1, 3, 3)
STAGE_STRIDE = (1, 2, 2)
MATCH_HEADS = 2


def to_tokens(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, h*w, C]``."""
    return x.flatten(2).transpose(1, 2)


def to_map(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """``[B, h*w, C]`` -> ``[B, C, h, w]``."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], hw[0], hw[1])


@dataclass
class SupportStage:
    """One transformer stage's view of a batch of N supports: match-layer keys and values
    ``[N, heads, L, d]`` and the binary token mask ``[N, L]``."""

    k: Tensor
    v: Tensor
    mask: Tensor

    def per_query(self, shots: int) -> tuple[Tensor, Tensor, Tensor]:
        """Regroup ``N = B * shots`` supports into B sequences of ``shots * L`` tokens."""
        n, h, length, d = self.k.shape
        b = n // shots

        def regroup(x: Tensor) -> Tensor:
            if shots == 1:
                return x
            return x.reshape(b, shots, h, length, d).transpose(1, 2).reshape(b, h, -1, d)

        return regroup(self.k), regroup(self.v), self.mask.reshape(b, shots * length)

    @staticmethod
    def cat(stages: list[SupportStage]) -> SupportStage:
        return SupportStage(
            torch.cat([s.k for s in stages]),
            torch.cat([s.v for s in stages]),
            torch.cat([s.mask for s in stages]),
        )

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.mask.nbytes


class PatchEmbed(nn.Module):
    """Strided conv + LayerNorm; returns tokens and their spatial shape."""

    def __init__(self, dim: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.projection = nn.Conv2d(dim, dim, kernel, stride=stride, padding=stride // 2)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(to_tokens(x)), hw


class MultiheadProjection(nn.Module):
    """The q/k/v/o linear maps (no bias) and the head split: heads take contiguous channels."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.linear_q = nn.Linear(dim, dim, bias=False)
        self.linear_k = nn.Linear(dim, dim, bias=False)
        self.linear_v = nn.Linear(dim, dim, bias=False)
        self.linear_o = nn.Linear(dim, dim, bias=False)

    def split(self, x: Tensor) -> Tensor:
        """``[B, L, C]`` -> ``[B, heads, L, C/heads]``."""
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def merge(self, x: Tensor) -> Tensor:
        """``[B, heads, L, d]`` -> ``[B, L, heads*d]``, then the output projection."""
        b, h, n, d = x.shape
        return self.linear_o(x.transpose(1, 2).reshape(b, n, h * d))

    def qkv(self, query: Tensor, source: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q = self.split(self.linear_q(query))
        k = self.split(self.linear_k(source))
        v = self.split(self.linear_v(source))
        return q, k, v


class SelfAttention(nn.Module):
    """Efficient self-attention: keys/values from a spatially reduced map when ``sr > 1``."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.attn = MultiheadProjection(dim, heads)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        source = x
        if self.sr_ratio > 1:
            source = self.norm(to_tokens(self.sr(to_map(x, hw))))
        q, k, v = self.attn.qkv(x, source)
        scale = 1.0 / (math.sqrt(q.shape[-1]) + 1e-9)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return self.attn.merge(out)


def matching_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    temperature: float = MATCH_TEMPERATURE,
    keys_normalized: bool = False,
) -> tuple[Tensor, Tensor]:
    """The matching module on per-head tensors (dense reference form).

    ``q`` ``[B, H, Lq, d]``, ``k``/``v`` ``[B, H, Ls, d]``, ``mask`` ``[B, Ls]`` (1 = foreground
    support token). q and k are L2-normalised, scores = q k^T / temperature, softmax over the
    QUERY axis, background columns zeroed (no renormalisation), out = A v. Returns the output
    ``[B, H, Lq, d]`` and the correlation map ``[B, Lq]``: the mean of the raw scores over
    foreground support tokens, averaged over heads. ``keys_normalized``: k is already
    L2-normalised (:meth:`CrossAttention.project_support`).
    """
    qn = F.normalize(q, dim=-1, eps=1e-12)
    kn = k if keys_normalized else F.normalize(k, dim=-1, eps=1e-12)
    scores = qn @ kn.transpose(-2, -1) / temperature
    m = mask[:, None, None, :]
    attn = scores.softmax(dim=-2) * m
    corr = (scores * m).sum(-1) / (m.sum(-1) + 1e-9)
    return attn @ v, corr.mean(1)


def matching_attention_sparse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor,
    temperature: float = MATCH_TEMPERATURE,
    keys_normalized: bool = False,
) -> tuple[Tensor, Tensor]:
    """Same result as :func:`matching_attention`, computed on foreground support tokens only.

    A column whose mask is 0 contributes exactly nothing (its attention column is zeroed and it
    is left out of the correlation mean), and the softmax is per column, so dropping those
    columns changes no value; it saves most of the time and memory at 60x60 with K shots.
    """
    qn = F.normalize(q, dim=-1, eps=1e-12)
    kn = k if keys_normalized else F.normalize(k, dim=-1, eps=1e-12)
    outs, corrs = [], []
    for b in range(q.shape[0]):
        idx = mask[b].nonzero().squeeze(1)
        if idx.numel() == 0:
            outs.append(q.new_zeros(q.shape[1:]))
            corrs.append(q.new_zeros(q.shape[2]))
            continue
        out, corr = _match_foreground(qn[b], kn[b][:, idx], v[b][:, idx], mask[b, idx], temperature)
        outs.append(out)
        corrs.append(corr)
    return torch.stack(outs), torch.stack(corrs)


# Score elements per chunk of support tokens in the sparse matching (about 2 MB of float32).
MATCH_CHUNK = 1 << 19


def _match_foreground(
    qn: Tensor, kn: Tensor, v: Tensor, m: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Matching of one query against its foreground support tokens, chunk after chunk.

    ``qn`` ``[H, Lq, d]``, ``kn``/``v`` ``[H, n, d]``, ``m`` ``[n]``. Scores are laid out
    ``[heads, support, query]`` so that the softmax over the query axis runs along contiguous
    memory, and a chunk of support tokens at a time so that scores, softmax and products stay
    in cache (at 60x60 with 5 shots the full score matrix is 120 MB per query).
    """
    heads, lq, d = qn.shape
    weighted = not bool((m == 1).all())  # a binary mask selects ones: nothing to weight
    qt = qn.transpose(-2, -1)
    out = qn.new_zeros(heads, lq, d)
    score_sum = qn.new_zeros(heads, lq)
    step = max(1, MATCH_CHUNK // max(1, lq * heads))
    for start in range(0, kn.shape[1], step):
        scores = torch.matmul(kn[:, start : start + step], qt).div_(temperature)
        attn = scores.softmax(dim=-1)
        if weighted:
            w = m[start : start + step][None, :, None]
            attn = attn * w
            scores = scores * w
        score_sum += scores.sum(-2)
        out.baddbmm_(attn.transpose(-2, -1), v[:, start : start + step])
    return out, (score_sum / (m.sum() + 1e-9)).mean(0)


def dot_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Plain scaled dot-product cross-attention (softmax over keys, no masking), for ablations.

    The correlation map is the same statistic as in the matching module (mean of the raw scores
    over foreground support tokens, averaged over heads) so distillation still applies.
    """
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) + 1e-9)
    m = mask[:, None, None, :]
    corr = (scores * m).sum(-1) / (m.sum(-1) + 1e-9)
    return scores.softmax(dim=-1) @ v, corr.mean(1)


class CrossAttention(nn.Module):
    """Query tokens attend to the (K-shot concatenated) support tokens.

    The support side (:meth:`project_support`: keys, L2-normalised for the matching module, and
    values) does not depend on the query, so an evaluator computes it once per support and
    reuses it (:meth:`attend`); ``forward`` is the two composed.
    """

    def __init__(self, dim: int, heads: int, attention: str = "matching") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.attn = MultiheadProjection(dim, heads)
        self.attention = attention
        # Foreground-only evaluation of the matching module (same values, less work).
        self.sparse = True

    def project_support(self, support: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``[N, heads, L, d]`` of support tokens ``[N, L, C]``."""
        k = self.attn.split(self.attn.linear_k(support))
        v = self.attn.split(self.attn.linear_v(support))
        if self.attention == "matching":
            k = F.normalize(k, dim=-1, eps=1e-12)
        return k, v

    def attend(self, query: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Output tokens ``[B, Lq, C]`` and correlation ``[B, Lq]`` from projected supports."""
        q = self.attn.split(self.attn.linear_q(query))
        if self.attention == "dot":
            out, corr = dot_attention(q, k, v, mask)
        elif self.sparse:
            out, corr = matching_attention_sparse(q, k, v, mask, keys_normalized=True)
        else:
            out, corr = matching_attention(q, k, v, mask, keys_normalized=True)
        return self.attn.merge(out), corr

    def forward(self, query: Tensor, support: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        k, v = self.project_support(support)
        return self.attend(query, k, v, mask)


class MixFFN(nn.Module):
    """conv1x1 -> depthwise conv3x3 -> GELU -> Dropout -> conv1x1 -> Dropout, on token maps."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(dim, hidden, 1),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.GELU(),
            nn.Dropout(drop),
            nn.Conv2d(hidden, dim, 1),
            nn.Dropout(drop),
        )

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        return to_tokens(self.layers(to_map(x, hw)))


class EncoderLayer(nn.Module):
    """x += Dropout(SelfAttn(LN(x))); x += MixFFN(LN(x))."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = MixFFN(dim, dim * mlp_ratio, drop)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), hw))
        return x + self.ffn(self.norm2(x), hw)


class MatchLayer(nn.Module):
    """Encoder layer whose attention is the cross-attention to the support (LN on both inputs)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, drop: float, attention: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = CrossAttention(dim, heads, attention)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = MixFFN(dim, dim * mlp_ratio, drop)
        self.drop = nn.Dropout(drop)

    def project_support(self, support: Tensor) -> tuple[Tensor, Tensor]:
        """The query-independent half: keys and values of the layer-normed support tokens."""
        return self.attn.project_support(self.norm1(support))

    def attend(
        self, x: Tensor, hw: tuple[int, int], k: Tensor, v: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        out, corr = self.attn.attend(self.norm1(x), k, v, mask)
        x = x + self.drop(out)
        return x + self.ffn(self.norm2(x), hw), corr

    def forward(
        self, x: Tensor, hw: tuple[int, int], support: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        return self.attend(x, hw, *self.project_support(support), mask)


class ConvModule(nn.Module):
    """conv3x3 (no bias) + BN + ReLU, initialised kaiming-normal (fan_out) and BN (1, 0)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


def _bottleneck_head(dim: int, out_ch: int | None) -> nn.Sequential:
    """conv1x1 BN conv3x3 BN conv1x1 [BN ReLU]: ``parse_layers`` (out_ch None) or ``cls``."""
    wide = dim * 4
    layers: list[nn.Module] = [
        nn.Conv2d(dim, wide, 1),
        nn.BatchNorm2d(wide),
        nn.Conv2d(wide, wide, 3, padding=1),
        nn.BatchNorm2d(wide),
    ]
    if out_ch is None:
        layers += [nn.Conv2d(wide, dim, 1), nn.BatchNorm2d(dim), nn.ReLU()]
    else:
        layers.append(nn.Conv2d(wide, out_ch, 1))
    return nn.Sequential(*layers)


class MixTransformer(nn.Module):
    """The three-stage (configurable 1..3) transformer with matching and decoding."""

    def __init__(
        self,
        embed_dim: int = 64,
        num_stages: int = 3,
        attention: str = "matching",
        sim_channels: int = 2,
        mlp_ratio: int = 4,
        drop: float = 0.1,
    ) -> None:
        super().__init__()
        if not 1 <= num_stages <= len(STAGE_HEADS):
            raise ValueError(f"num_stages must be 1, 2 or 3, got {num_stages}")
        self.num_stages = num_stages
        self.down_sample_layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PatchEmbed(embed_dim, STAGE_PATCH[i], STAGE_STRIDE[i]),
                    EncoderLayer(embed_dim, STAGE_HEADS[i], STAGE_SR[i], mlp_ratio, drop),
                    EncoderLayer(embed_dim, STAGE_HEADS[i], STAGE_SR[i], mlp_ratio, drop),
                    nn.LayerNorm(embed_dim, eps=LN_EPS),
                ]
            )
            for i in range(num_stages)
        )
        self.match_layers = nn.ModuleList(
            nn.ModuleList(
                [
                    MatchLayer(embed_dim, MATCH_HEADS, mlp_ratio, drop, attention),
                    ConvModule(embed_dim + sim_channels, embed_dim),
                ]
            )
            for _ in range(num_stages)
        )
        self.parse_layers = nn.ModuleList(
            _bottleneck_head(embed_dim, None) for _ in range(num_stages)
        )
        self.cls = _bottleneck_head(embed_dim, 2)

    def _stages(self, x: Tensor) -> list[tuple[Tensor, tuple[int, int]]]:
        """Tokens (after each stage's LayerNorm) and spatial shape, finest stage first."""
        out = []
        for embed, layer1, layer2, norm in self.down_sample_layers:
            tok, hw = embed(x)
            tok = norm(layer2(layer1(tok, hw), hw))
            out.append((tok, hw))
            x = to_map(tok, hw)
        return out

    def encode_support(self, support: Tensor, support_mask: Tensor) -> list[SupportStage]:
        """The support half of the transformer, which does not depend on the query.

        ``support`` ``[N, C, h, w]``, ``support_mask`` ``[N, 1, H, W]`` binary at image
        resolution. Per stage (finest first): keys and values ``[N, heads, L, d]`` of the match
        layer and the token mask ``[N, L]`` (legacy "nearest" resize, flattened like the tokens).
        """
        stages = []
        for i, (tok, hw) in enumerate(self._stages(support)):
            mask = F.interpolate(support_mask, size=hw, mode="nearest").flatten(1)
            k, v = self.match_layers[i][0].project_support(tok)
            stages.append(SupportStage(k, v, mask))
        return stages

    def decode(
        self, query: Tensor, support: list[SupportStage], similarity: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """Meta logits ``[B, 2, h, w]`` and correlation maps (coarse to fine) of a query batch.

        ``support`` comes from :meth:`encode_support` on ``B * K`` supports (item b * K + k is
        shot k of query b); the K shots' tokens are concatenated along the sequence.
        """
        b = query.shape[0]
        n = support[0].mask.shape[0]
        if n % b:
            raise ValueError(f"support batch {n} is not a multiple of the query batch {b}")
        shots = n // b
        outs: Tensor | None = None
        corrs = []
        query_stages = self._stages(query)
        for i in reversed(range(self.num_stages)):
            match, conv = self.match_layers[i]
            q_tok, q_hw = query_stages[i]
            k, v, mask = support[i].per_query(shots)
            x, corr = match.attend(q_tok, q_hw, k, v, mask)
            corrs.append(corr.reshape(b, q_hw[0], q_hw[1]))
            sim = F.interpolate(similarity, size=q_hw, mode="bilinear", align_corners=True)
            x = conv(torch.cat([to_map(x, q_hw), sim], 1))
            if outs is None:
                outs = self.parse_layers[i](x)
            else:
                up = F.interpolate(outs, size=q_hw, mode="bilinear", align_corners=False)
                outs = up + self.parse_layers[i](x + up)
        assert outs is not None
        return self.cls(outs), corrs

    def forward(
        self, query: Tensor, support: Tensor, support_mask: Tensor, similarity: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """Meta logits and correlation maps.

        ``query`` ``[B, C, h, w]``; ``support`` ``[B*K, C, h, w]`` (batch-major: item b*K + k);
        ``support_mask`` ``[B*K, 1, H, W]`` binary at image resolution; ``similarity``
        ``[B, 2, h, w]``. Returns logits ``[B, 2, h, w]`` and the correlation maps ``[B, h_i, w_i]``
        from the coarsest stage to the finest.
        """
        b = query.shape[0]
        if support.shape[0] % b or support_mask.shape[0] != support.shape[0]:
            raise ValueError(
                f"support batch {support.shape[0]} / mask batch {support_mask.shape[0]} "
                f"is not a multiple of the query batch {b}"
            )
        return self.decode(query, self.encode_support(support, support_mask), similarity)


class Transformer(nn.Module):
    """Wrapper so the keys read ``transformer.mix_transformer.*`` as in the official release."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.mix_transformer = MixTransformer(**kwargs)  # type: ignore[arg-type]

    def forward(
        self, query: Tensor, support: Tensor, support_mask: Tensor, similarity: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        return self.mix_transformer(query, support, support_mask, similarity)


__all__ = [
    "ATTENTIONS",
    "ConvModule",
    "CrossAttention",
    "EncoderLayer",
    "MatchLayer",
    "MixFFN",
    "MixTransformer",
    "MultiheadProjection",
    "PatchEmbed",
    "SelfAttention",
    "SupportStage",
    "Transformer",
    "dot_attention",
    "matching_attention",
    "matching_attention_sparse",
]
