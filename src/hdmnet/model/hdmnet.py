"""HDMNet meta learner with the BAM-style base-learner ensemble (MODEL.md section 2).

The frozen backbone runs once per image: :meth:`HDMNet.encode_query` and
:meth:`HDMNet.encode_support` return :class:`Features` (which an evaluator may cache), and
:meth:`HDMNet.decode` does everything else. ``forward`` is exactly those three composed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hdmnet.model.backbone import build_backbone, run_layers
from hdmnet.model.losses import distillation_loss, segmentation_ce
from hdmnet.model.pspnet import PPM, head_dims
from hdmnet.model.transformer import ATTENTIONS, CrossAttention, Transformer

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
    of the input image, to which the logits are upsampled.
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


def gram_matrix(feat: Tensor) -> Tensor:
    """Cosine Gram matrix ``[B, C, C]`` of ``[B, C, h, w]`` (eps 1e-7 on the norm product)."""
    x = feat.flatten(2)
    n = x.norm(dim=2, keepdim=True)
    return (x @ x.transpose(1, 2)) / (n @ n.transpose(1, 2) + COSINE_EPS)


def gram_estimates(query_low: Tensor, support_low: Tensor) -> Tensor:
    """``||G_q - G_s,k||_F / ||ones(C, C)||_F`` per shot -> ``[B, K]``."""
    b, c = query_low.shape[:2]
    gq = gram_matrix(query_low)
    gs = gram_matrix(support_low).reshape(b, -1, c, c)
    diff = (gq[:, None] - gs).flatten(2).norm(dim=2)
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
        from hdmnet.model.checkpoint import load_base_learner_into

        load_base_learner_into(self, state)

    def configure_inference(self, channels_last: bool = False, bf16: bool = False) -> HDMNet:
        """Optional speed settings: channels-last convs, bfloat16 autocast (meant for CUDA)."""
        self.channels_last = channels_last
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return self

    def set_foreground_sparsity(self, enabled: bool) -> None:
        """Compute priors and matching on foreground support positions only (default True).

        Both forms give the same values (background positions contribute exactly zero); the
        dense form is the straightforward reference used by tests and the benchmark.
        """
        self.sparse_foreground = enabled
        for module in self.modules():
            if isinstance(module, CrossAttention):
                module.sparse = enabled

    # -- encoding --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _frozen_context(self, device: torch.device) -> Iterator[None]:
        """No autograd for the frozen parts (inference mode at eval), optional autocast."""
        grad_ctx = torch.no_grad() if self.training else torch.inference_mode()
        with grad_ctx, self._autocast(device):
            yield

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def extract_features(self, image: Tensor, mask: Tensor | None = None) -> Features:
        """Run the frozen backbone + PPM + cls[0:2] once on ``image`` ``[B, 3, H, W]``.

        With ``mask`` (``[B, H, W]``, labels 0/1/255) the image is multiplied by ``mask == 1``
        first, as the official code does for support images.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        size = (int(image.shape[2]), int(image.shape[3]))
        with self._frozen_context(image.device):
            if mask is not None:
                if mask.shape != (image.shape[0], *size):
                    raise ValueError(
                        f"support mask {tuple(mask.shape)} does not match image "
                        f"{tuple(image.shape)}; expected [B, H, W]"
                    )
                image = image * (mask == 1).unsqueeze(1).to(image.dtype)
            if self.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            outs = run_layers(self, image)
            feat5 = self.cls(self.ppm(outs[4]))
            layer2 = outs[2]
            if self.is_vgg:
                layer2 = F.interpolate(
                    layer2, size=outs[3].shape[-2:], mode="bilinear", align_corners=True
                )
        return Features(layer2, outs[3], outs[4], feat5, size)

    def encode_query(self, image: Tensor) -> Features:
        """Features of query images (cacheable: they depend on the image only)."""
        return self.extract_features(image)

    def encode_support(self, image: Tensor, mask: Tensor) -> Features:
        """Features of support images masked by ``mask == 1`` (depend on image and mask)."""
        return self.extract_features(image, mask)

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
        if self.training:
            if query_mask is None:
                raise ValueError("training forward needs query_mask (the query's 0/1/255 labels)")
            if self.ensemble and class_ids is None:
                raise ValueError("training forward needs class_ids (base-class index per query)")
            return self._decode(
                query, supports, support_masks, query_mask, query_base_mask, class_ids
            )
        with torch.inference_mode(), self._autocast(support_masks.device):
            return self._decode(query, supports, support_masks, query_mask, query_base_mask, None)

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
        query: Features,
        supports: Sequence[Features],
        support_masks: Tensor,
        query_mask: Tensor | None,
        query_base_mask: Tensor | None,
        class_ids: Tensor | None,
    ) -> HDMNetOutput:
        b = query.layer3.shape[0]
        shots = len(supports)

        def stack(name: str) -> Tensor:
            return torch.stack([getattr(s, name) for s in supports], 1).flatten(0, 1)

        s_layer2, s_layer3 = stack("layer2"), stack("layer3")
        s_layer4, s_feat5 = stack("layer4"), stack("feat5")
        mask = (support_masks == 1).flatten(0, 1).unsqueeze(1).to(s_layer3.dtype)  # [B*K,1,H,W]

        query_feat = self.down_query(torch.cat([query.layer3, query.layer2], 1))
        supp_feat = self.down_supp(torch.cat([s_layer3, s_layer2], 1))
        feat_mask = F.interpolate(
            mask, size=supp_feat.shape[-2:], mode="bilinear", align_corners=True
        )
        supp_pro = weighted_gap(supp_feat, feat_mask)  # [B*K, C, 1, 1]
        supp_feat = self.supp_merge(torch.cat([supp_feat, supp_pro.expand_as(supp_feat)], 1))
        proto = supp_pro.reshape(b, shots, -1, 1, 1).mean(1)

        prior = prior_similarity if self.sparse_foreground else prior_similarity_dense
        similarity = torch.cat(
            [prior(query.feat5, s_feat5, mask), prior(query.layer4, s_layer4, mask)], 1
        )
        query_feat = self.query_merge(
            torch.cat([query_feat, proto.expand_as(query_feat), similarity * SIMILARITY_SCALE], 1)
        )
        meta_out, correlations = self.transformer(query_feat, supp_feat, mask, similarity)
        base_out = self.base_learnear(query.feat5)

        if self.ensemble:
            est = gram_estimates(query.layer2, s_layer2)  # [B, K]
            weight = kshot_weights(est, self.kshot_rw, self.fix_quirks)
            final_out = self._ensemble(meta_out, base_out, (weight * est).sum(1), class_ids)
        else:
            final_out = meta_out

        size = query.image_size

        def up(x: Tensor) -> Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

        final_out, meta_out, base_out = up(final_out), up(meta_out), up(base_out)
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

        Exactly ``decode(encode_query(query), [encode_support(s_k, m_k)], support_masks, ...)``.
        """
        if supports.dim() != 5 or support_masks.dim() != 4:
            raise ValueError(
                f"supports must be [B, K, 3, H, W] and support_masks [B, K, H, W]; got "
                f"{tuple(supports.shape)} and {tuple(support_masks.shape)}"
            )
        q = self.encode_query(query)
        s = [
            self.encode_support(supports[:, k], support_masks[:, k])
            for k in range(supports.shape[1])
        ]
        return self.decode(q, s, support_masks, query_mask, query_base_mask, class_ids)

    def correlation_maps(
        self, query: Tensor, supports: Tensor, support_masks: Tensor
    ) -> list[Tensor]:
        """The correlation maps (coarse to fine) of an eval-mode forward, for figures."""
        return self.forward(query, supports, support_masks).correlations


def build_hdmnet(
    backbone: str,
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
    blocks: Sequence[int] | None = None,
    width: float | None = None,
) -> HDMNet:
    """Build HDMNet for ``backbone`` (resnet50, resnet101, vgg16, small).

    ``num_base_classes`` excludes background (15 for PASCAL-5i, 60 for COCO-20i).
    ``blocks``/``width``/``cls_dim``/``reduce_dim``/``embed_dim`` size the small variant.
    """
    net = build_backbone(backbone, blocks=blocks, width=width)
    return HDMNet(
        net,
        num_base_classes,
        shot,
        attention=attention,
        num_stages=num_stages,
        distill=distill,
        ensemble=ensemble,
        fix_quirks=fix_quirks,
        embed_dim=embed_dim,
        reduce_dim=reduce_dim,
        cls_dim=cls_dim,
    )


__all__ = [
    "FROZEN_MODULES",
    "HEAD_MODULES",
    "Features",
    "HDMNet",
    "HDMNetOutput",
    "build_hdmnet",
    "fix_bn",
    "gram_estimates",
    "gram_matrix",
    "kshot_weights",
    "prior_similarity",
    "prior_similarity_dense",
    "weighted_gap",
]
