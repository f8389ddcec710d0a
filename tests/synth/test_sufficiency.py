"""The default data sets support every fold of PASCAL-5i and COCO-20i (FWB and PANet) at 1 and
5 shots, checked with the protocol's list rules on masks read back from the archives."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hdmnet.data.classes import coco_label_of

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

THRESHOLD = 2 * 32 * 32
NEEDED = 6  # 5 supports + 1 query, all distinct images


def class_pixels(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """Pixels of each class 1..n (index 0 unused); 0 and 255 are not classes."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return counts[: n_classes + 1].copy()


def pascal_counts(pascal) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-image class pixel counts of the PASCAL training list and the validation list."""
    voc_train, voc_val = pascal.voc_list("train"), pascal.voc_list("val")
    has_voc = set(voc_train) | set(voc_val)
    train = {}
    for image_id in sorted(set(voc_train) | set(pascal.train_noval)):
        # The VOC mask (with 255 borders) is preferred where VOC has one.
        mask = pascal.voc_mask(image_id) if image_id in has_voc else pascal.sbd_mask(image_id)
        train[image_id] = class_pixels(mask, 20)
    val = {image_id: class_pixels(pascal.voc_mask(image_id), 20) for image_id in voc_val}
    return train, val


def coco_counts(coco, split: str) -> dict[int, np.ndarray]:
    """Per-image class pixel counts of a COCO split, all annotations rasterised into one mask."""
    doc = coco.document(split)
    sizes = {image["id"]: (image["height"], image["width"]) for image in doc["images"]}
    masks = {image_id: np.zeros(size, dtype=np.uint8) for image_id, size in sizes.items()}
    for ann in doc["annotations"]:
        h, w = sizes[ann["image_id"]]
        segmentation = ann["segmentation"]
        rle = mask_utils.frPyObjects(segmentation, h, w)
        if isinstance(segmentation, list):
            rle = mask_utils.merge(rle)
        masks[ann["image_id"]][mask_utils.decode(rle).astype(bool)] = coco_label_of(
            ann["category_id"]
        )
    return {image_id: class_pixels(mask, 80) for image_id, mask in masks.items()}


def fold_shortfalls(
    train: dict, val: dict, novel_sets: list[set[int]], n_classes: int
) -> list[str]:
    """Every (fold, class, split) that has fewer than NEEDED qualifying images."""
    problems = []
    for fold, novel in enumerate(novel_sets):
        base = [c for c in range(1, n_classes + 1) if c not in novel]
        kept = [px for px in train.values() if not any(px[c] > 0 for c in novel)]
        for c in base:
            n = sum(px[c] >= THRESHOLD for px in kept)
            if n < NEEDED:
                problems.append(f"fold {fold}: base class {c} has {n} training images")
        for c in sorted(novel):
            n = sum(px[c] >= THRESHOLD for px in val.values())
            if n < NEEDED:
                problems.append(f"fold {fold}: novel class {c} has {n} validation images")
    return problems


def summary(name: str, counts: dict) -> str:
    per_class = np.sum([px >= THRESHOLD for px in counts.values()], axis=0)[1:]
    present = np.sum([px > 0 for px in counts.values()], axis=0)[1:]
    return (
        f"{name}: {len(counts)} images; images per class with >= {THRESHOLD} px "
        f"min {per_class.min()} median {int(np.median(per_class))} max {per_class.max()}; "
        f"containing the class min {present.min()} max {present.max()}"
    )


def test_fold_rule_catches_a_shortfall() -> None:
    """The checker itself: a class seen in only 5 large images is reported."""
    px = np.zeros(21, dtype=np.int64)
    px[1] = THRESHOLD
    val = {i: px for i in range(5)}
    train = {i: px for i in range(10)}
    problems = fold_shortfalls(train, val, [{1, 2, 3, 4, 5}], 20)
    assert "fold 0: novel class 1 has 5 validation images" in problems
    assert "fold 0: base class 6 has 0 training images" in problems


def test_pascal_every_fold_has_enough_images(default_pascal) -> None:
    train, val = pascal_counts(default_pascal)
    novel_sets = [set(range(5 * i + 1, 5 * i + 6)) for i in range(4)]
    assert fold_shortfalls(train, val, novel_sets, 20) == []
    print("\n" + summary("PASCAL train list", train) + "\n" + summary("PASCAL val", val))


@pytest.mark.parametrize("scheme", ["fwb", "panet"])
def test_coco_every_fold_has_enough_images(default_coco, scheme: str) -> None:
    train, val = coco_counts(default_coco, "train"), coco_counts(default_coco, "val")
    if scheme == "fwb":
        novel_sets = [{4 * k + i + 1 for k in range(20)} for i in range(4)]
    else:
        novel_sets = [set(range(20 * i + 1, 20 * i + 21)) for i in range(4)]
    assert fold_shortfalls(train, val, novel_sets, 80) == []
    print("\n" + summary("COCO train", train) + "\n" + summary("COCO val", val))


def test_class_frequencies_are_imbalanced(default_pascal, default_coco) -> None:
    """Some classes are clearly more frequent than others (as in the real data sets)."""
    train, _ = pascal_counts(default_pascal)
    present = np.sum([px > 0 for px in train.values()], axis=0)[1:]
    assert present.max() >= 3 * present.min()
    assert int(np.argmax(present)) + 1 == 15  # person, as in VOC
    coco_present = np.sum([px > 0 for px in coco_counts(default_coco, "train").values()], axis=0)
    assert coco_present[1:].max() >= 4 * coco_present[1:].min()
    assert int(np.argmax(coco_present[1:])) + 1 == 1  # person, as in COCO
