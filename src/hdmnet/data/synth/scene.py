"""Scene planning (which classes go in which image) and rendering (image + instance map together).

Plans guarantee the few-shot list rules can be met for every fold: each class is the *anchor* of a
fixed number of images, where it is drawn large and on top and is checked to keep more than the
2048-pixel threshold even after VOC's 255 borders are cut out. Training anchors share their image
only with classes of the same fold group (novel together in every fold scheme), so such an image
survives the "drop images with any novel class" rule exactly in the folds where its classes are
base. All other images are natural: imbalanced class frequencies, several classes, duplicates,
small objects, occlusion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from hdmnet.data.synth.looks import ClassLook, outline, paint_object, render_background

#: Few-shot list threshold (2 * 32 * 32 pixels) from the protocol.
LIST_THRESHOLD = 2048


@dataclass(frozen=True)
class ObjectSpec:
    """One planned object: its class label (1-based) and its role."""

    label: int
    anchor: bool = False  # must keep >= min_visible pixels of its class, borders excluded
    crowd: bool = False  # a cluster of small instances annotated as one crowd region (COCO)


@dataclass
class Scene:
    """A rendered image with its instance map; instance k (1-based) has class ``labels[k - 1]``."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    inst: np.ndarray  # H x W int32, 0 = background
    labels: list[int] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)

    def semantic(self) -> np.ndarray:
        """H x W uint8 class mask (0 background)."""
        lut = np.zeros(len(self.labels) + 1, dtype=np.uint8)
        lut[1:] = self.labels
        return lut[self.inst]

    def voc_mask(self, border_width: int) -> np.ndarray:
        """Class mask with VOC's 255 band of about ``border_width`` pixels on every object edge."""
        mask = self.semantic()
        mask[border_band(self.inst, border_width)] = 255
        return mask


def border_band(inst: np.ndarray, width: int) -> np.ndarray:
    """Pixels whose (width+1)-square neighbourhood holds two instance ids (a band ~width wide)."""
    if width <= 0:
        return np.zeros(inst.shape, dtype=bool)
    kernel = np.ones((width + 1, width + 1), dtype=np.uint8)
    ids = inst.astype(np.uint16)
    return cv2.dilate(ids, kernel) != cv2.erode(ids, kernel)


def class_weights(
    n_classes: int, exponent: float, rng: np.random.Generator, top: int
) -> np.ndarray:
    """Zipf-like class frequencies: label ``top`` (e.g. person) ranks first, the rest randomly."""
    others = [c for c in range(1, n_classes + 1) if c != top]
    order = [top, *(others[i] for i in rng.permutation(len(others)))]
    weights = np.zeros(n_classes + 1)
    for rank, label in enumerate(order, start=1):
        weights[label] = rank**-exponent
    return weights[1:] / weights[1:].sum()


def _pack_anchor_images(
    rng: np.random.Generator, pending: dict[int, int], max_per_image: int
) -> list[list[int]]:
    """Pack per-class anchor quotas into images of 1..max_per_image distinct classes."""
    images = []
    while any(pending.values()):
        open_classes = [c for c, n in pending.items() if n > 0]
        k = int(rng.choice(np.arange(1, max_per_image + 1), p=_k_probs(max_per_image)))
        k = min(k, len(open_classes))
        need = np.array([pending[c] for c in open_classes], dtype=float)
        chosen = rng.choice(open_classes, size=k, replace=False, p=need / need.sum())
        for c in chosen:
            pending[int(c)] -= 1
        images.append([int(c) for c in chosen])
    return images


def _k_probs(k_max: int) -> np.ndarray:
    probs = 0.6 ** np.arange(k_max)
    return probs / probs.sum()


def plan_split(
    rng: np.random.Generator,
    n_images: int,
    weights: np.ndarray,
    anchors_per_class: int,
    groups: Sequence[Sequence[int]] | None,
    max_classes: int,
    duplicate_prob: float,
    empty_prob: float = 0.0,
    crowd_prob: float = 0.0,
    split_name: str = "split",
) -> list[list[ObjectSpec]]:
    """Object lists of ``n_images`` images.

    ``groups``: for training splits, the fold groups (classes novel together in every scheme);
    anchors are then packed only with classes of their group. ``None`` (validation splits) packs
    any classes together, since validation lists have no intersection filter.
    """
    n_classes = len(weights)
    plans: list[list[ObjectSpec]] = []
    anchor_sets: list[list[int]] = []
    if anchors_per_class > 0:
        for group in groups if groups is not None else [range(1, n_classes + 1)]:
            pending = {int(c): anchors_per_class for c in group}
            anchor_sets += _pack_anchor_images(rng, pending, min(3, max_classes))
    if len(anchor_sets) > n_images:
        raise ValueError(
            f"{split_name}: {n_images} images cannot hold {anchors_per_class} anchor images per "
            f"class ({len(anchor_sets)} needed); raise the image count (synth.scale) or lower "
            "anchors_per_class"
        )
    labels = np.arange(1, n_classes + 1)
    for anchors in anchor_sets:
        specs = [ObjectSpec(c, anchor=True) for c in anchors]
        # Occasionally add a smaller companion of a class the image may legally hold.
        if rng.random() < 0.3:
            pool = anchors if groups is not None else labels
            specs.insert(0, ObjectSpec(int(rng.choice(pool))))
        plans.append(specs)
    for _ in range(n_images - len(anchor_sets)):
        if rng.random() < empty_prob:
            plans.append([])
            continue
        k = int(rng.choice(np.arange(1, max_classes + 1), p=_k_probs(max_classes)))
        chosen = [int(c) for c in rng.choice(labels, size=k, replace=False, p=weights)]
        specs = [ObjectSpec(c) for c in chosen]
        if rng.random() < duplicate_prob:
            specs.append(ObjectSpec(chosen[int(rng.integers(len(chosen)))]))
        if crowd_prob and rng.random() < crowd_prob:
            specs.insert(0, ObjectSpec(chosen[0], crowd=True))
        order = rng.permutation(len(specs))
        plans.append([specs[i] for i in order])
    order = rng.permutation(len(plans))
    return [plans[i] for i in order]


def image_size(rng: np.random.Generator, side_range: tuple[int, int]) -> tuple[int, int]:
    """(height, width): mostly landscape, never square, both sides within ``side_range``."""
    lo, hi = side_range
    long_side = int(rng.integers(max(lo + 1, int(lo + 0.4 * (hi - lo))), hi + 1))
    short_side = int(np.clip(round(long_side * rng.uniform(0.55, 0.95)), lo, long_side - 1))
    return (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)


def _place(
    rng: np.random.Generator,
    look: ClassLook,
    h: int,
    w: int,
    area: float,
    inside: bool,
) -> tuple[np.ndarray, float]:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    aspect = look.aspect * math.exp(rng.uniform(-0.25, 0.25))
    reach = 0.55 * math.sqrt(area) if inside else 0.0
    cx = rng.uniform(min(reach, w / 2), max(w - reach, w / 2)) if inside else rng.uniform(0, w)
    cy = rng.uniform(min(reach, h / 2), max(h - reach, h / 2)) if inside else rng.uniform(0, h)
    return outline(look, rng, area, (cx, cy), angle, aspect), angle


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    specs: Sequence[ObjectSpec],
    looks: Sequence[ClassLook],
    min_visible: int,
    border_width: int,
    max_tries: int = 60,
) -> Scene:
    """Paint background, then ordinary objects, then anchors on top; retry anchors until each
    anchor class keeps ``min_visible`` pixels outside the border band."""
    h, w = size
    full = float(h * w)
    image = render_background(rng, h, w)
    inst = np.zeros((h, w), dtype=np.int32)
    labels: list[int] = []
    crowd: list[bool] = []
    for spec in (s for s in specs if not s.anchor):
        look = looks[spec.label - 1]
        labels.append(spec.label)
        crowd.append(spec.crowd)
        if spec.crowd:
            # A tight cluster of small members, annotated later as a single crowd region.
            cx, cy = rng.uniform(0.2 * w, 0.8 * w), rng.uniform(0.2 * h, 0.8 * h)
            spread = rng.uniform(10, 30)
            for _ in range(int(rng.integers(4, 9))):
                centre = (cx + rng.normal(0, spread), cy + rng.normal(0, spread))
                angle = rng.uniform(0, 2 * math.pi)
                poly = outline(look, rng, rng.uniform(60, 260), centre, angle, look.aspect)
                paint_object(image, inst, len(labels), look, rng, poly, angle)
            continue
        area = math.exp(rng.uniform(math.log(100.0), math.log(max(200.0, 0.3 * full))))
        poly, angle = _place(rng, look, h, w, area, inside=False)
        paint_object(image, inst, len(labels), look, rng, poly, angle)
    anchors = [s for s in specs if s.anchor]
    base_image, base_inst = image, inst
    for _attempt in range(max_tries):
        image, inst = base_image.copy(), base_inst.copy()
        anchor_ids = []
        for spec in anchors:
            look = looks[spec.label - 1]
            low = 1.6 * min_visible
            area = rng.uniform(low, max(1.3 * low, 0.3 * full))
            poly, angle = _place(rng, look, h, w, area, inside=True)
            anchor_ids.append(len(labels) + len(anchor_ids) + 1)
            paint_object(image, inst, anchor_ids[-1], look, rng, poly, angle)
        scene = Scene(
            image, inst, labels + [s.label for s in anchors], crowd + [False] * len(anchors)
        )
        if not anchors:
            break
        sem = scene.semantic()
        inner = ~border_band(inst, border_width)
        if all(int(((sem == s.label) & inner).sum()) >= min_visible for s in anchors):
            break
    else:
        raise RuntimeError(
            f"could not place anchors {[s.label for s in anchors]} with {min_visible} visible "
            f"pixels in a {h}x{w} image after {max_tries} tries; enlarge the image side range"
        )
    return _finish(scene)


def _finish(scene: Scene) -> Scene:
    """Round the image to uint8 and drop instances that ended up fully hidden."""
    image = np.clip(np.rint(scene.image), 0, 255).astype(np.uint8)
    present = np.bincount(scene.inst.ravel(), minlength=len(scene.labels) + 1)[1:] > 0
    remap = np.zeros(len(scene.labels) + 1, dtype=np.int32)
    remap[1:][present] = np.arange(1, int(present.sum()) + 1)
    labels = [lab for lab, keep in zip(scene.labels, present, strict=True) if keep]
    crowd = [flag for flag, keep in zip(scene.crowd, present, strict=True) if keep]
    return Scene(image, remap[scene.inst], labels, crowd)
