"""HDMNet meta learner with the BAM-style base-learner ensemble (MODEL.md section 2).

The work splits in three, so that an evaluator can do each part once per image:

1. Encoding: the frozen backbone runs once per image (:meth:`HDMNet.encode_query`,
   :meth:`HDMNet.encode_support`, :meth:`HDMNet.encode_episode` for a whole batch in one call)
   and returns :class:`Features`. On CPU it runs as BatchNorm-folded oneDNN convolutions
   (:mod:`hdmnet.model.fused`).
2. Codes: :meth:`HDMNet.support_code` reduces a masked support to what decoding needs from it,
   none of which depends on the query (prototype, the match layers' keys and values per
   transformer stage, the foreground rows of the prior features, the Gram matrix); likewise
   :meth:`HDMNet.query_code` for a query (reduced features, base-learner logits, Gram matrix).
3. :meth:`HDMNet.decode_codes`: priors, query path of the transformer, matching, ensemble.

``decode`` is 2 + 3 on :class:`Features`, and ``forward`` is 1 + 2 + 3; training runs the same
code with the supports of a batch in one call.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdmnet.model.backbone import backbone_options, build_backbone, run_layers
from hdmnet.model.fused import FrozenEncoder
from hdmnet.model.losses import distillation_loss, segmentation_ce
from hdmnet.model.pspnet import PPM, head_dims, num_base_classes
from hdmnet.model.regions import Box, apply_in_boxes, conv_reach, reach_boxes
from hdmnet.model.transformer import ATTENTIONS, CrossAttention, SupportStage, Transformer
from hdmnet.model.weights import load_base_learner_into

if TYPE_CHECKING:
    from hdmnet.config import Params
    from hdmnet.layout import Run

# Modules copied from the PSPNet base learner and frozen during meta-training.
FROZEN_MODULES = ("layer0", "layer1", "layer2", "layer3", "layer4", "ppm", "cls", "base_learnear")
# Modules trained at 10x the base learning rate (the transformer uses the base rate).
HEAD_MODULES = ("down_supp", "down_query", "supp_merge", "query_merge", "gram_merge", "cls_merge")
GAP_EPS = 5e-4
COSINE_EPS = 1e-7
SIMILARITY_SCALE = 10.0


@dataclass
class Features:
    """Frozen-backbone outputs of one batch of images (query, or masked support).

    ``layer2`` is already resized to ``layer3``'s size for VGG. ``image_size`` is the (H, W)
    of the input image, to which the logits are upsampled. A support's ``feat5`` is computed
    only inside the box its foreground reaches on the feature map (the only place the priors
    and prototypes read it) and is zero outside (:mod:`hdmnet.model.regions`; the
    ``torch.compile`` path computes it everywhere).
    """

    layer2: Tensor
    layer3: Tensor
    layer4: Tensor
    feat5: Tensor
    image_size: tuple[int, int]

    def to(self, *args: object, **kwargs: object) -> Features:
        """``Tensor.to`` applied to every tensor (device / dtype)."""
        return Features(
            *(getattr(self, f.name).to(*args, **kwargs) for f in fields(self)[:4]),
            image_size=self.image_size,
        )

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors, for cache sizing."""
        return sum(getattr(self, f.name).nbytes for f in fields(self)[:4])


@dataclass
class PackedPrior:
    """Foreground rows of N masked support feature maps, for the prior maps.

    ``feat`` ``[T, C]`` holds, support after support, the feature vector of every foreground
    position (mask nearest-resized to the feature size) and ``norm`` ``[T]`` their L2 norms;
    ``counts[j]`` is support j's number of foreground positions out of ``positions``. A
    background position has a zero feature, hence cosine 0 with any query position: it adds
    nothing to the maximum but a floor at 0, which ``counts[j] < positions`` says is there.
    """

    feat: Tensor
    norm: Tensor
    counts: tuple[int, ...]
    positions: int

    @staticmethod
    def pack(feat: Tensor, mask: Tensor) -> PackedPrior:
        """``feat`` ``[N, C, h, w]``, ``mask`` ``[N, 1, H, W]`` binary (any size)."""
        m = F.interpolate(mask, size=feat.shape[-2:], mode="nearest").flatten(1) > 0.5
        rows = feat.flatten(2).transpose(1, 2)  # [N, M, C]
        packed = rows[m]  # [T, C], support after support, row-major positions
        counts = tuple(int(c) for c in m.sum(1).tolist())
        return PackedPrior(packed, packed.norm(dim=1), counts, int(m.shape[1]))

    @staticmethod
    def cat(priors: Sequence[PackedPrior]) -> PackedPrior:
        return PackedPrior(
            torch.cat([p.feat for p in priors]),
            torch.cat([p.norm for p in priors]),
            tuple(c for p in priors for c in p.counts),
            priors[0].positions,
        )

    def rows(self, j: int) -> tuple[Tensor, Tensor, int]:
        """Support j's foreground rows ``[n, C]``, their norms ``[n]`` and ``positions``."""
        start = sum(self.counts[:j])
        stop = start + self.counts[j]
        return self.feat[start:stop], self.norm[start:stop], self.positions

    @property
    def nbytes(self) -> int:
        return self.feat.nbytes + self.norm.nbytes


@dataclass
class SupportCode:
    """What decoding needs from N masked support images; nothing in it depends on a query.

    ``proto`` ``[N, R, 1, 1]`` (masked average of the reduced support map), ``stages`` the
    transformer's per-stage keys/values/token masks, ``priors`` the packed foreground rows of
    feature 5 and layer4, ``gram`` the cosine Gram matrices ``[N, C, C]`` of layer2 (None
    without the ensemble). Item b * K + k is shot k of query b when decoding a batch.
    """

    proto: Tensor
    stages: list[SupportStage]
    priors: tuple[PackedPrior, PackedPrior]
    gram: Tensor | None
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.proto.shape[0])

    @staticmethod
    def cat(codes: Sequence[SupportCode]) -> SupportCode:
        """Concatenate along the support axis (the order is the order of ``codes``)."""
        first = codes[0]
        return SupportCode(
            torch.cat([c.proto for c in codes]),
            [SupportStage.cat([c.stages[i] for c in codes]) for i in range(len(first.stages))],
            (
                PackedPrior.cat([c.priors[0] for c in codes]),
                PackedPrior.cat([c.priors[1] for c in codes]),
            ),
            None if first.gram is None else torch.cat([c.gram for c in codes]),  # type: ignore[misc]
            first.image_size,
        )

    @property
    def nbytes(self) -> int:
        total = self.proto.nbytes + sum(s.nbytes for s in self.stages)
        total += sum(p.nbytes for p in self.priors)
        return total + (0 if self.gram is None else self.gram.nbytes)


@dataclass
class QueryCode:
    """What decoding needs from B query images: the reduced map ``feat`` ``[B, R, h, w]``,
    feature 5 and layer4 flattened ``[B, C, h*w]`` with their per-position norms ``[B, h*w]``,
    the base learner's logits ``[B, C+1, h, w]`` and the layer2 Gram matrices (or None)."""

    feat: Tensor
    feat5: Tensor
    feat5_norm: Tensor
    layer4: Tensor
    layer4_norm: Tensor
    base: Tensor
    gram: Tensor | None
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return int(self.feat.shape[0])

    @staticmethod
    def cat(codes: Sequence[QueryCode]) -> QueryCode:
        tensors = [
            torch.cat([getattr(c, f.name) for c in codes])
            for f in fields(QueryCode)
            if f.name not in ("gram", "image_size")
        ]
        gram = None if codes[0].gram is None else torch.cat([c.gram for c in codes])  # type: ignore[misc]
        return QueryCode(*tensors, gram=gram, image_size=codes[0].image_size)

    @property
    def nbytes(self) -> int:
        total = sum(
            getattr(self, f.name).nbytes
            for f in fields(self)
            if f.name not in ("gram", "image_size")
        )
        return total + (0 if self.gram is None else self.gram.nbytes)


class HDMNetOutput(NamedTuple):
    """Logits upsampled to the input size, losses (when a query mask is given), correlations.

    ``final``/``meta`` are ``[B, 2, H, W]``, ``base`` ``[B, C, H, W]``; ``losses`` has keys
    ``main``, ``distill``, ``base``, ``total``; ``correlations`` are ``[B, h_i, w_i]`` maps from
    the coarsest stage to the finest.
    """

    final: Tensor
    meta: Tensor
    base: Tensor
    losses: dict[str, Tensor] | None
    correlations: list[Tensor]


# ---------------------------------------------------------------------------------------------
# Functional pieces (exposed for tests and for the benchmark's reference path)
# ---------------------------------------------------------------------------------------------


def weighted_gap(feat: Tensor, mask: Tensor) -> Tensor:
    """Masked average pooling: ``sum(f * m) / (sum(m) + 5e-4)`` -> ``[N, C, 1, 1]``."""
    area = mask.sum((2, 3), keepdim=True) + GAP_EPS
    return (feat * mask).sum((2, 3), keepdim=True) / area


def prior_similarity_dense(query: Tensor, support: Tensor, mask: Tensor) -> Tensor:
    """Prior map the straightforward way: full cosine matrix, max over support positions.

    ``query`` ``[B, C, h, w]``, ``support`` ``[B*K, C, h, w]``, ``mask`` ``[B*K, 1, H, W]``
    binary (resized with legacy nearest here). Returns the shot mean ``[B, 1, h, w]``.
    """
    b, c, h, w = query.shape
    shots = support.shape[0] // b
    m = F.interpolate(mask, size=support.shape[-2:], mode="nearest")
    s = (support * m).flatten(2).transpose(1, 2).reshape(b, shots, -1, c)  # [B, K, M, C]
    q = query.flatten(2)  # [B, C, N]
    s_norm = s.norm(dim=3, keepdim=True)  # [B, K, M, 1]
    q_norm = q.norm(dim=1, keepdim=True)  # [B, 1, N]
    sims = []
    for k in range(shots):
        cos = (s[:, k] @ q) / (s_norm[:, k] @ q_norm + COSINE_EPS)  # [B, M, N]
        sims.append(cos.max(1).values)
    return torch.stack(sims, 1).mean(1).reshape(b, 1, h, w)


def prior_similarity(query: Tensor, support: Tensor, mask: Tensor) -> Tensor:
    """Same values as :func:`prior_similarity_dense`, computed on foreground positions only.

    A masked-out support position has a zero feature, so its cosine with any query position is
    exactly 0 (0 / (0 + eps)); the max over support positions is therefore the max over the
    foreground ones, floored at 0 when any background position exists.
    """
    b, _, h, w = query.shape
    shots = support.shape[0] // b
    m = F.interpolate(mask, size=support.shape[-2:], mode="nearest").flatten(1)  # [B*K, M]
    s = (support * m.view(-1, 1, *support.shape[-2:])).flatten(2)  # [B*K, C, M]
    q = query.flatten(2)
    q_norm = q.norm(dim=1)  # [B, N]
    out = []
    for i in range(b):
        per_shot = []
        for k in range(shots):
            j = i * shots + k
            fg = m[j].nonzero().squeeze(1)
            if fg.numel() == 0:
                per_shot.append(q.new_zeros(h * w))
                continue
            sub = s[j][:, fg]  # [C, n]
            cos = (sub.transpose(0, 1) @ q[i]) / (
                sub.norm(dim=0)[:, None] * q_norm[i][None, :] + COSINE_EPS
            )
            best = cos.max(0).values
            if fg.numel() < m.shape[1]:
                best = best.clamp_min(0.0)
            per_shot.append(best)
        out.append(torch.stack(per_shot).mean(0))
    return torch.stack(out).reshape(b, 1, h, w)


def pair_prior(
    query: Tensor, query_norm: Tensor, rows: Tensor, norms: Tensor, positions: int
) -> Tensor:
    """Prior map ``[h*w]`` of one (query, support) pair: max over the support's foreground rows
    ``[n, C]`` (norms ``[n]``, out of ``positions``) of their cosine with every query position
    (``query`` ``[C, h*w]``, norms ``[h*w]``); floored at 0 when background positions exist."""
    if rows.shape[0] == 0:
        return query.new_zeros(query.shape[1])
    cos = (rows @ query) / (norms[:, None] * query_norm[None, :] + COSINE_EPS)
    best = cos.max(0).values
    return best.clamp_min(0.0) if rows.shape[0] < positions else best


def packed_prior(query: Tensor, query_norm: Tensor, support: PackedPrior) -> Tensor:
    """Prior map ``[B, h*w]`` (shot mean) from flattened query features ``[B, C, h*w]``, their
    norms ``[B, h*w]`` and the packed support rows of ``B * K`` supports.

    Same values as :func:`prior_similarity`; each (query, support) pair is computed on its own
    (:func:`pair_prior`), so a pair's map does not depend on the other shots.
    """
    b = query.shape[0]
    shots = len(support.counts) // b
    maps = torch.stack(
        [
            pair_prior(query[j // shots], query_norm[j // shots], *support.rows(j))
            for j in range(len(support.counts))
        ]
    )
    return maps.reshape(b, shots, -1).mean(1)


def gram_matrix(feat: Tensor) -> Tensor:
    """Cosine Gram matrix ``[B, C, C]`` of ``[B, C, h, w]`` (eps 1e-7 on the norm product)."""
    x = feat.flatten(2)
    n = x.norm(dim=2, keepdim=True)
    return (x @ x.transpose(1, 2)) / (n @ n.transpose(1, 2) + COSINE_EPS)


def gram_estimates(query_low: Tensor, support_low: Tensor) -> Tensor:
    """``||G_q - G_s,k||_F / ||ones(C, C)||_F`` per shot -> ``[B, K]``."""
    return gram_distances(gram_matrix(query_low), gram_matrix(support_low))


def gram_distances(query_gram: Tensor, support_gram: Tensor) -> Tensor:
    """:func:`gram_estimates` from Gram matrices ``[B, C, C]`` and ``[B*K, C, C]``."""
    b, c = query_gram.shape[:2]
    gs = support_gram.reshape(b, -1, c, c)
    diff = (query_gram[:, None] - gs).flatten(2).norm(dim=2)
    return diff / torch.ones(c, c, dtype=diff.dtype, device=diff.device).norm()


def kshot_weights(est: Tensor, reweight: nn.Module | None, fix_quirks: bool = False) -> Tensor:
    """Softmax weights ``[B, K]`` of the shots' estimates.

    K = 1: weight 1. K > 1: ``reweight`` is applied to the ascending-sorted estimates. The
    official un-sort is the identity permutation (the weights stay in sorted order while the
    estimates are in original order); ``fix_quirks`` applies the proper inverse permutation.
    """
    shots = est.shape[1]
    if shots == 1:
        return torch.ones_like(est)
    if reweight is None:
        raise ValueError(f"{shots} shots need the kshot_rw module")
    val, idx = est.sort(1)
    weight = reweight(val[:, :, None, None])[:, :, 0, 0]
    if fix_quirks:
        weight = weight.gather(1, idx.argsort(1))
    return weight.softmax(1)


def merge_conv() -> nn.Conv2d:
    """conv1x1(2->1, no bias) initialised to [1, 0] (``gram_merge`` / ``cls_merge``)."""
    conv = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    return conv


def fix_bn(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode (running statistics frozen)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class HDMNet(nn.Module):
    """HDMNet (CVPR 2023) with the official module names, shapes and quirks.

    Variant switches (defaults reproduce the official model): ``attention`` ('matching' or
    'dot'), ``num_stages`` (3, 2, 1), ``distill`` (distillation loss on/off), ``ensemble``
    (False: final output = meta output), ``fix_quirks`` (kshot_rw trained, proper un-sort).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_base_classes: int,
        shot: int = 1,
        *,
        attention: str = "matching",
        num_stages: int = 3,
        distill: bool = True,
        ensemble: bool = True,
        fix_quirks: bool = False,
        embed_dim: int = 64,
        reduce_dim: int | None = None,
        cls_dim: int | None = None,
        distill_weight: float = 1.0,
        base_weight: float = 1.0,
        keep_bn_frozen: bool = True,
    ) -> None:
        super().__init__()
        if num_base_classes < 1:
            raise ValueError(f"num_base_classes must be >= 1, got {num_base_classes}")
        if shot < 1:
            raise ValueError(f"shot must be >= 1, got {shot}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.shot = shot
        self.num_base_classes = num_base_classes
        self.is_vgg = bool(backbone.is_vgg)
        self.attention = attention
        self.num_stages = num_stages
        self.distill = distill
        self.ensemble = ensemble
        self.fix_quirks = fix_quirks
        self.distill_weight = distill_weight
        self.base_weight = base_weight
        self.keep_bn_frozen = keep_bn_frozen
        self.channels_last = False
        self.autocast_dtype: torch.dtype | None = None
        self.fuse_frozen = True
        self.compile_backend: str | None = None
        self.sparse_foreground = True

        for i in range(5):
            setattr(self, f"layer{i}", getattr(backbone, f"layer{i}"))
        fea_dim, red_dim, mid_dim = head_dims(backbone, cls_dim)
        self.ppm = PPM(fea_dim, red_dim)
        # The PSPNet classifier split in two: conv+BN ("feature 5") and ReLU/Dropout/conv.
        self.cls = nn.Sequential(
            nn.Conv2d(self.ppm.out_dim, mid_dim, 3, padding=1, bias=False), nn.BatchNorm2d(mid_dim)
        )
        # Not in-place: feature 5 may be a cached tensor shared across episodes.
        self.base_learnear = nn.Sequential(
            nn.ReLU(), nn.Dropout2d(p=0.1), nn.Conv2d(mid_dim, num_base_classes + 1, 1)
        )
        if reduce_dim is None:
            reduce_dim = max(1, round(256 * backbone.width))
        low_dim = backbone.channels[1] + backbone.channels[2]
        self.down_supp = nn.Sequential(
            nn.Conv2d(low_dim, reduce_dim, 1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(0.5)
        )
        self.down_query = nn.Sequential(
            nn.Conv2d(low_dim, reduce_dim, 1, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(0.5)
        )
        self.query_merge = nn.Sequential(
            nn.Conv2d(reduce_dim * 2 + 2, embed_dim, 1, bias=False), nn.ReLU(inplace=True)
        )
        self.supp_merge = nn.Sequential(
            nn.Conv2d(reduce_dim * 2, embed_dim, 1, bias=False), nn.ReLU(inplace=True)
        )
        self.transformer = Transformer(
            embed_dim=embed_dim, num_stages=num_stages, attention=attention
        )
        self.gram_merge = merge_conv()
        self.cls_merge = merge_conv()
        if shot > 1:
            self.kshot_rw = nn.Sequential(
                nn.Conv2d(shot, 2, 1), nn.ReLU(inplace=True), nn.Conv2d(2, shot, 1)
            )
        else:
            self.kshot_rw = None
        self.freeze_base()

    @classmethod
    def from_config(cls, params: Params, run: Run) -> HDMNet:
        """HDMNet for ``run`` with ``params`` already resolved for the run's variant: the one
        place that says which parameter fills which argument (the detectron2 pattern); the
        constructor and :func:`build_hdmnet` take plain values."""
        model = params.model
        return build_hdmnet(
            run.backbone,
            num_base_classes(params, run.dataset, run.fold),
            run.shot,
            channels_last=model.channels_last,
            bf16=model.bf16,
            attention=model.attention,
            num_stages=model.stages,
            distill=model.distill,
            ensemble=model.ensemble,
            fix_quirks=model.fix_quirks,
            embed_dim=model.embed_dim,
            distill_weight=params.meta.distill_weight,
            base_weight=params.meta.base_weight,
            **backbone_options(model, run.backbone),
        )

    # -- training helpers ------------------------------------------------------------------

    def freeze_base(self) -> None:
        """Backbone, PPM, cls and base learner get ``requires_grad=False``; the rest True."""
        for name, module in self.named_children():
            for p in module.parameters():
                p.requires_grad_(name not in FROZEN_MODULES)

    def train(self, mode: bool = True) -> HDMNet:
        """Like ``nn.Module.train``, but BatchNorm stays in eval mode (official fix_bn)."""
        super().train(mode)
        if mode and self.keep_bn_frozen:
            fix_bn(self)
        return self

    def load_base_learner(self, state: Mapping[str, Tensor]) -> None:
        """Copy backbone, PPM and classifier from a PSPNet state dict (BAM / ours, any prefix)."""
        load_base_learner_into(self, state, FROZEN_MODULES)

    def configure_inference(
        self,
        channels_last: bool = False,
        bf16: bool = False,
        fuse_frozen: bool = True,
        compile_backend: str | None = None,
    ) -> HDMNet:
        """Speed settings; ``model.channels_last`` / ``model.bf16`` in params.yaml set the first
        two (:meth:`from_config`, in every training and evaluation job).

        ``fuse_frozen`` (default): the frozen encoder runs BatchNorm-folded (exact fp32 up to
        rounding, :mod:`hdmnet.model.fused`). ``bf16``: the frozen encoder runs in bfloat16
        (CPU: oneDNN, on AMX / AVX-512-BF16 where the CPU has them), and on CUDA the meta
        learner runs under bfloat16 autocast too, in training as well; features, outputs and
        losses stay float32. It changes the numbers (``benchmarks/bf16.py`` prints by how
        much), hence off by default. ``channels_last``: channels-last weights and activations
        (the meta learner's convolutions, the frozen encoder's features; the fused encoder is
        channels-last internally on CPU either way). ``compile_backend`` (e.g. ``inductor``):
        the frozen encoder through ``torch.compile`` of the modules instead of the folded path
        (the decoder's shapes depend on the masks, so it stays eager).
        """
        self.channels_last = channels_last
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.fuse_frozen = fuse_frozen
        self.compile_backend = compile_backend
        _COMPILED.pop(self, None)
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return self

    def set_foreground_sparsity(self, enabled: bool) -> None:
        """Compute matching on foreground support tokens only (default True).

        Both forms give the same values (background tokens contribute exactly zero); the dense
        form is the straightforward reference used by tests. The priors always use the
        foreground rows (:class:`PackedPrior`), whose equality with the dense form
        :func:`prior_similarity_dense` is tested separately.
        """
        self.sparse_foreground = enabled
        for module in self.modules():
            if isinstance(module, CrossAttention):
                module.sparse = enabled

    # -- encoding --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _frozen_context(self, device: torch.device) -> Iterator[None]:
        """No autograd for the frozen parts (inference mode at eval)."""
        grad_ctx = torch.no_grad() if self.training else torch.inference_mode()
        with grad_ctx:
            yield

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast of the meta learner: CUDA only (CPU keeps the decode in fp32)."""
        if self.autocast_dtype is None or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def frozen_encoder(self, device: torch.device) -> FrozenEncoder | None:
        """The folded encoder for ``device`` (rebuilt when the frozen weights changed), or None
        when it must not be used (disabled, or a frozen BatchNorm in training mode)."""
        if not self.fuse_frozen:
            return None
        for name in ("layer0", "layer1", "layer2", "layer3", "layer4", "ppm", "cls"):
            if any(m.training for m in getattr(self, name).modules() if _is_bn(m)):
                return None
        dtype = self.autocast_dtype or torch.float32
        encoder = _ENCODERS.get(self)
        if encoder is None or not encoder.matches(self, device, dtype):
            encoder = FrozenEncoder(self, device, dtype, self.channels_last)
            _ENCODERS[self] = encoder
        return encoder

    def extract_features(self, image: Tensor, mask: Tensor | None = None) -> Features:
        """Run the frozen backbone + PPM + cls[0:2] once on ``image`` ``[B, 3, H, W]``.

        With ``mask`` (``[B, H, W]``, labels 0/1/255) the image is multiplied by ``mask == 1``
        first, as the official code does for support images, and feature 5 is computed only
        where the foreground reaches (see :class:`Features`).
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if mask is None:
            return self._encode(image)
        if mask.shape != (image.shape[0], *image.shape[2:]):
            raise ValueError(
                f"support mask {tuple(mask.shape)} does not match image "
                f"{tuple(image.shape)}; expected [B, H, W]"
            )
        with self._frozen_context(image.device):
            foreground = mask == 1
            image = image * foreground.unsqueeze(1).to(image.dtype)
        return self._encode(image, foreground)

    def _encode(self, image: Tensor, where: Tensor | None = None) -> Features:
        """The frozen encoder on (already masked) images; ``where`` ``[B, H, W]`` (bool)
        limits each image's feature 5 to where its region reaches (None: everywhere)."""
        size = (int(image.shape[2]), int(image.shape[3]))
        with self._frozen_context(image.device):
            encoder = None if self.compile_backend else self.frozen_encoder(image.device)
            if encoder is not None:
                layer2, layer3, layer4, feat5 = encoder(image, where)
            elif self.compile_backend:
                layer2, layer3, layer4, feat5 = self._compiled_features()(image)
            else:
                layer2, layer3, layer4, feat5 = self._module_features(image, where)
            if self.is_vgg:
                layer2 = F.interpolate(
                    layer2, size=layer3.shape[-2:], mode="bilinear", align_corners=True
                )
        return Features(layer2, layer3, layer4, feat5, size)

    def _compiled_features(self) -> Callable[[Tensor], list[Tensor]]:
        fn = _COMPILED.get(self)
        if fn is None:
            fn = torch.compile(self._module_features, backend=self.compile_backend)
            _COMPILED[self] = fn
        return fn

    def _module_features(self, image: Tensor, where: Tensor | None = None) -> list[Tensor]:
        """The frozen encoder through the modules themselves (autocast for bf16)."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
        if self.autocast_dtype is not None:
            autocast = torch.autocast(device_type=image.device.type, dtype=self.autocast_dtype)
        with autocast:
            outs = run_layers(self, image)
            merged = self.ppm(outs[4])
            if where is None:
                feat5 = self.cls(merged)
            else:
                size = (int(merged.shape[2]), int(merged.shape[3]))

                def on_box(items: slice, box: Box) -> Tensor:
                    return self.cls(merged[items, :, box[0] : box[1], box[2] : box[3]])

                reach = conv_reach(self.cls[0])
                feat5 = apply_in_boxes(on_box, len(merged), size, reach_boxes(where, size), reach)
        return [t.float() for t in (outs[2], outs[3], outs[4], feat5)]

    def encode_query(self, image: Tensor) -> Features:
        """Features of query images (cacheable: they depend on the image only)."""
        return self.extract_features(image)

    def encode_support(self, image: Tensor, mask: Tensor) -> Features:
        """Features of support images masked by ``mask == 1`` (depend on image and mask)."""
        return self.extract_features(image, mask)

    def encode_episode(
        self, query: Tensor, supports: Tensor, support_masks: Tensor
    ) -> tuple[Features, list[Features]]:
        """Query ``[B, 3, H, W]`` and supports ``[B, K, 3, H, W]`` in ONE backbone call.

        Returns the query features and one :class:`Features` per shot, each equal to
        ``encode_query`` / ``encode_support`` (up to rounding).
        """
        query_features, stacked = self._encode_batch(query, supports, support_masks)
        k = supports.shape[1]

        def shot(i: int) -> Features:
            return Features(
                *(
                    getattr(stacked, f.name).unflatten(0, (-1, k))[:, i]
                    for f in fields(Features)[:4]
                ),
                image_size=stacked.image_size,
            )

        return query_features, [shot(i) for i in range(k)]

    def _encode_batch(
        self, query: Tensor, supports: Tensor, support_masks: Tensor
    ) -> tuple[Features, Features]:
        """:meth:`encode_episode` with the supports as one batch (item b * K + k is shot k of
        query b), views of the one backbone call's output: nothing is copied."""
        if supports.dim() != 5 or support_masks.dim() != 4:
            raise ValueError(
                f"supports must be [B, K, 3, H, W] and support_masks [B, K, H, W]; got "
                f"{tuple(supports.shape)} and {tuple(support_masks.shape)}"
            )
        b, k = supports.shape[:2]
        if support_masks.shape[:2] != (b, k) or support_masks.shape[2:] != supports.shape[3:]:
            raise ValueError(
                f"support_masks {tuple(support_masks.shape)} does not match supports "
                f"{tuple(supports.shape)}; expected [B, K, H, W]"
            )
        if query.shape[0] != b or query.shape[1:] != supports.shape[2:]:
            raise ValueError(
                f"query {tuple(query.shape)} does not match supports {tuple(supports.shape)}"
            )
        with self._frozen_context(query.device):
            foreground = support_masks == 1
            masked = supports * foreground.unsqueeze(2).to(supports.dtype)
            images = torch.cat([query, masked.flatten(0, 1)])
            everywhere = torch.ones_like(foreground[:, 0])
            where = torch.cat([everywhere, foreground.flatten(0, 1)])
        both = self._encode(images, where)
        b = query.shape[0]

        def rows(part: slice) -> Features:
            return Features(
                *(getattr(both, f.name)[part] for f in fields(Features)[:4]),
                image_size=both.image_size,
            )

        return rows(slice(0, b)), rows(slice(b, None))

    # -- codes -----------------------------------------------------------------------------

    def support_code(self, features: Features, masks: Tensor) -> SupportCode:
        """Reduce N masked supports (``masks`` ``[N, H, W]``, labels 0/1/255) to a code.

        Runs with autograd in training (the reductions are trained) and under inference mode
        otherwise; the priors and Gram matrices derive from frozen features only.
        """
        if masks.dim() != 3 or masks.shape[1:] != features.image_size:
            raise ValueError(
                f"support masks {tuple(masks.shape)} must be [N, H, W] at the support image "
                f"size {features.image_size}"
            )
        with self._decode_context(masks.device):
            mask = (masks == 1).unsqueeze(1).to(features.layer3.dtype)  # [N, 1, H, W]
            supp = self.down_supp(torch.cat([features.layer3, features.layer2], 1))
            feat_mask = F.interpolate(
                mask, size=supp.shape[-2:], mode="bilinear", align_corners=True
            )
            proto = weighted_gap(supp, feat_mask)  # [N, R, 1, 1]
            supp = self.supp_merge(torch.cat([supp, proto.expand_as(supp)], 1))
            stages = self.transformer.mix_transformer.encode_support(supp, mask)
            with torch.no_grad():
                priors = (
                    PackedPrior.pack(features.feat5, mask),
                    PackedPrior.pack(features.layer4, mask),
                )
                gram = gram_matrix(features.layer2) if self.ensemble else None
        return SupportCode(proto, stages, priors, gram, features.image_size)

    def query_code(self, features: Features) -> QueryCode:
        """Reduce B query images' features to a code (see :class:`QueryCode`)."""
        with self._decode_context(features.layer3.device):
            feat = self.down_query(torch.cat([features.layer3, features.layer2], 1))
            base = self.base_learnear(features.feat5)
            with torch.no_grad():
                feat5 = features.feat5.flatten(2).contiguous()
                layer4 = features.layer4.flatten(2).contiguous()
                gram = gram_matrix(features.layer2) if self.ensemble else None
                code = QueryCode(
                    feat,
                    feat5,
                    feat5.norm(dim=1),
                    layer4,
                    layer4.norm(dim=1),
                    base,
                    gram,
                    features.image_size,
                )
        return code

    def _decode_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.training:
            return self._autocast(device)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self._autocast(device))
        return stack

    # -- decoding --------------------------------------------------------------------------

    def decode(
        self,
        query: Features,
        supports: Sequence[Features],
        support_masks: Tensor,
        query_mask: Tensor | None = None,
        query_base_mask: Tensor | None = None,
        class_ids: Tensor | None = None,
    ) -> HDMNetOutput:
        """Meta learner, base learner and ensemble on precomputed features.

        ``supports`` holds K :class:`Features` (one per shot, batch B each); ``support_masks`` is
        ``[B, K, H, W]`` with labels 0/1/255. ``query_mask`` (0/1/255) enables the losses;
        ``query_base_mask`` (base-class labels, 255 ignored) the base term; ``class_ids``
        ``[B]`` (0-based index of the episode class in the fold's base-class list) is needed in
        training, where that class is left out of the base-learner map.
        """
        self._check_inputs(query, supports, support_masks)

        def stack(name: str) -> Tensor:
            return torch.stack([getattr(s, name) for s in supports], 1).flatten(0, 1)

        stacked = Features(
            stack("layer2"), stack("layer3"), stack("layer4"), stack("feat5"), query.image_size
        )
        return self._decode_stacked(
            query, stacked, support_masks, query_mask, query_base_mask, class_ids
        )

    def _decode_stacked(
        self,
        query: Features,
        supports: Features,
        support_masks: Tensor,
        query_mask: Tensor | None,
        query_base_mask: Tensor | None,
        class_ids: Tensor | None,
    ) -> HDMNetOutput:
        """:meth:`decode` with the supports as one batch (item b * K + k is shot k of query b)."""
        if support_masks.shape[1] != self.shot:
            raise ValueError(
                f"this model is built for {self.shot} shot(s), got {support_masks.shape[1]} "
                "supports"
            )
        self._check_targets(query_mask, class_ids)
        support = self.support_code(supports, support_masks.flatten(0, 1))
        return self.decode_codes(
            self.query_code(query), support, query_mask, query_base_mask, class_ids
        )

    def decode_codes(
        self,
        query: QueryCode,
        supports: SupportCode,
        query_mask: Tensor | None = None,
        query_base_mask: Tensor | None = None,
        class_ids: Tensor | None = None,
        priors: Tensor | None = None,
    ) -> HDMNetOutput:
        """Decode B episodes from a query code (batch B) and a support code (batch B * K).

        ``priors`` ``[B * K, 2, h*w]``: the pairs' prior maps if already known (an evaluator
        reuses them when a (query, support) pair recurs); computed with :meth:`pair_priors`
        otherwise.
        """
        b = len(query)
        if len(supports) != b * self.shot:
            raise ValueError(
                f"this model is built for {self.shot} shot(s): {b} queries need "
                f"{b * self.shot} support codes, got {len(supports)}"
            )
        if supports.image_size != query.image_size:
            raise ValueError(
                f"supports are {supports.image_size} images, queries {query.image_size}"
            )
        self._check_targets(query_mask, class_ids)
        if self.training:
            return self._decode(query, supports, query_mask, query_base_mask, class_ids, priors)
        with self._decode_context(query.feat.device):
            return self._decode(query, supports, query_mask, query_base_mask, None, priors)

    def pair_priors(
        self,
        query: QueryCode,
        supports: SupportCode,
        pairs: Sequence[tuple[int, int]] | None = None,
    ) -> Tensor:
        """Prior maps ``[P, 2, h*w]`` (feature 5, layer4) of (query b, support j) ``pairs``.

        Default: every support with its own query (j with query j // K, in support order).
        Each pair is computed on its own, so its map is the same in any batch.
        """
        if pairs is None:
            shots = len(supports) // len(query)
            pairs = [(j // shots, j) for j in range(len(supports))]
        feat5, layer4 = supports.priors
        maps = []
        with torch.no_grad():
            for b, j in pairs:
                f5 = pair_prior(query.feat5[b], query.feat5_norm[b], *feat5.rows(j))
                f4 = pair_prior(query.layer4[b], query.layer4_norm[b], *layer4.rows(j))
                maps.append(torch.stack([f5, f4]))
        return torch.stack(maps)

    def _check_targets(self, query_mask: Tensor | None, class_ids: Tensor | None) -> None:
        if self.training:
            if query_mask is None:
                raise ValueError("training forward needs query_mask (the query's 0/1/255 labels)")
            if self.ensemble and class_ids is None:
                raise ValueError("training forward needs class_ids (base-class index per query)")

    def _check_inputs(
        self, query: Features, supports: Sequence[Features], support_masks: Tensor
    ) -> None:
        if len(supports) != self.shot:
            raise ValueError(
                f"this model is built for {self.shot} shot(s), got {len(supports)} supports"
            )
        b = query.layer3.shape[0]
        expected = (b, self.shot, *supports[0].image_size)
        if tuple(support_masks.shape) != expected:
            raise ValueError(
                f"support_masks has shape {tuple(support_masks.shape)}, expected {expected} "
                "([B, K, H, W] at the support image size)"
            )
        for k, s in enumerate(supports):
            if s.layer3.shape != supports[0].layer3.shape or s.image_size != supports[0].image_size:
                raise ValueError(f"support {k} has features of another size than support 0")
            if s.layer3.shape[0] != b:
                raise ValueError(f"support {k} has batch {s.layer3.shape[0]}, query has {b}")

    def _decode(
        self,
        query: QueryCode,
        supports: SupportCode,
        query_mask: Tensor | None,
        query_base_mask: Tensor | None,
        class_ids: Tensor | None,
        priors: Tensor | None = None,
    ) -> HDMNetOutput:
        b = len(query)
        shots = len(supports) // b
        h, w = query.feat.shape[-2:]
        proto = supports.proto.reshape(b, shots, -1, 1, 1).mean(1)
        if priors is None:
            priors = self.pair_priors(query, supports)
        similarity = priors.reshape(b, shots, 2, h, w).mean(1)
        query_feat = self.query_merge(
            torch.cat([query.feat, proto.expand_as(query.feat), similarity * SIMILARITY_SCALE], 1)
        )
        meta_out, correlations = self.transformer.mix_transformer.decode(
            query_feat, supports.stages, similarity
        )
        base_out = query.base

        if self.ensemble:
            assert query.gram is not None and supports.gram is not None
            est = gram_distances(query.gram, supports.gram)  # [B, K]
            weight = kshot_weights(est, self.kshot_rw, self.fix_quirks)
            final_out = self._ensemble(meta_out, base_out, (weight * est).sum(1), class_ids)
        else:
            final_out = meta_out

        size = query.image_size

        def up(x: Tensor) -> Tensor:
            return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True)

        final_out, meta_out, base_out = up(final_out), up(meta_out), up(base_out)
        correlations = [c.float() for c in correlations]
        losses = None
        if query_mask is not None:
            losses = self._losses(
                final_out, meta_out, base_out, correlations, query_mask, query_base_mask
            )
        return HDMNetOutput(final_out, meta_out, base_out, losses, correlations)

    def _ensemble(
        self, meta_out: Tensor, base_out: Tensor, est: Tensor, class_ids: Tensor | None
    ) -> Tensor:
        meta_soft = meta_out.softmax(1)
        base_soft = base_out.softmax(1)
        if self.training and class_ids is not None:
            ids = class_ids.reshape(-1).long().to(base_out.device)
            if ids.numel() != base_out.shape[0] or bool(
                ((ids < 0) | (ids >= self.num_base_classes)).any()
            ):
                raise ValueError(
                    f"class_ids {ids.tolist()} must hold one base-class index in "
                    f"[0, {self.num_base_classes}) per query"
                )
            keep = torch.ones(base_soft.shape[:2], dtype=base_soft.dtype, device=base_soft.device)
            keep[:, 0] = 0
            keep.scatter_(1, (ids + 1)[:, None], 0.0)
            base_map = (base_soft * keep[:, :, None, None]).sum(1, keepdim=True)
        else:
            base_map = base_soft[:, 1:].sum(1, keepdim=True)
        bg, fg = meta_soft[:, :1], meta_soft[:, 1:]
        est_map = est.reshape(-1, 1, 1, 1).expand_as(fg)
        bg = self.gram_merge(torch.cat([bg, est_map], 1))
        fg = self.gram_merge(torch.cat([fg, est_map], 1))
        merged_bg = self.cls_merge(torch.cat([bg, base_map], 1))
        return torch.cat([merged_bg, fg], 1)

    def _losses(
        self,
        final_out: Tensor,
        meta_out: Tensor,
        base_out: Tensor,
        correlations: list[Tensor],
        query_mask: Tensor,
        query_base_mask: Tensor | None,
    ) -> dict[str, Tensor]:
        main = segmentation_ce(final_out, query_mask) + segmentation_ce(meta_out, query_mask)
        if self.distill:
            distill = distillation_loss(correlations, query_mask)
        else:
            distill = main.new_zeros(())
        if query_base_mask is not None:
            base = segmentation_ce(base_out, query_base_mask)
        else:
            base = main.new_zeros(())
        total = main + self.distill_weight * distill + self.base_weight * base
        return {"main": main, "distill": distill, "base": base, "total": total}

    # -- plain forward ---------------------------------------------------------------------

    def forward(
        self,
        query: Tensor,
        supports: Tensor,
        support_masks: Tensor,
        query_mask: Tensor | None = None,
        query_base_mask: Tensor | None = None,
        class_ids: Tensor | None = None,
    ) -> HDMNetOutput:
        """``query`` ``[B, 3, H, W]``, ``supports`` ``[B, K, 3, H, W]``, masks ``[B, K, H, W]``.

        ``decode(*encode_episode(query, supports, support_masks), support_masks, ...)``: every
        image of the batch goes through the backbone once, in one call.
        """
        q, stacked = self._encode_batch(query, supports, support_masks)
        return self._decode_stacked(
            q, stacked, support_masks, query_mask, query_base_mask, class_ids
        )

    def correlation_maps(
        self, query: Tensor, supports: Tensor, support_masks: Tensor
    ) -> list[Tensor]:
        """The correlation maps (coarse to fine) of an eval-mode forward, for figures."""
        return self.forward(query, supports, support_masks).correlations


# Folded encoders, per model: kept outside the module so that state dicts, deep copies and DDP
# never see their derived (possibly oneDNN-opaque) tensors.
_ENCODERS: weakref.WeakKeyDictionary[HDMNet, FrozenEncoder] = weakref.WeakKeyDictionary()
_COMPILED: weakref.WeakKeyDictionary[HDMNet, Callable] = weakref.WeakKeyDictionary()


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def build_hdmnet(
    backbone: str,
    num_base_classes: int,
    shot: int = 1,
    *,
    blocks: Sequence[int] | None = None,
    width: float | None = None,
    channels_last: bool = False,
    bf16: bool = False,
    **options: Any,
) -> HDMNet:
    """Build HDMNet for ``backbone`` (resnet50, resnet101, vgg16, small).

    ``num_base_classes`` excludes background (15 for PASCAL-5i, 60 for COCO-20i).
    ``blocks``/``width`` size the small backbone (:func:`build_backbone`); ``options`` are
    :class:`HDMNet`'s keyword arguments (``attention``, ``embed_dim``...). ``channels_last`` /
    ``bf16`` (``model.channels_last`` / ``model.bf16``): see :meth:`HDMNet.configure_inference`.
    """
    net = build_backbone(backbone, blocks=blocks, width=width)
    model = HDMNet(net, num_base_classes, shot, **options)
    return model.configure_inference(channels_last=channels_last, bf16=bf16)


__all__ = [
    "FROZEN_MODULES",
    "HEAD_MODULES",
    "Features",
    "HDMNet",
    "HDMNetOutput",
    "PackedPrior",
    "QueryCode",
    "SupportCode",
    "build_hdmnet",
    "fix_bn",
    "gram_distances",
    "gram_estimates",
    "gram_matrix",
    "kshot_weights",
    "packed_prior",
    "pair_prior",
    "prior_similarity",
    "prior_similarity_dense",
    "weighted_gap",
]
