"""Training-free few-shot baselines on the frozen base learner, scored on the evaluator's episodes.

A few-shot number on the embedded data only says something next to what needs no meta-learning:
these baselines use the fold's base learner (backbone, PPM, classifier conv) exactly as HDMNet
receives it and learn nothing. They are scored on the very episodes the evaluator draws
(``EpisodeDataset.episode_recipe`` of the same fold, seeds and episode count, the same
evaluation transform and support annotation), at the original label size, with the
evaluator's metrics, so the difference to HDMNet is what meta-training adds.

- ``prototype``: masked average of the support features (mean over shots), cosine similarity
  with every query position (PANet / SG-One without training).
- ``prior``: HDMNet's own prior mask, the best cosine of each query position with any support
  foreground position (PFENet), averaged over shots.

A position is foreground when its similarity exceeds a threshold, the one free choice. A
training-free method may still use the training data to pick it: :func:`evaluate_baseline`
takes the threshold with the best mIoU on base-class episodes of the fold's training list, and
also reports every threshold on the test episodes (whose best, chosen on the test episodes
themselves, is an upper bound of the baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hdmnet import commands, identity, layout
from hdmnet.config import Params
from hdmnet.data.episodes import EpisodeDataset, Recipe, bbox_mask, binary_mask, load_pair
from hdmnet.data.lists import ListItem
from hdmnet.data.transforms import EvalTransform
from hdmnet.errors import StageError
from hdmnet.evaluate.metrics import FewShotMeter, summarise_seeds, upsample_to_label
from hdmnet.jobs.checks import base_cell, require_identity
from hdmnet.jobs.inputs import dataset_root, fold_folder
from hdmnet.layout import Run
from hdmnet.model import CheckpointError, Features, HDMNet, load_checkpoint
from hdmnet.model.hdmnet import COSINE_EPS, prior_similarity, weighted_gap

METHODS = ("prototype", "prior")
DESCRIPTIONS = {
    "prototype": "masked-average prototype of the supports, cosine with each query position",
    "prior": "HDMNet's prior mask (best cosine with any support foreground position)",
}
LAYERS = ("feat5", "layer4", "layer3")
DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def support_prototype(feat: Tensor, mask: Tensor) -> Tensor:
    """Masked-average prototype ``[B, C, 1, 1]`` of support features ``[B, C, h, w]`` under
    ``mask`` ``[B, 1, H, W]`` (labels 0/1/255 at image size)."""
    fg = (mask == 1).to(feat.dtype)
    # Bilinear, as HDMNet resizes the support mask for its own prototypes.
    fg = F.interpolate(fg, size=feat.shape[-2:], mode="bilinear", align_corners=True)
    return weighted_gap(feat, fg)


def prototype_cosine(query: Tensor, prototypes: Sequence[Tensor]) -> Tensor:
    """Cosine ``[B, 1, h, w]`` of each query position with the shots' mean prototype."""
    proto = torch.stack(list(prototypes)).mean(0)  # [B, C, 1, 1]
    dot = (query * proto).sum(1, keepdim=True)
    norm = query.norm(dim=1, keepdim=True) * proto.norm(dim=1, keepdim=True)
    return dot / (norm + COSINE_EPS)


def prototype_similarity(query: Tensor, supports: Sequence[Tensor], masks: Tensor) -> Tensor:
    """Cosine of each query position with the shots' mean masked-average prototype.

    ``query`` ``[B, C, h, w]``, ``supports`` K tensors ``[B, C, h, w]``, ``masks``
    ``[B, K, H, W]`` with labels 0/1/255 at image size. Returns ``[B, 1, h, w]`` in [-1, 1].
    """
    protos = [support_prototype(feat, masks[:, k : k + 1]) for k, feat in enumerate(supports)]
    return prototype_cosine(query, protos)


def similarity(method: str, query: Tensor, supports: Sequence[Tensor], masks: Tensor) -> Tensor:
    """``[B, 1, h, w]`` similarity of the query positions to the supports' foreground."""
    if method == "prototype":
        return prototype_similarity(query, supports, masks)
    if method == "prior":
        fg = (masks == 1).flatten(0, 1).unsqueeze(1).to(query.dtype)  # [B*K, 1, H, W]
        return prior_similarity(query, torch.stack(list(supports), 1).flatten(0, 1), fg)
    raise ValueError(f"baseline method must be one of {METHODS}, got {method!r}")


class BaselineScorer:
    """Scores a training-free baseline on the episodes of one fold list (``mode`` 'val': the
    novel classes, as the evaluator; 'train': the base classes of the training list).

    The episodes of all seeds are scored query image by query image: each query image is
    encoded once, scores every episode it is the query of at every threshold, and is dropped;
    each (support image, class) is encoded once and only what the method reads is kept (the
    prototype method: one C-vector; the prior method: the support's map of the chosen layer).
    So the memory held is one query map plus the supports' reductions, whatever the episode
    count, and the backbone passes are one per distinct image.
    """

    def __init__(
        self,
        encoder: HDMNet,
        root: Path,
        fold_dir: Path,
        mode: str,
        shot: int,
        image_size: int,
        annotation: str = "mask",
    ) -> None:
        self.encoder = encoder.eval()
        self.root = Path(root)
        self.fold_dir = Path(fold_dir)
        self.mode = mode
        self.shot = shot
        self.transform = EvalTransform(image_size)
        self.annotation = annotation
        self._supports: dict[tuple[str, int, str, str], tuple[Tensor, Tensor | None]] = {}
        self.encodings = 0

    def _query(self, item: ListItem, classes: int) -> tuple[Features, np.ndarray]:
        image, mask = load_pair(self.root, item, classes)
        tensor, _ = self.transform(image, [])
        feats = self.encoder.encode_query(torch.from_numpy(tensor)[None])
        self.encodings += 1
        return feats, mask

    def _support(
        self, item: ListItem, class_id: int, classes: int, method: str, layer: str
    ) -> tuple[Tensor, Tensor | None]:
        """What ``method`` reads from a support: (prototype, None) or (layer map, mask)."""
        key = (item.image, class_id, method, layer)
        if key not in self._supports:
            image, mask = load_pair(self.root, item, classes)
            label = binary_mask(mask, class_id)
            if self.annotation == "bbox":
                label = bbox_mask(label)
            tensor, (resized,) = self.transform(image, [label])
            mask_t = torch.from_numpy(resized.astype(np.int64))[None]
            feats = self.encoder.encode_support(torch.from_numpy(tensor)[None], mask_t)
            feat = getattr(feats, layer)
            if method == "prototype":
                self._supports[key] = (support_prototype(feat, mask_t[:, None]), None)
            else:
                self._supports[key] = (feat, mask_t)
            self.encodings += 1
        return self._supports[key]

    @torch.inference_mode()
    def sweep(
        self,
        method: str,
        layer: str,
        seeds: Sequence[int],
        episodes: int,
        thresholds: Sequence[float],
    ) -> dict[float, dict[str, Any]]:
        """Per threshold: mean and standard deviation over ``seeds`` of mIoU and FB-IoU (%),
        the per-seed values and the per-class IoU (mean over seeds), as the evaluator's
        records hold them."""
        if layer not in LAYERS:
            raise ValueError(f"baseline layer must be one of {LAYERS}, got {layer!r}")
        if method not in METHODS:
            raise ValueError(f"baseline method must be one of {METHODS}, got {method!r}")
        datasets = {
            seed: EpisodeDataset(
                self.root,
                self.fold_dir,
                self.mode,
                self.shot,
                self.transform,
                num_episodes=episodes,
                seed=seed,
                annotation=self.annotation,
            )
            for seed in seeds
        }
        first = next(iter(datasets.values()))
        classes, num_classes = tuple(first.classes), first.num_classes
        meters = {
            float(t): {seed: FewShotMeter(len(classes)) for seed in seeds} for t in thresholds
        }
        # Episodes are pure functions of (seed, index): group them by query image first.
        by_query: dict[str, list[tuple[int, Recipe]]] = {}
        for seed, dataset in datasets.items():
            for index in range(episodes):
                recipe = dataset.episode_recipe(index)
                by_query.setdefault(recipe.query.image, []).append((seed, recipe))
        for group in by_query.values():
            query, query_mask = self._query(group[0][1].query, num_classes)
            query_map = getattr(query, layer)
            for seed, recipe in group:
                kept = [
                    self._support(item, recipe.class_id, num_classes, method, layer)
                    for item in recipe.supports
                ]
                if method == "prototype":
                    sim = prototype_cosine(query_map, [proto for proto, _ in kept])
                else:
                    masks = torch.stack([mask for _, mask in kept], 1)  # [1, K, H, W]
                    sim = similarity(method, query_map, [feat for feat, _ in kept], masks)
                label = binary_mask(query_mask, recipe.class_id)
                sim = upsample_to_label(sim, label.shape)[0, 0]
                label_t = torch.from_numpy(label.astype(np.int64))
                class_index = classes.index(recipe.class_id)
                for t, per_seed in meters.items():
                    per_seed[seed].update(class_index, (sim > t).long(), label_t)
            del query, query_map
        return {t: summarise_seeds(per_seed, classes) for t, per_seed in meters.items()}

    @property
    def kept_bytes(self) -> int:
        """Memory held for the supports (prototypes, or maps and masks)."""
        return sum(t.nbytes for kept in self._supports.values() for t in kept if t is not None)


def baseline_encoder(params: Params, run: Run) -> HDMNet:
    """An HDMNet for ``run`` holding the base learner its meta-training starts from (only the
    frozen encoder is used), checked as ``hdmnet train`` checks it."""
    model = HDMNet.from_config(params.for_variant(run.variant), run)
    path = layout.base_checkpoint(params, run.base)
    remake = commands.train_base(run.base, params)
    if not path.exists():
        raise StageError(f"base learner {path} not found: train it first ({remake})")
    try:
        loaded = load_checkpoint(
            path, model, expected=base_cell(run.dataset, run.backbone, run.fold)
        )
    except CheckpointError as error:
        raise StageError(str(error)) from None
    require_identity(path, loaded["meta"], identity.base_learner(params, run.base), remake)
    return model.eval()


def evaluate_baseline(
    params: Params,
    run: Run,
    method: str = "prototype",
    layer: str = "layer4",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    encoder: HDMNet | None = None,
) -> dict[str, Any]:
    """The baseline of ``run``: its threshold chosen on ``meta.<dataset>.val_episodes``
    base-class episodes of the fold's training list (the run's training seed), then scored on
    the evaluator's test episodes (``eval.seeds`` x ``meta.<dataset>.test_episodes``).

    ``encoder``: an HDMNet of ``run`` whose frozen encoder is the run's base learner (the
    evaluator passes the model it tests, whose checkpoint holds that encoder); default: one
    loaded from the base learner's checkpoint. Returns the method, layer and threshold, the
    test summary at that threshold (``test``), the tuning mIoU per threshold and the test mIoU
    per threshold (``sweep_miou``).
    """
    if method not in METHODS:
        raise ValueError(f"baseline method must be one of {METHODS}, got {method!r}")
    variant = params.for_variant(run.variant)
    schedule = getattr(variant.meta, run.dataset)
    encoder = baseline_encoder(params, run) if encoder is None else encoder
    root = dataset_root(params, run.dataset)

    def scorer(mode: str, fold_dir: Path) -> BaselineScorer:
        return BaselineScorer(
            encoder,
            root,
            fold_dir,
            mode,
            run.shot,
            schedule.image_size,
            annotation=params.eval.support_annotation,
        )

    # Training lists follow the variant's exclusion rule; test lists never depend on it.
    train_dir = fold_folder(variant, run.dataset, run.fold)
    tuning = scorer("train", train_dir).sweep(
        method, layer, [0 if run.seed is None else run.seed], schedule.val_episodes, thresholds
    )
    chosen = max(tuning, key=lambda t: tuning[t]["miou"])
    test = scorer("val", fold_folder(params, run.dataset, run.fold)).sweep(
        method, layer, params.eval.seeds, schedule.test_episodes, thresholds
    )
    return {
        "method": method,
        "layer": layer,
        "threshold": chosen,
        "test": test[chosen],
        "tuning_miou": {t: r["miou"] for t, r in tuning.items()},
        "sweep_miou": {t: r["miou"] for t, r in test.items()},
    }


def baseline_section(result: dict[str, Any]) -> dict[str, Any]:
    """``evaluate_baseline``'s result as the metrics record's ``baseline`` section: the test
    summary at the chosen threshold at the top (``miou``, ``fbiou``, their spreads, ``per_seed``,
    ``class_iou``, as the record's outputs), then how the threshold was chosen."""
    return {
        "what": f"training-free baseline: {DESCRIPTIONS[result['method']]} on the base "
        f"learner's {result['layer']} features, foreground above a cosine threshold chosen on "
        "base-class episodes of the training list; the evaluator's test episodes",
        **result["test"],
        **{key: result[key] for key in ("method", "layer", "threshold")},
        "tuning_miou": {str(t): v for t, v in result["tuning_miou"].items()},
        "sweep_miou": {str(t): v for t, v in result["sweep_miou"].items()},
    }


__all__ = [
    "DEFAULT_THRESHOLDS",
    "DESCRIPTIONS",
    "LAYERS",
    "METHODS",
    "BaselineScorer",
    "baseline_encoder",
    "baseline_section",
    "evaluate_baseline",
    "prototype_cosine",
    "prototype_similarity",
    "similarity",
    "support_prototype",
]
