"""Fold lists (image lists and per-class file lists) and base annotations, built fast.

Every mask of a full list is read once and its class pixel counts taken in one histogram pass
(``count_classes``, parallel). The counts are kept as diffable JSON lines and every fold, mode and
scheme is then a pure, vectorised selection over them (``build_fold_lists``), with the rules of
PROTOCOL.md:

- an (image, class) pair counts only if the class covers at least ``min_pixels`` (2*32*32) pixels;
- training list: images with at least one base class passing, per-class lists for base classes;
  with ``exclude_novel`` (HDMNet/BAM default) images showing ANY novel pixel are dropped first;
- validation list: images with at least one novel class passing, per-class lists for novel classes.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hdmnet.data.errors import DataError
from hdmnet.data.folds import IGNORE, fold_classes, num_classes
from hdmnet.data.masks import class_pixel_counts, read_mask
from hdmnet.errors import MissingFileError
from hdmnet.fileio import write_json, write_text
from hdmnet.parallel import parallel_map

MIN_PIXELS = 2 * 32 * 32
MODES = ("train", "val")
COUNTS_FORMAT = "hdmnet-pixel-counts"
COUNTS_VERSION = 1
LIST_FILES = {"train": "train.txt", "val": "val.txt"}
CLASS_FILES = {"train": "train_classes.json", "val": "val_classes.json"}
SUMMARY_FILE = "summary.json"
#: Folder of a prepared data set's full lists: every converted image of each split.
FULL_LISTS_DIR = "lists"


class ListItem(NamedTuple):
    """One list line: image and mask paths relative to the data set root."""

    image: str
    mask: str

    @property
    def line(self) -> str:
        return f"{self.image} {self.mask}"


def parse_list(lines: Iterable[str], source: str) -> list[ListItem]:
    """Parse PFENet-format lines ('image mask'); blank lines are skipped, duplicates raise."""
    items: list[ListItem] = []
    seen: dict[ListItem, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError(
                f"{source}:{number}: expected 'image_path mask_path', got {len(fields)} field(s): "
                f"{line!r}"
            )
        item = ListItem(fields[0], fields[1])
        if item in seen:
            raise DataError(f"{source}:{number}: duplicate of line {seen[item]}: {line!r}")
        seen[item] = number
        items.append(item)
    return items


def read_list(path: str | os.PathLike[str]) -> list[ListItem]:
    """Read a list file in the PFENet line format."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"list file not found: {path}") from None
    return parse_list(text.splitlines(), str(path))


def format_list(items: Iterable[ListItem]) -> str:
    return "".join(item.line + "\n" for item in items)


# ---------------------------------------------------------------------------------------------
# Pixel counts: one pass over the masks of a full list.


@dataclass(eq=False)
class PixelCounts:
    """Class pixel counts of every mask of a full list.

    ``counts[i, c]`` = pixels of class c (0 = background) in ``items[i]``'s mask; ``ignore[i]``
    = its 255 pixels. ``source`` names the list the counts come from (for messages).
    """

    items: list[ListItem]
    counts: np.ndarray
    ignore: np.ndarray
    num_classes: int
    source: str

    def __post_init__(self) -> None:
        n = len(self.items)
        if self.counts.shape != (n, self.num_classes + 1):
            raise ValueError(
                f"counts of {self.source} have shape {self.counts.shape}, "
                f"expected ({n}, {self.num_classes + 1})"
            )
        if self.ignore.shape != (n,):
            raise ValueError(f"ignore counts of {self.source} have shape {self.ignore.shape}")


def _count_one(
    item: ListItem, root: str, num_classes: int, check_images: bool
) -> tuple[np.ndarray, int]:
    mask_path = os.path.join(root, item.mask)
    if check_images and not os.path.isfile(os.path.join(root, item.image)):
        raise MissingFileError(
            f"image file not found: {os.path.join(root, item.image)} (listed with {mask_path})"
        )
    mask = read_mask(mask_path)
    counts = class_pixel_counts(mask, num_classes, mask_path)
    # Unknown ids raised above, so every pixel not counted is 255.
    return counts, int(mask.size - counts.sum())


def count_classes(
    root: str | os.PathLike[str],
    list_file: str | os.PathLike[str],
    num_classes: int,
    workers: int | None = None,
    check_images: bool = True,
) -> PixelCounts:
    """Read every mask of ``list_file`` once and count its class pixels (in ``workers`` processes).

    Paths in the list are relative to ``root``. A mask that cannot be read, a mask with an id
    outside 0, 1..num_classes, 255, or (with ``check_images``) a missing image raise naming the
    file.
    """
    items = read_list(list_file)
    fn = functools.partial(
        _count_one, root=str(root), num_classes=num_classes, check_images=check_images
    )
    results = parallel_map(fn, items, workers, desc=f"count classes {Path(list_file).name}")
    counts = np.zeros((len(items), num_classes + 1), dtype=np.int64)
    ignore = np.zeros(len(items), dtype=np.int64)
    for i, (row, ign) in enumerate(results):
        counts[i] = row
        ignore[i] = ign
    return PixelCounts(items, counts, ignore, num_classes, str(list_file))


def save_counts(counts: PixelCounts, path: str | os.PathLike[str]) -> None:
    """Write counts as JSON lines: a header, then one line per image with its non-zero classes."""
    header = {
        "format": COUNTS_FORMAT,
        "version": COUNTS_VERSION,
        "num_classes": counts.num_classes,
        "list": counts.source,
    }
    lines = [json.dumps(header)]
    for item, row, ign in zip(counts.items, counts.counts, counts.ignore, strict=True):
        nonzero = {str(int(c)): int(row[c]) for c in np.flatnonzero(row)}
        if ign:
            nonzero[str(IGNORE)] = int(ign)
        lines.append(json.dumps({"image": item.image, "mask": item.mask, "counts": nonzero}))
    write_text(path, "\n".join(lines) + "\n")


def load_counts(path: str | os.PathLike[str]) -> PixelCounts:
    """Read counts written by ``save_counts``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MissingFileError(f"pixel counts file not found: {path}") from None
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:1: not JSON: {exc}") from exc
    if header.get("format") != COUNTS_FORMAT or header.get("version") != COUNTS_VERSION:
        raise DataError(
            f"{path} is not a pixel counts file (format {COUNTS_FORMAT} v{COUNTS_VERSION})"
        )
    total = int(header["num_classes"])
    items: list[ListItem] = []
    rows = np.zeros((len(lines) - 1, total + 1), dtype=np.int64)
    ignore = np.zeros(len(lines) - 1, dtype=np.int64)
    for i, line in enumerate(lines[1:]):
        try:
            record = json.loads(line)
            items.append(ListItem(record["image"], record["mask"]))
            for key, value in record["counts"].items():
                c = int(key)
                if c == IGNORE:
                    ignore[i] = value
                elif 0 <= c <= total:
                    rows[i, c] = value
                else:
                    raise DataError(f"class id {c} outside 0..{total} and {IGNORE}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}:{i + 2}: bad pixel count record: {exc}") from exc
    return PixelCounts(items, rows, ignore, total, str(header.get("list", path)))


# ---------------------------------------------------------------------------------------------
# Fold lists: pure selections over the counts.


@dataclass(frozen=True, eq=False)
class SplitList:
    """One mode's list: its items (full-list order) and, per class, the items it is eligible for.

    ``class_items[c]`` holds ascending indices into ``items``; ``item_classes[i]`` the classes
    item i is eligible for. ``source`` names where the list came from (for messages).
    """

    items: tuple[ListItem, ...]
    class_items: dict[int, np.ndarray]
    item_classes: tuple[tuple[int, ...], ...]
    source: str

    @classmethod
    def create(
        cls, items: Sequence[ListItem], class_items: dict[int, np.ndarray], source: str
    ) -> SplitList:
        per_item: list[list[int]] = [[] for _ in items]
        for c in sorted(class_items):
            for i in class_items[c]:
                per_item[i].append(c)
        for i, classes in enumerate(per_item):
            if not classes:
                raise DataError(f"{source}: item {items[i].line!r} has no eligible class")
        return cls(
            tuple(items),
            {c: np.asarray(class_items[c], dtype=np.int64) for c in sorted(class_items)},
            tuple(tuple(c) for c in per_item),
            source,
        )

    def class_files(self, class_id: int) -> list[ListItem]:
        return [self.items[i] for i in self.class_items[class_id]]


@dataclass(frozen=True, eq=False)
class FoldLists:
    """Training and validation lists of one (dataset, fold, scheme, exclusion, threshold)."""

    dataset: str
    fold: int
    scheme: str
    exclude_novel: bool
    min_pixels: int
    base: tuple[int, ...]
    novel: tuple[int, ...]
    train: SplitList
    val: SplitList

    def split(self, mode: str) -> SplitList:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return self.train if mode == "train" else self.val

    def classes(self, mode: str) -> tuple[int, ...]:
        """The classes episodes of ``mode`` are drawn from: base for train, novel for val."""
        self.split(mode)
        return self.base if mode == "train" else self.novel


def _select(
    counts: PixelCounts,
    classes: Sequence[int],
    excluded: Sequence[int],
    min_pixels: int,
    source: str,
) -> tuple[SplitList, int]:
    """Items with >= 1 of ``classes`` at >= min_pixels and no pixel of ``excluded``."""
    cls = np.asarray(classes, dtype=np.int64)
    passes = counts.counts[:, cls] >= min_pixels
    keep = passes.any(axis=1)
    dropped = 0
    if len(excluded):
        has_excluded = (counts.counts[:, np.asarray(excluded, dtype=np.int64)] > 0).any(axis=1)
        dropped = int((keep & has_excluded).sum())
        keep &= ~has_excluded
    index = np.flatnonzero(keep)
    kept = passes[index]
    class_items = {int(c): np.flatnonzero(kept[:, j]) for j, c in enumerate(cls)}
    items = [counts.items[i] for i in index]
    return SplitList.create(items, class_items, source), dropped


def build_fold_lists(
    counts_train: PixelCounts,
    counts_val: PixelCounts,
    dataset: str,
    fold: int,
    scheme: str = "fwb",
    exclude_novel: bool = True,
    min_pixels: int = MIN_PIXELS,
) -> FoldLists:
    """Training and validation lists of a fold from the full lists' pixel counts (pure)."""
    base, novel = fold_classes(dataset, fold, scheme)
    total = num_classes(dataset)
    for name, counts in (("training", counts_train), ("validation", counts_val)):
        if counts.num_classes != total:
            raise ValueError(
                f"{name} counts of {counts.source} are for {counts.num_classes} classes, "
                f"but {dataset} has {total}"
            )
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise ValueError(f"min_pixels must be a positive integer, got {min_pixels!r}")
    tag = f"{dataset} fold {fold} ({scheme}{'' if exclude_novel else ', no exclusion'})"
    train, _ = _select(
        counts_train,
        base,
        novel if exclude_novel else [],
        min_pixels,
        f"{tag} train list from {counts_train.source}",
    )
    val, _ = _select(counts_val, novel, [], min_pixels, f"{tag} val list from {counts_val.source}")
    return FoldLists(
        dataset, fold, scheme, exclude_novel, min_pixels, tuple(base), tuple(novel), train, val
    )


def fold_summary(
    lists: FoldLists,
    counts_train: PixelCounts | None = None,
    counts_val: PixelCounts | None = None,
) -> dict:
    """Counts per list and per class (plus full-list sizes and exclusions when counts given)."""
    summary: dict = {
        "dataset": lists.dataset,
        "fold": lists.fold,
        "scheme": lists.scheme,
        "exclude_novel": lists.exclude_novel,
        "min_pixels": lists.min_pixels,
        "base_classes": list(lists.base),
        "novel_classes": list(lists.novel),
    }
    for mode, counts in (("train", counts_train), ("val", counts_val)):
        split = lists.split(mode)
        entry: dict = {
            "images": len(split.items),
            "class_files": {str(c): len(ix) for c, ix in split.class_items.items()},
            "pairs": int(sum(len(ix) for ix in split.class_items.values())),
        }
        if counts is not None:
            entry["full_list"] = counts.source
            entry["full_list_images"] = len(counts.items)
            if mode == "train" and lists.exclude_novel:
                _, dropped = _select(counts, lists.base, lists.novel, lists.min_pixels, "")
                entry["excluded_for_novel_pixels"] = dropped
        summary[mode] = entry
    return summary


def _class_json(split: SplitList) -> str:
    # Keys in numeric order (json's sort_keys would put "10" before "2").
    lines = ["{"]
    keys = list(split.class_items)
    for n, c in enumerate(keys):
        files = [split.items[i].line for i in split.class_items[c]]
        body = json.dumps(files, indent=2).replace("\n", "\n  ")
        lines.append(f'  "{c}": {body}{"," if n < len(keys) - 1 else ""}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_fold_lists(
    lists: FoldLists,
    out_dir: str | os.PathLike[str],
    counts_train: PixelCounts | None = None,
    counts_val: PixelCounts | None = None,
) -> Path:
    """Write train.txt, val.txt, {train,val}_classes.json and summary.json (last) into out_dir.

    Each file is written atomically; summary.json, written last, marks a complete folder.
    """
    out = Path(out_dir)
    for mode in MODES:
        split = lists.split(mode)
        write_text(out / LIST_FILES[mode], format_list(split.items))
        write_text(out / CLASS_FILES[mode], _class_json(split))
    write_json(out / SUMMARY_FILE, fold_summary(lists, counts_train, counts_val))
    return out


def full_list(root: str | os.PathLike[str], mode: str) -> Path:
    """The full list of split ``mode`` ('train' or 'val') of the data set prepared in ``root``."""
    return Path(root) / FULL_LISTS_DIR / LIST_FILES[mode]


def load_fold_lists(fold_dir: str | os.PathLike[str]) -> FoldLists:
    """Read a folder written by ``write_fold_lists``; inconsistencies raise naming the file."""
    fold_dir = Path(fold_dir)
    summary_path = fold_dir / SUMMARY_FILE
    try:
        meta = json.loads(summary_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"fold list summary not found: {summary_path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{summary_path}: not JSON: {exc}") from exc
    try:
        dataset, fold, scheme = meta["dataset"], meta["fold"], meta["scheme"]
        base, novel = fold_classes(dataset, fold, scheme)
        exclude, min_pixels = bool(meta["exclude_novel"]), int(meta["min_pixels"])
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{summary_path}: bad fold metadata: {exc}") from exc
    splits: dict[str, SplitList] = {}
    for mode, expected in (("train", base), ("val", novel)):
        list_path, class_path = fold_dir / LIST_FILES[mode], fold_dir / CLASS_FILES[mode]
        items = read_list(list_path)
        index = {item.line: i for i, item in enumerate(items)}
        try:
            raw = json.loads(class_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MissingFileError(f"class file list not found: {class_path}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{class_path}: not JSON: {exc}") from exc
        keys = sorted(int(k) for k in raw) if isinstance(raw, dict) else None
        if keys != sorted(expected):
            raise DataError(
                f"{class_path}: classes {keys} do not match the {mode} classes {expected} of "
                f"{dataset} fold {fold} ({scheme})"
            )
        class_items: dict[int, np.ndarray] = {}
        for key, lines in raw.items():
            missing = [line for line in lines if line not in index]
            if missing:
                raise DataError(
                    f"{class_path}: class {key} lists {missing[0]!r}, not in {list_path}"
                )
            class_items[int(key)] = np.sort(
                np.asarray([index[line] for line in lines], dtype=np.int64)
            )
        splits[mode] = SplitList.create(items, class_items, f"{list_path} / {class_path}")
    return FoldLists(
        dataset,
        fold,
        scheme,
        exclude,
        min_pixels,
        tuple(base),
        tuple(novel),
        splits["train"],
        splits["val"],
    )


# ---------------------------------------------------------------------------------------------
# Base annotations.


def lut_num_classes(lut: np.ndarray) -> int:
    """Largest class id a ``base_label_map`` table defines (ids above it map to ignore)."""
    defined = np.flatnonzero(lut[:IGNORE] != IGNORE)
    return int(defined.max()) if defined.size else 0
