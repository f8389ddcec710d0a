"""``prepare coco``: COCO 2014 instance annotations -> one semantic mask per image, and the lists.

Input (``raw_dir``): ``train2014/*.jpg``, ``val2014/*.jpg``,
``annotations/instances_{train,val}2014.json``.

Output (``out_dir``)::

    train2014, val2014 -> relative symlinks to the raw image folders (no copy)
    annotations/{train2014,val2014}/<image file stem>.png   'L' PNG, one per image in the JSON
    lists/{train,val}.txt   "train2014/<file>.jpg annotations/train2014/<stem>.png", ascending
                            image id, only images with at least one labelled pixel (not 0/255)
    lists/summary.json      counts and the category table

Labels: the JSON's categories sorted by ascending official id become 1..N (1..80 on the real
data: id 1 -> 1, ..., id 90 -> 80); 0 is background, 255 ignore. Train and val must agree.

Labelling rules (version ``RULES_VERSION``, stored in each PNG's ``hdmnet-coco-rules`` text chunk):

1. Crowd regions (``iscrowd=1``, RLE) are set to 255 (ignore): they hold many objects of the class
   with no clean extent, so they are neither positives nor background.
2. Non-crowd instances are painted over that in descending pixel area (ties: ascending
   annotation id), each overwriting what lies below. Where instances overlap the smaller one
   wins, so a small object lying on a large one (a cup on a table) stays visible, and a
   non-crowd instance overrides a crowd region's 255.
3. Polygons and RLE are decoded with pycocotools (pixel (x, y) is inside an axis-aligned polygon
   with integer corners x0..x1, y0..y1 when x0 <= x < x1 and y0 <= y < y1). Polygon rings with
   fewer than 3 points are skipped: they have no area, and pycocotools would read a 4-number
   ring as a box.

An image whose annotations leave no labelled pixel (none, crowd only, degenerate) still gets its
mask but is not listed; that is why the lists are a little shorter than the image sets.

Scale: the JSON of a split is loaded once in the parent, grouped per image, and each worker gets
only its image's annotations. Resumable: an existing mask is kept if it opens, has the JSON's
size, is 'L' with valid labels and carries the current rules version; otherwise it is rewritten.
Images are always checked (:mod:`hdmnet.data.prepare_common`) and against the JSON's size. Masks
are written via temp + rename; lists are removed at the start and written last.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from hdmnet.data.errors import DataError
from hdmnet.data.prepare_common import (
    jpeg_size,
    link_dir,
    remove_temp_files,
    write_label_png,
)
from hdmnet.fileio import write_json, write_text
from hdmnet.parallel import map_jobs, worker_pool

log = logging.getLogger(__name__)

IGNORE = 255
RULES_VERSION = "1"
RULES_KEY = "hdmnet-coco-rules"
# (image folder, annotation file, list name)
SPLITS = (
    ("train2014", "instances_train2014.json", "train"),
    ("val2014", "instances_val2014.json", "val"),
)
LIST_FILES = ("train.txt", "val.txt", "summary.json")


class Instance(NamedTuple):
    """What a worker needs of one annotation."""

    ann_id: int
    label: int  # 1..N
    iscrowd: bool
    segmentation: Any  # polygon rings (list of lists) or RLE dict


class _MaskJob(NamedTuple):
    image_id: int
    image: Path
    width: int
    height: int
    out: Path
    instances: tuple[Instance, ...]
    num_labels: int
    source: str  # the JSON file, for error messages


def category_labels(categories: list[dict[str, Any]], source: Path | str) -> dict[int, int]:
    """Map official category ids to labels 1..N in ascending id order."""
    try:
        ids = [int(category["id"]) for category in categories]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source}: malformed 'categories' entry ({exc!r})") from exc
    if len(set(ids)) != len(ids):
        raise DataError(f"{source}: duplicate category ids in 'categories'")
    if not ids or len(ids) >= IGNORE:
        raise DataError(f"{source}: {len(ids)} categories; need 1..{IGNORE - 1}")
    return {category_id: label for label, category_id in enumerate(sorted(ids), start=1)}


def decode_segmentation(
    segmentation: Any, height: int, width: int, where: str = "annotation"
) -> np.ndarray:
    """Decode polygon rings or an RLE (compressed or not) into a boolean HxW mask."""
    if isinstance(segmentation, list):
        rings = []
        for ring in segmentation:
            if not isinstance(ring, list) or len(ring) % 2:
                raise DataError(f"{where}: polygon ring must be a flat list of x, y pairs")
            if len(ring) >= 6:
                rings.append([float(v) for v in ring])
        if not rings:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(rings, height, width))
    elif isinstance(segmentation, dict):
        size = [int(v) for v in segmentation.get("size", ())]
        if size != [height, width]:
            raise DataError(
                f"{where}: RLE size {size} differs from the image's [{height}, {width}]"
            )
        counts = segmentation.get("counts")
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, str | bytes):
            rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise DataError(f"{where}: RLE 'counts' must be a list or a string")
    else:
        raise DataError(f"{where}: unknown segmentation type {type(segmentation).__name__}")
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips a harmless numpy 2 copy-keyword deprecation warning.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        decoded = mask_utils.decode(rle)
    if decoded.shape != (height, width):
        raise DataError(f"{where}: decoded mask {decoded.shape} is not {height}x{width}")
    return decoded.astype(bool)


def rasterise(
    instances: list[Instance] | tuple[Instance, ...], height: int, width: int, source: str = ""
) -> np.ndarray:
    """The semantic mask of one image under the module's labelling rules."""
    semantic = np.zeros((height, width), dtype=np.uint8)
    painted = []
    for instance in instances:
        where = f"{source}: annotation {instance.ann_id}"
        region = decode_segmentation(instance.segmentation, height, width, where)
        if instance.iscrowd:
            semantic[region] = IGNORE
        else:
            painted.append((-int(region.sum()), instance.ann_id, instance.label, region))
    painted.sort(key=lambda item: item[:2])
    for _, _, label, region in painted:
        semantic[region] = label
    return semantic


def _labelled(mask: np.ndarray) -> bool:
    return bool(((mask > 0) & (mask < IGNORE)).any())


def _kept_mask(job: _MaskJob) -> bool | None:
    """``labelled`` of an existing, valid mask of the current rules, or None to (re)write it."""
    if not job.out.is_file():
        return None
    try:
        with Image.open(job.out) as image:
            image.load()
            if (
                image.format != "PNG"
                or image.mode != "L"
                or image.size != (job.width, job.height)
                or image.info.get(RULES_KEY) != RULES_VERSION
            ):
                return None
            mask = np.array(image)
    except (OSError, SyntaxError, ValueError):
        return None
    if ((mask > job.num_labels) & (mask != IGNORE)).any():
        return None
    return _labelled(mask)


def _make_mask(job: _MaskJob) -> tuple[int, bool, bool]:
    """Check the image, keep or write its mask; returns (image id, written, labelled)."""
    size = jpeg_size(job.image)
    if size != (job.width, job.height):
        raise DataError(
            f"{job.image}: image is {size[0]}x{size[1]} but {job.source} says "
            f"{job.width}x{job.height}"
        )
    labelled = _kept_mask(job)
    if labelled is not None:
        return job.image_id, False, labelled
    mask = rasterise(job.instances, job.height, job.width, job.source)
    write_label_png(job.out, mask, {RULES_KEY: RULES_VERSION})
    return job.image_id, True, _labelled(mask)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read annotation JSON: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or malformed key {key!r}")
    return data


def _split_jobs(
    data: dict[str, Any], labels: dict[int, int], json_path: Path, image_dir: Path, mask_dir: Path
) -> tuple[list[_MaskJob], dict[str, int]]:
    """Group the annotations per image; jobs in ascending image id order, plus counts."""
    source = str(json_path)
    per_image: dict[int, list[Instance]] = {}
    images: dict[int, tuple[str, int, int]] = {}
    try:
        for image in data["images"]:
            name = str(image["file_name"])
            if Path(name).name != name or not name.endswith(".jpg"):
                raise DataError(f"{json_path}: image {image['id']}: bad file_name {name!r}")
            image_id = int(image["id"])
            if image_id in images:
                raise DataError(f"{json_path}: duplicate image id {image_id}")
            images[image_id] = (name, int(image["width"]), int(image["height"]))
            per_image[image_id] = []
        crowd = 0
        for ann in data["annotations"]:
            ann_id, image_id, category = int(ann["id"]), int(ann["image_id"]), ann["category_id"]
            if image_id not in images:
                raise DataError(
                    f"{json_path}: annotation {ann_id} refers to unknown image {image_id}"
                )
            if category not in labels:
                raise DataError(
                    f"{json_path}: annotation {ann_id} has unknown category_id {category!r}"
                )
            iscrowd = bool(ann.get("iscrowd", 0))
            crowd += iscrowd
            per_image[image_id].append(
                Instance(ann_id, labels[category], iscrowd, ann["segmentation"])
            )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{json_path}: malformed image or annotation entry ({exc!r})") from exc
    jobs = [
        _MaskJob(
            image_id,
            image_dir / name,
            width,
            height,
            mask_dir / f"{Path(name).stem}.png",
            tuple(per_image[image_id]),
            len(labels),
            source,
        )
        for image_id, (name, width, height) in sorted(images.items())
    ]
    counts = {
        "images": len(images),
        "annotations": len(data["annotations"]),
        "crowd_annotations": crowd,
        "images_without_annotations": sum(not anns for anns in per_image.values()),
    }
    return jobs, counts


def prepare_coco(raw_dir: Path, out_dir: Path, workers: int = 2) -> dict[str, Any]:
    """Rasterise COCO 2014 train and val into semantic masks and write the lists; return summary.

    See the module docstring for the layout and the labelling rules. ``workers`` 0 or 1 runs
    in-process.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    lists_dir = out_dir / "lists"
    mask_dirs = [out_dir / "annotations" / folder for folder, _, _ in SPLITS]
    for name in LIST_FILES:
        (lists_dir / name).unlink(missing_ok=True)
    remove_temp_files(*mask_dirs)

    summary: dict[str, Any] = {"rules_version": RULES_VERSION}
    lines: dict[str, str] = {}
    labels: dict[int, int] | None = None
    try:
        # The pool exists before any JSON is loaded, so forked workers never hold a copy of it.
        with worker_pool(workers) as pool:
            for (folder, json_name, list_name), mask_dir in zip(SPLITS, mask_dirs, strict=True):
                json_path = raw_dir / "annotations" / json_name
                image_dir = raw_dir / folder
                if not image_dir.is_dir():
                    raise DataError(f"{image_dir}: image folder is missing")
                data = _load_json(json_path)
                split_labels = category_labels(data["categories"], json_path)
                if labels is None:
                    labels = split_labels
                    names = {int(c["id"]): str(c.get("name", "")) for c in data["categories"]}
                    summary["categories"] = [
                        {"id": cid, "name": names[cid], "label": label}
                        for cid, label in labels.items()
                    ]
                elif split_labels != labels:
                    raise DataError(
                        f"{json_path}: categories differ from those of {SPLITS[0][1]}; the label "
                        "mapping must be the same for train and val"
                    )
                jobs, counts = _split_jobs(data, labels, json_path, image_dir, mask_dir)
                del data  # the jobs keep only what the workers need
                mask_dir.mkdir(parents=True, exist_ok=True)
                written, listed = 0, []
                for image_id, was_written, labelled in map_jobs(
                    pool, _make_mask, jobs, f"coco {folder} masks"
                ):
                    written += was_written
                    if labelled:
                        listed.append(image_id)
                listed_set = set(listed)
                lines[list_name] = "".join(
                    f"{folder}/{job.image.name} annotations/{folder}/{job.out.name}\n"
                    for job in jobs
                    if job.image_id in listed_set
                )
                summary[folder] = {
                    **counts,
                    "masks_written": written,
                    "masks_kept": len(jobs) - written,
                    "listed": len(listed),
                    "not_listed_no_labelled_pixel": len(jobs) - len(listed),
                }
                link_dir(out_dir / folder, image_dir)
        for _, _, list_name in SPLITS:
            write_text(lists_dir / f"{list_name}.txt", lines[list_name])
        write_json(lists_dir / "summary.json", summary)
    except BaseException:
        for name in LIST_FILES:
            (lists_dir / name).unlink(missing_ok=True)
        raise
    finally:
        # Workers killed mid-write (pool terminated after an error) leave their temp files.
        remove_temp_files(*mask_dirs, lists_dir, out_dir)
    log.info("prepare coco: %s", summary)
    return summary
