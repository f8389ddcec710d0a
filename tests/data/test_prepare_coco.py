"""prepare coco on a tiny COCO 2014 tree: id mapping, overlap/crowd rules, lists, resume, errors."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.data.fixtures_raw import (
    CocoRaw,
    box_mask,
    build_coco,
    rect_polygon,
    temp_files,
    write_jpeg,
)

from hdmnet.data.coco import (
    RULES_KEY,
    Instance,
    category_labels,
    prepare_coco,
    rasterise,
)
from hdmnet.data.errors import DataError

# The 80 official COCO category ids (1..90 without the 10 unused ones).
UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
OFFICIAL_IDS = [i for i in range(1, 91) if i not in UNUSED]


@pytest.fixture
def raw(tmp_path: Path) -> CocoRaw:
    return build_coco(tmp_path)


def _mask(out: Path, split: str, stem: str) -> np.ndarray:
    with Image.open(out / "annotations" / split / f"{stem}.png") as image:
        assert image.mode == "L"
        return np.array(image)


def _mtimes(out: Path) -> dict[str, int]:
    return {
        f"{p.parent.name}/{p.name}": p.stat().st_mtime_ns
        for p in sorted((out / "annotations").glob("*/*.png"))
    }


def _edit_json(raw: CocoRaw, split: str, edit: Callable[[dict], object]) -> None:
    path = raw.json_path(split)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_category_mapping_sparse_and_full() -> None:
    assert category_labels([{"id": 90}, {"id": 1}, {"id": 3}], "x.json") == {1: 1, 3: 2, 90: 3}
    shuffled = [{"id": i} for i in OFFICIAL_IDS]
    random.Random(0).shuffle(shuffled)
    labels = category_labels(shuffled, "x.json")
    assert sorted(labels.values()) == list(range(1, 81))
    assert (labels[1], labels[11], labels[13], labels[31], labels[90]) == (1, 11, 12, 27, 80)
    with pytest.raises(DataError, match=r"x\.json: duplicate category ids"):
        category_labels([{"id": 1}, {"id": 1}], "x.json")


def test_masks_follow_overlap_and_crowd_rules(raw: CocoRaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_coco(raw.root, out, workers=0)
    for split, masks in raw.expected.items():
        assert sorted(p.stem for p in (out / "annotations" / split).iterdir()) == sorted(masks)
        for stem, expected in masks.items():
            np.testing.assert_array_equal(_mask(out, split, stem), expected, err_msg=stem)
    mask = _mask(out, "train2014", "COCO_train2014_000000000009")
    # Hand-picked pixels: small box (id 90 -> 3) on the big one (id 1 -> 1), crowd (255) only
    # where no instance covers it, background elsewhere.
    assert (mask[10, 12], mask[20, 8], mask[20, 27], mask[26, 33], mask[2, 2]) == (3, 1, 1, 255, 0)
    assert np.count_nonzero(mask == 3) == 6 * 6
    assert np.count_nonzero(mask == 255) == 12 * 12 - 6 * 8
    with Image.open(out / "annotations/train2014/COCO_train2014_000000000009.png") as image:
        assert image.info[RULES_KEY] == "1"


def test_rasterise_smaller_instance_wins_whatever_the_order() -> None:
    big = Instance(5, 1, False, rect_polygon(0, 0, 10, 10))
    small = Instance(9, 2, False, rect_polygon(2, 2, 4, 4))
    for order in ([big, small], [small, big]):
        mask = rasterise(order, 12, 12)
        assert mask[3, 3] == 2 and mask[6, 6] == 1 and mask[11, 11] == 0
    # Equal areas: ascending annotation id, so the later id lies on top.
    first = Instance(1, 1, False, rect_polygon(0, 0, 4, 4))
    second = Instance(2, 2, False, rect_polygon(2, 2, 6, 6))
    assert rasterise([second, first], 8, 8)[3, 3] == 2


def test_lists_summary_and_links(raw: CocoRaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = prepare_coco(raw.root, out, workers=0)
    # Ascending id; 25 (no annotation) and 30 (crowd only) have no labelled pixel.
    assert (out / "lists" / "train.txt").read_text().splitlines() == [
        "train2014/COCO_train2014_000000000009.jpg "
        "annotations/train2014/COCO_train2014_000000000009.png"
    ]
    assert (out / "lists" / "val.txt").read_text().splitlines() == [
        f"val2014/COCO_val2014_{i:012d}.jpg annotations/val2014/COCO_val2014_{i:012d}.png"
        for i in (42, 73)
    ]
    for folder in ("train2014", "val2014"):
        link = out / folder
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert link.resolve() == (raw.root / folder).resolve()
    for line in (out / "lists" / "val.txt").read_text().splitlines():
        assert all((out / part).is_file() for part in line.split())
    assert summary == json.loads((out / "lists" / "summary.json").read_text())
    assert summary["categories"] == [
        {"id": 1, "name": "person", "label": 1},
        {"id": 3, "name": "car", "label": 2},
        {"id": 90, "name": "toothbrush", "label": 3},
    ]
    assert summary["train2014"] == {
        "images": 3,
        "annotations": 4,
        "crowd_annotations": 2,
        "images_without_annotations": 1,
        "masks_written": 3,
        "masks_kept": 0,
        "listed": 1,
        "not_listed_no_labelled_pixel": 2,
    }
    assert summary["val2014"]["listed"] == 2


def test_resume_skips_good_masks_and_rewrites_bad_ones(raw: CocoRaw, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_coco(raw.root, out, workers=0)
    before = _mtimes(out)
    summary = prepare_coco(raw.root, out, workers=2)
    assert summary["train2014"]["masks_written"] == summary["val2014"]["masks_written"] == 0
    assert _mtimes(out) == before
    assert (out / "lists" / "val.txt").read_text().count("\n") == 2  # labelled status kept

    masks = out / "annotations"
    truncated = masks / "train2014" / "COCO_train2014_000000000009.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    wrong_size = masks / "val2014" / "COCO_val2014_000000000073.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(wrong_size)
    untagged = masks / "val2014" / "COCO_val2014_000000000042.png"  # e.g. an older tool's mask
    Image.fromarray(raw.expected["val2014"]["COCO_val2014_000000000042"]).save(untagged)
    after_damage = _mtimes(out)
    summary = prepare_coco(raw.root, out, workers=0)
    assert (summary["train2014"]["masks_written"], summary["val2014"]["masks_written"]) == (1, 2)
    after = _mtimes(out)
    changed = {k for k in after if after[k] != after_damage[k]}
    assert changed == {
        "train2014/COCO_train2014_000000000009.png",
        "val2014/COCO_val2014_000000000073.png",
        "val2014/COCO_val2014_000000000042.png",
    }
    for split, expected in raw.expected.items():
        for stem, mask in expected.items():
            np.testing.assert_array_equal(_mask(out, split, stem), mask)


def test_workers_give_the_same_output(raw: CocoRaw, tmp_path: Path) -> None:
    prepare_coco(raw.root, tmp_path / "a", workers=0)
    prepare_coco(raw.root, tmp_path / "b", workers=2)
    for name in ("train.txt", "val.txt"):
        assert (tmp_path / "a/lists" / name).read_text() == (
            tmp_path / "b/lists" / name
        ).read_text()
    for png in (tmp_path / "a" / "annotations").glob("*/*.png"):
        other = tmp_path / "b" / "annotations" / png.parent.name / png.name
        np.testing.assert_array_equal(np.array(Image.open(png)), np.array(Image.open(other)))


def _set_category(data: dict) -> None:
    data["annotations"][0]["category_id"] = 2


def _set_rle_size(data: dict) -> None:
    data["annotations"][2]["segmentation"]["size"] = [31, 40]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


TRAIN_9 = "COCO_train2014_000000000009"
BAD_INPUTS: dict[str, tuple[Callable[[CocoRaw], object], str]] = {
    "missing jpeg": (
        lambda r: (r.root / "val2014" / "COCO_val2014_000000000073.jpg").unlink(),
        r"val2014/COCO_val2014_000000000073\.jpg: image file is missing",
    ),
    "jpeg size differs from json": (
        lambda r: write_jpeg(r.root / "train2014" / f"{TRAIN_9}.jpg", 40, 31),
        rf"{TRAIN_9}\.jpg: image is 40x31 but .*instances_train2014\.json says 40x30",
    ),
    "truncated jpeg": (
        lambda r: _truncate(r.root / "train2014" / f"{TRAIN_9}.jpg"),
        rf"{TRAIN_9}\.jpg: truncated JPEG",
    ),
    "unknown category": (
        lambda r: _edit_json(r, "train2014", _set_category),
        r"instances_train2014\.json: annotation 1 has unknown category_id 2",
    ),
    "rle size differs": (
        lambda r: _edit_json(r, "train2014", _set_rle_size),
        r"instances_train2014\.json: annotation 3: RLE size \[31, 40\]",
    ),
    "categories differ between splits": (
        lambda r: _edit_json(r, "val2014", lambda d: d["categories"].pop()),
        r"instances_val2014\.json: categories differ",
    ),
    "missing json": (
        lambda r: r.json_path("val2014").unlink(),
        r"instances_val2014\.json: annotation file is missing",
    ),
    "corrupt json": (
        lambda r: r.json_path("train2014").write_text('{"images": ['),
        r"instances_train2014\.json: cannot read annotation JSON",
    ),
}
BAD_CASES = [(case, 0) for case in sorted(BAD_INPUTS)] + [
    ("truncated jpeg", 2),
    ("rle size differs", 2),
]


@pytest.mark.parametrize(("case", "workers"), BAD_CASES)
def test_bad_input_raises_naming_the_file(
    raw: CocoRaw, tmp_path: Path, case: str, workers: int
) -> None:
    out = tmp_path / "out"
    prepare_coco(raw.root, out, workers=0)  # a good run first: its lists must go
    for png in (out / "annotations").glob("*/*.png"):
        png.unlink()  # so the broken annotation is rasterised again
    breaker, pattern = BAD_INPUTS[case]
    breaker(raw)
    with pytest.raises(DataError, match=pattern):
        prepare_coco(raw.root, out, workers=workers)
    assert not any((out / "lists").iterdir())
    assert temp_files(out) == []


def test_failure_on_fresh_output_leaves_no_lists(raw: CocoRaw, tmp_path: Path) -> None:
    (raw.root / "val2014" / "COCO_val2014_000000000042.jpg").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"COCO_val2014_000000000042\.jpg: not a JPEG"):
        prepare_coco(raw.root, out, workers=2)
    assert not (out / "lists").exists() or not any((out / "lists").iterdir())
    assert temp_files(out) == []


def test_box_mask_helper_matches_pycocotools_pixel_convention() -> None:
    # The expected masks above are drawn with box_mask; pin that it agrees with the decoder.
    decoded = rasterise([Instance(1, 7, False, rect_polygon(3, 2, 9, 5))], 8, 12)
    np.testing.assert_array_equal(decoded, box_mask(8, 12, [(3, 2, 9, 5, 7)]))
