"""prepare pascal on a tiny VOC + SBD tree: lists, masks, link, resume and bad input."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.data.fixtures_raw import (
    EXPECTED_TRAIN,
    VOC_VAL,
    PascalRaw,
    box_mask,
    build_pascal,
    temp_files,
    write_ids,
    write_jpeg,
    write_sbd_mat,
    write_voc_png,
)

from hdmnet.data.errors import DataError
from hdmnet.data.pascal import prepare_pascal, read_id_list


@pytest.fixture
def raw(tmp_path: Path) -> PascalRaw:
    return build_pascal(tmp_path)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def test_lists_order_dedup_and_format(raw: PascalRaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare_pascal(raw.root, raw.train_noval, out, workers=0)
    # VOC train order first, then train_noval's remaining ids in file order (2007_000039 once).
    assert _lines(out / "lists" / "train.txt") == [
        f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png" for i in EXPECTED_TRAIN
    ]
    assert _lines(out / "lists" / "val.txt") == [
        f"JPEGImages/{i}.jpg SegmentationClassAug/{i}.png" for i in VOC_VAL
    ]
    assert summary == json.loads((out / "lists" / "summary.json").read_text())
    assert summary["train"] == 5 and summary["val"] == 2
    assert summary["train_from_voc"] == 2 and summary["train_from_sbd"] == 3
    assert summary["train_noval_duplicates"] == 1
    assert summary["masks"] == 8
    assert (summary["masks_from_voc"], summary["masks_from_sbd"]) == (4, 4)
    assert (summary["masks_written"], summary["masks_unchanged"]) == (8, 0)
    # Every list entry resolves relative to out_dir.
    for name in ("train.txt", "val.txt"):
        for line in _lines(out / "lists" / name):
            image, mask = line.split()
            assert (out / image).is_file() and (out / mask).is_file()


def test_masks_prefer_voc_and_keep_raw_indices(raw: PascalRaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_pascal(raw.root, raw.train_noval, out, workers=0)
    expected = raw.expected_masks()
    # The union of VOC trainval and SBD train/val, including 2008_000008 which is in no list.
    assert sorted(p.stem for p in (out / "SegmentationClassAug").iterdir()) == sorted(expected)
    for image_id, mask in expected.items():
        with Image.open(out / "SegmentationClassAug" / f"{image_id}.png") as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.array(image), mask, err_msg=image_id)
    # Shared ids: the VOC mask (with its 255 border), not SBD's.
    for image_id in ("2007_000039", "2007_000033"):
        written = np.array(Image.open(out / "SegmentationClassAug" / f"{image_id}.png"))
        assert 255 in written
        assert not np.array_equal(written, raw.sbd_masks[image_id])


def test_jpegimages_is_a_relative_symlink(raw: PascalRaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_pascal(raw.root, raw.train_noval, out, workers=0)
    link = out / "JPEGImages"
    assert link.is_symlink()
    assert not os.path.isabs(os.readlink(link))
    assert link.resolve() == (raw.voc / "JPEGImages").resolve()


def test_rerun_rewrites_nothing_and_repairs_a_corrupt_mask(raw: PascalRaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_pascal(raw.root, raw.train_noval, out, workers=0)
    masks = out / "SegmentationClassAug"
    before = _mtimes(masks)
    summary = prepare_pascal(raw.root, raw.train_noval, out, workers=2)
    assert (summary["masks_written"], summary["masks_unchanged"]) == (0, 8)
    assert _mtimes(masks) == before

    broken = masks / "2008_000003.png"
    broken.write_bytes(broken.read_bytes()[:20])
    palette = masks / "2007_000032.png"  # same indices, but 'P' (e.g. a copy of the VOC file)
    write_voc_png(palette, raw.voc_masks["2007_000032"])
    damaged = _mtimes(masks)
    summary = prepare_pascal(raw.root, raw.train_noval, out, workers=2)
    assert summary["masks_written"] == 2
    after = _mtimes(masks)
    assert {k for k in after if after[k] != damaged[k]} == {"2008_000003.png", "2007_000032.png"}
    for path, expected in (
        (broken, raw.sbd_masks["2008_000003"]),
        (palette, raw.voc_masks["2007_000032"]),
    ):
        with Image.open(path) as image:
            assert image.mode == "L"
            np.testing.assert_array_equal(np.array(image), expected)


def test_workers_give_the_same_output(raw: PascalRaw, tmp_path: Path) -> None:
    prepare_pascal(raw.root, raw.train_noval, tmp_path / "a", workers=0)
    prepare_pascal(raw.root, raw.train_noval, tmp_path / "b", workers=2)
    for sub in ("lists/train.txt", "lists/val.txt"):
        assert (tmp_path / "a" / sub).read_text() == (tmp_path / "b" / sub).read_text()
    for png in (tmp_path / "a" / "SegmentationClassAug").iterdir():
        other = tmp_path / "b" / "SegmentationClassAug" / png.name
        np.testing.assert_array_equal(np.array(Image.open(png)), np.array(Image.open(other)))


def test_read_id_list_rejects_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "aeroplane_train.txt"
    path.write_text("2007_000032  1\n")
    with pytest.raises(DataError, match=r"aeroplane_train\.txt:1"):
        read_id_list(path)
    path.write_text("a\n\nb\na\n")
    assert read_id_list(path) == ["a", "b"]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# Each case breaks the tree and names the file the error must mention.
BAD_INPUTS: dict[str, tuple[Callable[[PascalRaw], object], str]] = {
    "truncated jpeg": (
        lambda r: _truncate(r.voc / "JPEGImages" / "2008_000005.jpg"),
        r"2008_000005\.jpg: truncated JPEG",
    ),
    "not a jpeg": (
        lambda r: (r.voc / "JPEGImages" / "2007_000042.jpg").write_bytes(b"<html>404</html>"),
        r"2007_000042\.jpg: not a JPEG",
    ),
    "voc mask size": (
        lambda r: write_voc_png(
            r.voc / "SegmentationClass" / "2007_000032.png", np.zeros((29, 40), np.uint8)
        ),
        r"2007_000032\.png: mask is 40x29 but image .*2007_000032\.jpg is 40x30",
    ),
    "sbd mask size": (
        lambda r: write_sbd_mat(r.sbd / "cls" / "2008_000002.mat", np.zeros((5, 5), np.uint8)),
        r"2008_000002\.mat: mask is 5x5",
    ),
    "voc unknown class": (
        lambda r: write_voc_png(
            r.voc / "SegmentationClass" / "2007_000033.png",
            box_mask(28, 36, [(0, 0, 3, 3, 21)]),
        ),
        r"2007_000033\.png: unknown class id\(s\) \[21\]",
    ),
    "sbd unknown class": (
        lambda r: write_sbd_mat(
            r.sbd / "cls" / "2008_000008.mat", box_mask(28, 36, [(0, 0, 3, 3, 30)])
        ),
        r"2008_000008\.mat: unknown class id\(s\) \[30\]",
    ),
    "sbd without GTcls": (
        lambda r: __import__("scipy.io").io.savemat(
            r.sbd / "cls" / "2008_000003.mat", {"GTinst": np.zeros((2, 2))}
        ),
        r"2008_000003\.mat: no GTcls",
    ),
    "missing jpeg": (
        lambda r: (r.voc / "JPEGImages" / "2007_000039.jpg").unlink(),
        r"train\.txt lists 2007_000039 but .*JPEGImages/2007_000039\.jpg is missing",
    ),
    "missing voc mask": (
        lambda r: (r.voc / "SegmentationClass" / "2007_000042.png").unlink(),
        r"val\.txt lists 2007_000042 but .*SegmentationClass/2007_000042\.png is missing",
    ),
    "missing sbd mask": (
        lambda r: (r.sbd / "cls" / "2008_000005.mat").unlink(),
        r"dataset/val\.txt lists 2008_000005 but .*cls/2008_000005\.mat is missing",
    ),
    "missing voc list": (
        lambda r: (r.voc / "ImageSets" / "Segmentation" / "val.txt").unlink(),
        r"Segmentation/val\.txt: image list is missing",
    ),
    "missing train_noval": (
        lambda r: r.train_noval.unlink(),
        r"train_noval\.txt: image list is missing",
    ),
    "train_noval id without mask": (
        lambda r: write_ids(r.train_noval, ["2009_999999"]),
        r"train_noval\.txt: 1 id\(s\) have no mask .*2009_999999",
    ),
    "train_noval holds a val id": (
        lambda r: write_ids(r.train_noval, ["2007_000033"]),
        r"train_noval\.txt .* VOC 2012 val images, e\.g\. \['2007_000033'\]",
    ),
}


# Lists and missing files are checked before any worker starts; file contents inside workers,
# so those cases also run with a pool (error raised in a worker, others killed mid-write).
BAD_CASES = [(case, 0) for case in sorted(BAD_INPUTS)] + [
    (case, 2) for case in sorted(BAD_INPUTS) if not case.startswith(("missing", "train_noval"))
]


@pytest.mark.parametrize(("case", "workers"), BAD_CASES)
def test_bad_input_raises_naming_the_file(
    raw: PascalRaw, tmp_path: Path, case: str, workers: int
) -> None:
    out = tmp_path / "out"
    prepare_pascal(raw.root, raw.train_noval, out, workers=0)  # a good run first: stale lists
    breaker, pattern = BAD_INPUTS[case]
    breaker(raw)
    with pytest.raises(DataError, match=pattern):
        prepare_pascal(raw.root, raw.train_noval, out, workers=workers)
    assert not (out / "lists").exists() or not any((out / "lists").iterdir())
    assert temp_files(out) == []


def test_failure_on_fresh_output_leaves_no_lists(raw: PascalRaw, tmp_path: Path) -> None:
    write_jpeg(raw.voc / "JPEGImages" / "2007_000032.jpg", 41, 30)  # mask is 40x30
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"2007_000032\.png: mask is 40x30 but image .* is 41x30"):
        prepare_pascal(raw.root, raw.train_noval, out, workers=2)
    assert not (out / "lists").exists() or not any((out / "lists").iterdir())
    assert temp_files(out) == []
