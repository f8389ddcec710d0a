"""``prepare pascal``: PASCAL VOC 2012 + SBD -> SegmentationClassAug and the PASCAL-5i lists.

Input (``raw_dir``, as extracted by the download stage)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNGs, indices 0..20 and 255
    VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    benchmark_RELEASE/dataset/cls/<id>.mat              GTcls.Segmentation, classes 0..20
    benchmark_RELEASE/dataset/{train,val}.txt
  plus ``train_noval.txt`` (separate download): SBD train+val without VOC 2012 val images.

Output (``out_dir``)::

    SegmentationClassAug/<id>.png   'L' PNGs of class indices, one per image of the union of the
                                    VOC trainval segmentation lists and SBD train/val; the VOC
                                    mask (with its 255 borders) where VOC has one, else SBD's
    JPEGImages -> relative symlink to the raw VOC JPEGImages (no copy)
    lists/train.txt, lists/val.txt  "JPEGImages/<id>.jpg SegmentationClassAug/<id>.png"
    lists/summary.json              counts

Every mask's image must be in VOC JPEGImages (true of the real data: SBD images are a subset of
VOC 2011 trainval). Masks are checked against their JPEG's size and for class ids outside 0..20
and 255; JPEGs are checked as described in :mod:`hdmnet.data.prepare_common`. A mask whose PNG
already holds exactly the converted array is left untouched, so a re-run rewrites nothing.
Lists are removed at the start and written last: they exist only after a complete run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.io
from PIL import Image

from hdmnet.data.errors import DataError
from hdmnet.data.prepare_common import (
    jpeg_size,
    link_dir,
    read_label_png,
    remove_temp_files,
    write_label_png,
)
from hdmnet.fileio import write_json, write_text
from hdmnet.parallel import map_jobs, worker_pool

log = logging.getLogger(__name__)

VOC_DIR = Path("VOCdevkit/VOC2012")
SBD_DIR = Path("benchmark_RELEASE/dataset")
NUM_CLASSES = 20
IGNORE = 255
MASKS = "SegmentationClassAug"
IMAGES = "JPEGImages"
LIST_FILES = ("train.txt", "val.txt", "summary.json")


class _MaskJob(NamedTuple):
    image_id: str
    source: Path  # VOC SegmentationClass PNG or SBD cls .mat
    from_voc: bool
    image: Path
    out: Path


def read_id_list(path: Path) -> list[str]:
    """Image ids of an ImageSets-style file (one id per line), in file order, duplicates dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: image list is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read image list: {exc}") from exc
    ids: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 1:
            raise DataError(f"{path}:{number}: expected one image id per line, got {line!r}")
        ids[fields[0]] = None
    return list(ids)


def check_classes(mask: np.ndarray, source: Path) -> None:
    """Raise DataError if ``mask`` holds a value outside 0..20 and 255."""
    values = np.unique(mask)
    bad = [int(v) for v in values if v > NUM_CLASSES and v != IGNORE]
    if bad:
        raise DataError(
            f"{source}: unknown class id(s) {bad}; PASCAL masks hold 0..{NUM_CLASSES} and {IGNORE}"
        )


def read_voc_mask(path: Path) -> np.ndarray:
    """A VOC SegmentationClass PNG as class indices (palette indices, never converted to RGB)."""
    mask = read_label_png(path)
    check_classes(mask, path)
    return mask


def read_sbd_mask(path: Path) -> np.ndarray:
    """The class mask ``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file as uint8."""
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: SBD mask file is missing") from None
    except Exception as exc:  # scipy raises several unrelated types for bad files
        raise DataError(f"{path}: cannot read SBD .mat file: {exc}") from exc
    try:
        raw = mat["GTcls"][0, 0]["Segmentation"]
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: no GTcls.Segmentation in the .mat file ({exc!r})") from exc
    raw = np.asarray(raw)
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        raise DataError(f"{path}: GTcls.Segmentation must be a 2-D integer array, got {raw.dtype}")
    check_classes(raw, path)  # before the cast, so 256 cannot wrap to 0
    return raw.astype(np.uint8)


def _same_mask(path: Path, mask: np.ndarray) -> bool:
    """True if ``path`` is an 'L' PNG holding exactly ``mask`` (then it is not rewritten)."""
    try:
        with Image.open(path) as image:
            return image.mode == "L" and np.array_equal(np.array(image), mask)
    except (OSError, SyntaxError, ValueError):
        return False  # missing or unreadable: write it


def _convert(job: _MaskJob) -> tuple[str, bool]:
    """Check and write one mask; returns (id, written). Runs in a worker process."""
    width, height = jpeg_size(job.image)
    mask = read_voc_mask(job.source) if job.from_voc else read_sbd_mask(job.source)
    if mask.shape != (height, width):
        raise DataError(
            f"{job.source}: mask is {mask.shape[1]}x{mask.shape[0]} but image {job.image} "
            f"is {width}x{height}"
        )
    if _same_mask(job.out, mask):
        return job.image_id, False
    write_label_png(job.out, mask)
    return job.image_id, True


def _merge_train(voc_train: list[str], train_noval: list[str]) -> list[str]:
    merged = dict.fromkeys(voc_train)
    merged.update(dict.fromkeys(train_noval))
    return list(merged)


def prepare_pascal(
    raw_dir: Path, train_noval: Path, out_dir: Path, workers: int = 2
) -> dict[str, Any]:
    """Build SegmentationClassAug, the JPEGImages link and the train/val lists; return the summary.

    The train list is VOC 2012 seg train followed by the ``train_noval`` ids not already in it,
    each part in its file's order (so the order is deterministic); the val list is VOC 2012 seg
    val in file order. A train id that is also a val id raises DataError (data leak).
    ``workers`` 0 or 1 runs in-process.
    """
    raw_dir, train_noval, out_dir = Path(raw_dir), Path(train_noval), Path(out_dir)
    voc, sbd = raw_dir / VOC_DIR, raw_dir / SBD_DIR
    masks_dir, lists_dir = out_dir / MASKS, out_dir / "lists"
    for name in LIST_FILES:
        (lists_dir / name).unlink(missing_ok=True)

    seg_sets = voc / "ImageSets" / "Segmentation"
    voc_lists = {
        name: read_id_list(seg_sets / f"{name}.txt") for name in ("train", "val", "trainval")
    }
    sbd_lists = {name: read_id_list(sbd / f"{name}.txt") for name in ("train", "val")}
    noval = read_id_list(train_noval)
    train_ids = _merge_train(voc_lists["train"], noval)
    val_ids = voc_lists["val"]
    val_set = set(val_ids)
    leaked = [i for i in train_ids if i in val_set]
    if leaked:
        raise DataError(
            f"{train_noval} / {seg_sets / 'train.txt'}: {len(leaked)} training id(s) are VOC 2012 "
            f"val images, e.g. {leaked[:3]}"
        )

    # Mask source per id, VOC first so it wins; remember which list named each id for errors.
    jobs: dict[str, _MaskJob] = {}
    named_by: dict[str, Path] = {}
    for name, ids in voc_lists.items():
        for image_id in ids:
            named_by.setdefault(image_id, seg_sets / f"{name}.txt")
            jobs.setdefault(
                image_id,
                _MaskJob(
                    image_id,
                    voc / "SegmentationClass" / f"{image_id}.png",
                    True,
                    voc / IMAGES / f"{image_id}.jpg",
                    masks_dir / f"{image_id}.png",
                ),
            )
    for name, ids in sbd_lists.items():
        for image_id in ids:
            named_by.setdefault(image_id, sbd / f"{name}.txt")
            jobs.setdefault(
                image_id,
                _MaskJob(
                    image_id,
                    sbd / "cls" / f"{image_id}.mat",
                    False,
                    voc / IMAGES / f"{image_id}.jpg",
                    masks_dir / f"{image_id}.png",
                ),
            )
    unknown = [i for i in noval if i not in jobs]
    if unknown:
        raise DataError(
            f"{train_noval}: {len(unknown)} id(s) have no mask (in neither the VOC segmentation "
            f"lists nor SBD train/val), e.g. {unknown[:3]}"
        )
    # Stat everything up front: a missing file fails in seconds, naming the list that wants it.
    for image_id, job in jobs.items():
        for needed in (job.image, job.source):
            if not needed.is_file():
                raise DataError(f"{named_by[image_id]} lists {image_id} but {needed} is missing")

    written = 0
    try:
        with worker_pool(workers) as pool:
            for _, was_written in map_jobs(
                pool, _convert, list(jobs.values()), "pascal SegmentationClassAug"
            ):
                written += was_written
        link_dir(out_dir / IMAGES, voc / IMAGES)
        lines = {
            name: "".join(f"{IMAGES}/{i}.jpg {MASKS}/{i}.png\n" for i in ids)
            for name, ids in (("train", train_ids), ("val", val_ids))
        }
        summary = {
            "train": len(train_ids),
            "val": len(val_ids),
            "train_from_voc": len(voc_lists["train"]),
            "train_from_sbd": len(train_ids) - len(voc_lists["train"]),
            "train_noval_duplicates": len(noval) - (len(train_ids) - len(voc_lists["train"])),
            "masks": len(jobs),
            "masks_from_voc": sum(job.from_voc for job in jobs.values()),
            "masks_from_sbd": sum(not job.from_voc for job in jobs.values()),
            "masks_written": written,
            "masks_unchanged": len(jobs) - written,
        }
        write_text(lists_dir / "train.txt", lines["train"])
        write_text(lists_dir / "val.txt", lines["val"])
        write_json(lists_dir / "summary.json", summary)
    except BaseException:
        for name in LIST_FILES:
            (lists_dir / name).unlink(missing_ok=True)
        raise
    finally:
        # Workers killed mid-write (pool terminated after an error) leave their temp files.
        remove_temp_files(masks_dir, lists_dir, out_dir)
    log.info("prepare pascal: %s", summary)
    return summary
