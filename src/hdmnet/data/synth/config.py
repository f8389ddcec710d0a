"""Sizes and knobs of the generated data sets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from hdmnet.data.synth.scene import LIST_THRESHOLD


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes the generated archives; the same config gives the same bytes.

    Defaults generate PASCAL (VOC + SBD) and COCO 2014 stand-ins in well under a minute, with at
    least ``anchors_per_class`` qualifying images per class and split (see ``scene.plan_split``).
    """

    seed: int = 0
    image_side_range: tuple[int, int] = (160, 320)  # COCO 2014
    # PASCAL images are drawn near the demo's 129 px input, so class textures survive the resize
    # and base-learner crops see objects at the scale they are tested at.
    voc_side_range: tuple[int, int] = (128, 224)
    jpeg_quality: int = 90
    # PASCAL VOC 2012 segmentation sets and SBD.
    voc_train: int = 300
    voc_val: int = 150
    voc_unlabelled: int = 20  # JPEGImages without any mask (VOC detection-only images)
    sbd_images: int = 500
    sbd_from_voc_train: int = 120  # SBD images that are also VOC seg train images
    sbd_from_voc_val: int = 45  # SBD images that are also VOC seg val images
    sbd_val_fraction: float = 0.3
    voc_max_classes: int = 3
    voc_border_width: int = 3
    # COCO 2014.
    coco_train: int = 1000
    coco_val: int = 500
    coco_max_classes: int = 4
    coco_empty_prob: float = 0.03
    coco_crowd_prob: float = 0.05
    # Shared content knobs.
    anchors_per_class: int = 8
    min_visible: int = LIST_THRESHOLD + 250  # anchor pixels kept outside the 255 band
    duplicate_prob: float = 0.25
    class_imbalance: float = 0.8  # Zipf exponent of the class frequencies

    def __post_init__(self) -> None:
        for name in ("image_side_range", "voc_side_range"):
            lo, hi = getattr(self, name)
            if not 64 <= lo < hi:
                raise ValueError(f"{name} must be (lo, hi) with 64 <= lo < hi, got {lo, hi}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        counts = {
            name: getattr(self, name)
            for name in (
                "voc_train",
                "voc_val",
                "voc_unlabelled",
                "sbd_images",
                "sbd_from_voc_train",
                "sbd_from_voc_val",
                "coco_train",
                "coco_val",
                "anchors_per_class",
                "voc_border_width",
            )
        }
        for name, value in counts.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.sbd_from_voc_train > self.voc_train:
            raise ValueError(
                f"sbd_from_voc_train={self.sbd_from_voc_train} exceeds voc_train={self.voc_train}"
            )
        if self.sbd_from_voc_val > self.voc_val:
            raise ValueError(
                f"sbd_from_voc_val={self.sbd_from_voc_val} exceeds voc_val={self.voc_val}"
            )
        if self.sbd_from_voc_train + self.sbd_from_voc_val > self.sbd_images:
            raise ValueError(
                f"sbd_images={self.sbd_images} is smaller than sbd_from_voc_train + "
                f"sbd_from_voc_val = {self.sbd_from_voc_train + self.sbd_from_voc_val}"
            )
        for name in ("sbd_val_fraction", "coco_empty_prob", "coco_crowd_prob", "duplicate_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("voc_max_classes", "coco_max_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_visible < 1:
            raise ValueError(f"min_visible must be >= 1, got {self.min_visible}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SynthConfig:
        """Config from a mapping such as ``params.yaml`` or a manifest's ``config`` (lists ok)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SynthConfig keys {unknown}; known keys: {sorted(known)}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)


#: Image counts that ``synth.scale`` multiplies.
SCALED_COUNTS = (
    "voc_train",
    "voc_val",
    "voc_unlabelled",
    "sbd_images",
    "sbd_from_voc_train",
    "sbd_from_voc_val",
    "coco_train",
    "coco_val",
)


def synth_config(synth: Any) -> SynthConfig:
    """``SynthConfig`` from the ``synth`` block of params.yaml (``seed``, ``scale``).

    ``scale`` multiplies every image count of the defaults. The per-class anchor quota shrinks
    with it (8 at scale 1, never below 2): from scale 0.75 up, every class keeps the 6 images per
    split and fold that 5-shot episodes need; smaller scales still give 1-shot episodes, and
    scales too small even for that are refused by the planner with the split named.
    """
    values = synth if isinstance(synth, Mapping) else vars(synth)
    seed, scale = values.get("seed", 0), values.get("scale", 1.0)
    if not isinstance(scale, int | float) or scale <= 0:
        raise ValueError(f"synth.scale must be a positive number, got {scale!r}")
    base = SynthConfig()
    counts = {name: max(1, round(getattr(base, name) * scale)) for name in SCALED_COUNTS}
    counts["voc_unlabelled"] = round(base.voc_unlabelled * scale)
    anchors = min(base.anchors_per_class, max(2, round(base.anchors_per_class * scale)))
    return replace(base, seed=int(seed), anchors_per_class=anchors, **counts)
