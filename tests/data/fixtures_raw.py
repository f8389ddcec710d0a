"""Tiny raw trees in the real VOC/SBD/COCO layouts, with the masks the conversion must produce."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from pycocotools import mask as mask_utils


def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> None:
    """A small noisy RGB JPEG of the given size."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)


def write_voc_png(path: Path, mask: np.ndarray) -> None:
    """A palette ('P') PNG whose indices are ``mask``, like VOC SegmentationClass."""
    # Any palette will do: the indices are the labels. This one makes 255 white like VOC.
    palette = [(i * 37) % 256 for i in range(256 * 3)]
    palette[255 * 3 : 256 * 3] = [224, 224, 192]
    image = Image.frombytes("P", mask.shape[::-1], mask.astype(np.uint8).tobytes())
    image.putpalette(palette)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_sbd_mat(path: Path, mask: np.ndarray) -> None:
    """An SBD-style ``cls/*.mat``: struct GTcls with fields Segmentation and CategoriesPresent."""
    present = np.array([v for v in np.unique(mask) if 0 < v < 255], dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        path, {"GTcls": {"Segmentation": mask.astype(np.uint8), "CategoriesPresent": present}}
    )


def box_mask(height: int, width: int, boxes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """uint8 mask; each (x0, y0, x1, y1, value) fills [y0, y1) x [x0, x1) in order."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1, value in boxes:
        mask[y0:y1, x0:x1] = value
    return mask


def write_ids(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


# ----------------------------------------------------------------------------------------- PASCAL

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2008_000002", "2007_000039", "2008_000003", "2008_000008"]
SBD_VAL = ["2007_000033", "2008_000005"]
# SBD ids minus VOC val, in a deliberately unsorted order; 2008_000008 left out on purpose.
TRAIN_NOVAL = ["2008_000003", "2007_000039", "2008_000005", "2008_000002"]
EXPECTED_TRAIN = ["2007_000032", "2007_000039", "2008_000003", "2008_000005", "2008_000002"]


@dataclass
class PascalRaw:
    root: Path  # raw/pascal
    train_noval: Path
    voc_masks: dict[str, np.ndarray] = field(default_factory=dict)
    sbd_masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def voc(self) -> Path:
        return self.root / "VOCdevkit" / "VOC2012"

    @property
    def sbd(self) -> Path:
        return self.root / "benchmark_RELEASE" / "dataset"

    def expected_masks(self) -> dict[str, np.ndarray]:
        """VOC mask where VOC has one, else SBD's."""
        return {**self.sbd_masks, **self.voc_masks}


def build_pascal(base: Path) -> PascalRaw:
    """raw/pascal with VOC train/val 2+2, SBD train/val 4+2 (two shared with VOC), train_noval."""
    raw = PascalRaw(root=base / "raw" / "pascal", train_noval=base / "train_noval.txt")
    all_ids = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    sizes = {}
    for n, image_id in enumerate(all_ids):
        width, height = (40, 30) if n % 2 == 0 else (36, 28)
        sizes[image_id] = (width, height)
        write_jpeg(raw.voc / "JPEGImages" / f"{image_id}.jpg", width, height, seed=n)
        write_jpeg(raw.sbd / "img" / f"{image_id}.jpg", width, height, seed=n)
    for n, image_id in enumerate(VOC_TRAIN + VOC_VAL):
        width, height = sizes[image_id]
        cls = n + 1
        # Object with a 255 border, as VOC draws them.
        mask = box_mask(height, width, [(4, 4, 20, 18, 255), (5, 5, 19, 17, cls)])
        raw.voc_masks[image_id] = mask
        write_voc_png(raw.voc / "SegmentationClass" / f"{image_id}.png", mask)
    for n, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        width, height = sizes[image_id]
        cls = 20 - n  # differs from the VOC mask of the shared ids
        mask = box_mask(height, width, [(10, 3, 30, 25, cls)])
        raw.sbd_masks.setdefault(image_id, mask)
        write_sbd_mat(raw.sbd / "cls" / f"{image_id}.mat", mask)
    sets = raw.voc / "ImageSets" / "Segmentation"
    write_ids(sets / "train.txt", VOC_TRAIN)
    write_ids(sets / "val.txt", VOC_VAL)
    write_ids(sets / "trainval.txt", sorted(VOC_TRAIN + VOC_VAL))
    write_ids(raw.sbd / "train.txt", SBD_TRAIN)
    write_ids(raw.sbd / "val.txt", SBD_VAL)
    write_ids(raw.train_noval, TRAIN_NOVAL)
    return raw


# ------------------------------------------------------------------------------------------- COCO


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts: column-major run lengths, starting with a run of zeros."""
    flat = mask.astype(bool).flatten(order="F")
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def rect_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


# Official ids 1, 3, 90 -> labels 1, 2, 3.
COCO_CATEGORIES = [
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
]
W, H = 40, 30


@dataclass
class CocoRaw:
    root: Path  # raw/coco
    expected: dict[str, dict[str, np.ndarray]]  # split folder -> file stem -> mask
    sizes: dict[str, dict[str, tuple[int, int]]]

    def json_path(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"


def _image(split: str, image_id: int, width: int = W, height: int = H) -> dict:
    return {
        "id": image_id,
        "file_name": f"COCO_{split}_{image_id:012d}.jpg",
        "width": width,
        "height": height,
    }


def _ann(ann_id: int, image_id: int, category: int, segmentation, iscrowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "iscrowd": iscrowd,
        "area": 0.0,
        "bbox": [0, 0, 0, 0],
    }


def build_coco(base: Path) -> CocoRaw:
    """raw/coco: train (ids 30, 9, 25 in that JSON order) and val (42, 73).

    Train 9: small box (toothbrush, first annotation) on a big box (person) partly covered by a
    crowd region (car). Train 25: no annotation. Train 30: crowd only. Val 42: polygon car and a
    compressed-RLE person; val 73 (36x28): a person polygon with a degenerate 2-point ring.
    """
    root = base / "raw" / "coco"
    crowd = box_mask(H, W, [(24, 16, 36, 28, 1)])
    train_images = [_image("train2014", 30), _image("train2014", 9), _image("train2014", 25)]
    train_anns = [
        _ann(1, 9, 90, rect_polygon(10, 8, 16, 14)),
        _ann(2, 9, 1, rect_polygon(4, 4, 30, 24)),
        _ann(3, 9, 3, {"size": [H, W], "counts": rle_counts(crowd)}, iscrowd=1),
        _ann(4, 30, 1, {"size": [H, W], "counts": rle_counts(crowd)}, iscrowd=1),
    ]
    expected_train = {
        "COCO_train2014_000000000009": box_mask(
            H, W, [(24, 16, 36, 28, 255), (4, 4, 30, 24, 1), (10, 8, 16, 14, 3)]
        ),
        "COCO_train2014_000000000025": np.zeros((H, W), np.uint8),
        "COCO_train2014_000000000030": box_mask(H, W, [(24, 16, 36, 28, 255)]),
    }
    person = box_mask(H, W, [(0, 0, 12, 10, 1)])
    compressed = mask_utils.encode(np.asfortranarray(person))
    val_images = [_image("val2014", 73, 36, 28), _image("val2014", 42)]
    val_anns = [
        _ann(10, 42, 3, rect_polygon(20, 10, 38, 26)),
        _ann(11, 42, 1, {"size": [H, W], "counts": compressed["counts"].decode()}),
        _ann(12, 73, 1, [[1, 1, 5, 5], *rect_polygon(2, 3, 9, 20)]),
    ]
    expected_val = {
        "COCO_val2014_000000000042": box_mask(H, W, [(20, 10, 38, 26, 2), (0, 0, 12, 10, 1)]),
        "COCO_val2014_000000000073": box_mask(28, 36, [(2, 3, 9, 20, 1)]),
    }
    sizes: dict[str, dict[str, tuple[int, int]]] = {}
    for split, images, anns in (
        ("train2014", train_images, train_anns),
        ("val2014", val_images, val_anns),
    ):
        sizes[split] = {}
        for n, image in enumerate(images):
            write_jpeg(root / split / image["file_name"], image["width"], image["height"], seed=n)
            sizes[split][Path(image["file_name"]).stem] = (image["width"], image["height"])
        data = {
            "info": {},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": COCO_CATEGORIES,
        }
        path = root / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
    return CocoRaw(
        root=root, expected={"train2014": expected_train, "val2014": expected_val}, sizes=sizes
    )


def temp_files(folder: Path) -> list[Path]:
    """Leftover ``*.tmp`` files under ``folder``, not following symlinks into raw trees."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        found += [Path(dirpath) / name for name in filenames if name.endswith(".tmp")]
    return found
