"""Class lists and the VOC palette match the official facts."""

from __future__ import annotations

import numpy as np
import pytest

from hdmnet.data.classes import (
    COCO_CATEGORIES,
    COCO_IDS,
    VOC_CLASSES,
    VOC_PALETTE,
    coco_label_of,
)

# 1-11, 13-25, 27, 28, 31-44, 46-65, 67, 70, 72-82, 84-90
OFFICIAL_COCO_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66)]
OFFICIAL_COCO_IDS += [67, 70, *range(72, 83), *range(84, 91)]


def test_voc_classes_in_label_order() -> None:
    assert len(VOC_CLASSES) == 20
    assert VOC_CLASSES[0] == "aeroplane"
    assert VOC_CLASSES[14] == "person"
    assert VOC_CLASSES[19] == "tvmonitor"
    assert len(set(VOC_CLASSES)) == 20


def test_voc_palette_known_entries() -> None:
    assert VOC_PALETTE.shape == (256, 3)
    assert VOC_PALETTE.dtype == np.uint8
    assert VOC_PALETTE[0].tolist() == [0, 0, 0]
    assert VOC_PALETTE[1].tolist() == [128, 0, 0]
    assert VOC_PALETTE[15].tolist() == [192, 128, 128]  # person
    assert VOC_PALETTE[20].tolist() == [0, 64, 128]  # tvmonitor
    assert VOC_PALETTE[255].tolist() == [224, 224, 192]  # void border
    assert len({tuple(c) for c in VOC_PALETTE.tolist()}) == 256
    with pytest.raises(ValueError):
        VOC_PALETTE[0, 0] = 1


def test_coco_categories_are_the_official_80() -> None:
    assert [c["id"] for c in COCO_CATEGORIES] == OFFICIAL_COCO_IDS
    assert list(COCO_IDS) == OFFICIAL_COCO_IDS
    by_id = {c["id"]: c for c in COCO_CATEGORIES}
    assert by_id[1] == {"id": 1, "name": "person", "supercategory": "person"}
    assert by_id[13]["name"] == "stop sign"
    assert by_id[37]["name"] == "sports ball"
    assert by_id[67] == {"id": 67, "name": "dining table", "supercategory": "furniture"}
    assert by_id[90] == {"id": 90, "name": "toothbrush", "supercategory": "indoor"}
    assert len({c["name"] for c in COCO_CATEGORIES}) == 80
    supercategories = {c["supercategory"] for c in COCO_CATEGORIES}
    assert len(supercategories) == 12


def test_coco_label_mapping() -> None:
    assert coco_label_of(1) == 1
    assert coco_label_of(13) == 12  # 12 is not a category, so 13 is the 12th
    assert coco_label_of(90) == 80
    with pytest.raises(ValueError, match="12 is not one of the 80"):
        coco_label_of(12)
