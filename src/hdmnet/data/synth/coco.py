"""COCO 2014 stand-ins: ``train2014.zip``, ``val2014.zip`` and ``annotations_trainval2014.zip``.

Annotations follow the official instances schema. Each annotation describes the visible part of
one rendered instance: ordinary instances as polygons (outer contours of the visible pixels,
possibly several when occlusion splits them), crowd clusters as uncompressed RLE, the way COCO
stores crowd regions. Some images have no annotation at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import scipy.ndimage
from pycocotools import mask as mask_utils

from hdmnet.data.classes import COCO_CATEGORIES, COCO_IDS
from hdmnet.data.synth.config import SynthConfig
from hdmnet.data.synth.looks import make_looks
from hdmnet.data.synth.pack import ZipWriter
from hdmnet.data.synth.pascal import encode_jpeg
from hdmnet.data.synth.scene import (
    ObjectSpec,
    Scene,
    class_weights,
    image_size,
    plan_split,
    render_scene,
)
from hdmnet.fileio import atomic_path
from hdmnet.progress import progress

TRAIN_ZIP = "train2014.zip"
VAL_ZIP = "val2014.zip"
ANNOTATIONS_ZIP = "annotations_trainval2014.zip"
ZIP_DATE = (2014, 8, 16, 0, 0, 0)
MAX_IMAGE_ID = 581929  # the largest COCO 2014 image id
INFO = {
    "description": "COCO 2014 Dataset (generated stand-in, official layout)",
    "url": "http://cocodataset.org",
    "version": "1.0",
    "year": 2014,
    "contributor": "COCO Consortium",
    "date_created": "2017/09/01",
}
LICENSES = [
    (1, "Attribution-NonCommercial-ShareAlike License", "by-nc-sa/2.0/"),
    (2, "Attribution-NonCommercial License", "by-nc/2.0/"),
    (3, "Attribution-NonCommercial-NoDerivs License", "by-nc-nd/2.0/"),
    (4, "Attribution License", "by/2.0/"),
    (5, "Attribution-ShareAlike License", "by-sa/2.0/"),
    (6, "Attribution-NoDerivs License", "by-nd/2.0/"),
]
#: Contours are traced on a 2x nearest-upsampled mask: the outline then runs along pixel edges
#: and rasterises back (pycocotools) to the same pixels; the simplification tolerance below is
#: a third of a pixel, so decoded masks match rendered ones to about 99 % IoU.
CONTOUR_SCALE = 2
CONTOUR_OFFSET = 0.25
CONTOUR_EPS = 0.7


def coco_groups() -> list[list[int]]:
    """Labels 1..80 grouped so each group is novel together in both FWB and PANet folds."""
    return [
        [c for c in range(1, 81) if (c - 1) % 4 == residue and (c - 1) // 20 == block]
        for block in range(4)
        for residue in range(4)
    ]


def plan_coco(config: SynthConfig) -> dict[str, dict[int, list[ObjectSpec]]]:
    """Image ids and object plans of both splits: ``{'train': {id: specs}, 'val': {...}}``."""
    rng = np.random.default_rng([config.seed, 21])
    ids = rng.choice(MAX_IMAGE_ID, size=config.coco_train + config.coco_val, replace=False) + 1
    train_ids = sorted(int(i) for i in ids[: config.coco_train])
    val_ids = sorted(int(i) for i in ids[config.coco_train :])
    weights = class_weights(len(COCO_IDS), config.class_imbalance, rng, top=1)
    common = {
        "weights": weights,
        "max_classes": config.coco_max_classes,
        "duplicate_prob": config.duplicate_prob,
        "empty_prob": config.coco_empty_prob,
        "crowd_prob": config.coco_crowd_prob,
        "anchors_per_class": config.anchors_per_class,
    }
    plans = {}
    for split, split_ids, groups in (("train", train_ids, coco_groups()), ("val", val_ids, None)):
        specs = plan_split(
            rng, len(split_ids), groups=groups, split_name=f"COCO {split}2014", **common
        )
        plans[split] = dict(zip(split_ids, specs, strict=True))
    return plans


def render_coco_image(config: SynthConfig, image_id: int, specs: list[ObjectSpec]) -> Scene:
    """Render one COCO image; the same (config, id, plan) always gives the same scene."""
    looks = make_looks(np.random.default_rng([config.seed, 20]), len(COCO_IDS))
    return _render(config, looks, image_id, specs)


def _render(config: SynthConfig, looks: list, image_id: int, specs: list[ObjectSpec]) -> Scene:
    rng = np.random.default_rng([config.seed, 22, image_id])
    size = image_size(rng, config.image_side_range)
    return render_scene(rng, size, specs, looks, config.min_visible, config.voc_border_width)


def polygons_of(mask: np.ndarray, origin: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """COCO polygons (flat x, y lists) of the outer contours of a binary mask."""
    scaled = cv2.resize(
        mask.astype(np.uint8),
        (mask.shape[1] * CONTOUR_SCALE, mask.shape[0] * CONTOUR_SCALE),
        interpolation=cv2.INTER_NEAREST,
    )
    # One pixel of padding so contours touching the crop edge stay closed outlines.
    scaled = np.pad(scaled, 1)
    contours, _ = cv2.findContours(scaled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        simple = cv2.approxPolyDP(contour, CONTOUR_EPS, True).reshape(-1, 2).astype(np.float64)
        if len(simple) < 3:
            continue
        simple = (simple - 1 + CONTOUR_OFFSET) / CONTOUR_SCALE + origin
        polygons.append(np.round(simple.ravel(), 2).tolist())
    return polygons


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def annotations_of(scene: Scene, image_id: int, first_id: int) -> list[dict]:
    """Instance annotations of one scene, ids counting up from ``first_id``."""
    h, w = scene.inst.shape
    annotations = []
    slices = scipy.ndimage.find_objects(scene.inst)
    for index, (label, crowd) in enumerate(zip(scene.labels, scene.crowd, strict=True), start=1):
        box = slices[index - 1] if index - 1 < len(slices) else None
        if box is None:
            continue
        if crowd:
            full = scene.inst == index
            segmentation: dict | list = uncompressed_rle(full)
            rle = mask_utils.frPyObjects(segmentation, h, w)
        else:
            local = scene.inst[box] == index
            segmentation = polygons_of(local, (box[1].start, box[0].start))
            if not segmentation:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
        area = float(mask_utils.area(rle))
        if area <= 0:
            continue
        annotations.append(
            {
                "segmentation": segmentation,
                "area": area,
                "iscrowd": int(crowd),
                "image_id": image_id,
                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                "category_id": COCO_IDS[label - 1],
                "id": first_id + len(annotations),
            }
        )
    return annotations


def write_coco(
    out_dir: Path, config: SynthConfig, plans: dict[str, dict[int, list[ObjectSpec]]] | None = None
) -> dict[str, int]:
    """Write the three COCO 2014 zips into ``out_dir``; return split sizes.

    ``plans`` is ``plan_coco(config)``, computed here when not given.
    """
    plans = plans if plans is not None else plan_coco(config)
    looks = make_looks(np.random.default_rng([config.seed, 20]), len(COCO_IDS))
    documents = {}
    next_ann_id = 1
    sizes: dict[str, int] = {}
    for split, archive in (("train", TRAIN_ZIP), ("val", VAL_ZIP)):
        folder = f"{split}2014"
        images, annotations = [], []
        with atomic_path(out_dir / archive) as tmp, ZipWriter(tmp, ZIP_DATE) as zipped:
            zipped.add_dir(folder)
            split_plans = plans[split]
            for image_id in progress(split_plans, total=len(split_plans), desc=f"COCO {folder}"):
                scene = _render(config, looks, image_id, split_plans[image_id])
                file_name = f"COCO_{folder}_{image_id:012d}.jpg"
                zipped.add_file(
                    f"{folder}/{file_name}", encode_jpeg(scene.image, config.jpeg_quality)
                )
                h, w = scene.inst.shape
                images.append(_image_entry(config, image_id, file_name, folder, h, w))
                found = annotations_of(scene, image_id, next_ann_id)
                next_ann_id += len(found)
                annotations += found
        documents[f"annotations/instances_{folder}.json"] = {
            "info": INFO,
            "images": images,
            "licenses": [
                {"url": f"http://creativecommons.org/licenses/{url}", "id": i, "name": name}
                for i, name, url in LICENSES
            ],
            "annotations": annotations,
            "categories": [dict(cat) for cat in COCO_CATEGORIES],
        }
        sizes[f"{split}_images"] = len(images)
        sizes[f"{split}_annotations"] = len(annotations)
    with atomic_path(out_dir / ANNOTATIONS_ZIP) as tmp, ZipWriter(tmp, ZIP_DATE) as zipped:
        for name, document in documents.items():
            text = json.dumps(document, separators=(",", ":"))
            zipped.add_file(name, text.encode(), compress=True)
    return sizes


def _image_entry(
    config: SynthConfig, image_id: int, file_name: str, folder: str, h: int, w: int
) -> dict:
    rng = np.random.default_rng([config.seed, 23, image_id])
    day, second = int(rng.integers(0, 365)), int(rng.integers(0, 86400))
    date = np.datetime64("2013-01-01") + np.timedelta64(day, "D")
    captured = f"{date} {second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
    return {
        "license": int(rng.integers(1, len(LICENSES) + 1)),
        "file_name": file_name,
        "coco_url": f"http://images.cocodataset.org/{folder}/{file_name}",
        "height": h,
        "width": w,
        "date_captured": captured,
        "id": image_id,
    }
