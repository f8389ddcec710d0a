"""Pixel counts, fold lists (threshold, novel exclusion, 255), their files, base annotations."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hdmnet.data.errors import DataError
from hdmnet.data.lists import (
    ListItem,
    build_fold_lists,
    count_classes,
    fold_summary,
    load_counts,
    load_fold_lists,
    read_list,
    save_counts,
    write_fold_lists,
)
from hdmnet.data.masks import class_pixel_counts, read_image, read_mask


def make_mask(*regions: tuple[int, int], shape=(64, 64)) -> np.ndarray:
    """A mask whose flat pixels are filled, in order, with (class, pixel count) runs."""
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    start = 0
    for cls, count in regions:
        flat[start : start + count] = cls
        start += count
    return flat.reshape(shape)


def write_split(root: Path, masks: dict[str, np.ndarray], list_name: str) -> Path:
    """Write masks (and blank JPEG images) in the PASCAL layout, plus a full list."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, mask in masks.items():
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
        Image.new("RGB", mask.shape[::-1]).save(root / "JPEGImages" / f"{name}.jpg")
        lines.append(f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png\n")
    path = root / "lists" / list_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


# PASCAL fold 0: novel 1..5, base 6..20.
TRAIN_MASKS = {
    "a": make_mask((6, 2048)),  # exactly at the threshold: kept
    "b": make_mask((7, 2047)),  # one pixel short: not listed
    "c": make_mask((8, 2048), (1, 10)),  # a few novel pixels: dropped only with exclusion
    "d": make_mask((9, 3000), (10, 100)),  # kept for 9 only
    "e": make_mask((255, 3000)),  # ignore only: never a class
    "f": make_mask((255, 1000), (11, 2048)),  # 255 does not count, 11 passes
}
VAL_MASKS = {
    "v1": make_mask((1, 2048), (6, 3000)),  # novel passes; base pixels do not filter val
    "v2": make_mask((2, 2047)),
    "v3": make_mask((6, 4000)),
    "v4": make_mask((3, 2048), (2, 2048)),  # fills the whole mask
}


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    root = tmp_path_factory.mktemp("pascal")
    train_list = write_split(root, TRAIN_MASKS, "train.txt")
    val_list = write_split(root, VAL_MASKS, "val.txt")
    counts_train = count_classes(root, train_list, 20, workers=1)
    counts_val = count_classes(root, val_list, 20, workers=1)
    return root, counts_train, counts_val


def names(items):
    return [Path(item.image).stem for item in items]


def test_class_pixel_counts_bincount():
    counts = class_pixel_counts(make_mask((3, 5), (255, 7), (20, 2)), 20)
    assert counts.shape == (21,) and counts.dtype == np.int64
    assert counts[3] == 5 and counts[20] == 2 and counts[0] == 64 * 64 - 14


def test_counts_threshold_and_ignore(pascal):
    _, counts, _ = pascal
    row = dict(zip(names(counts.items), counts.counts, strict=True))
    assert row["a"][6] == 2048 and row["b"][7] == 2047
    assert row["e"][1:].sum() == 0 and counts.ignore[names(counts.items).index("e")] == 3000


def test_train_list_with_exclusion(pascal):
    _, ct, cv = pascal
    lists = build_fold_lists(ct, cv, "pascal", 0)
    assert names(lists.train.items) == ["a", "d", "f"]
    assert names(lists.train.class_files(6)) == ["a"]
    assert lists.train.class_files(7) == []  # 2047 < 2048
    assert names(lists.train.class_files(9)) == ["d"]
    assert lists.train.class_files(10) == []
    assert names(lists.train.class_files(11)) == ["f"]
    assert lists.train.item_classes == ((6,), (9,), (11,))
    assert sorted(lists.train.class_items) == list(range(6, 21))


def test_train_list_without_exclusion_keeps_novel_images(pascal):
    _, ct, cv = pascal
    lists = build_fold_lists(ct, cv, "pascal", 0, exclude_novel=False)
    assert names(lists.train.items) == ["a", "c", "d", "f"]
    assert names(lists.train.class_files(8)) == ["c"]


def test_val_list(pascal):
    _, ct, cv = pascal
    lists = build_fold_lists(ct, cv, "pascal", 0)
    assert names(lists.val.items) == ["v1", "v4"]  # list order kept
    assert names(lists.val.class_files(1)) == ["v1"]
    assert names(lists.val.class_files(2)) == ["v4"]  # v2 has 2047
    assert names(lists.val.class_files(3)) == ["v4"]
    assert lists.val.item_classes == ((1,), (2, 3))
    assert sorted(lists.val.class_items) == [1, 2, 3, 4, 5]


def test_same_counts_serve_other_folds(pascal):
    _, ct, cv = pascal
    lists = build_fold_lists(ct, cv, "pascal", 1)  # novel 6..10
    # a (6), c (8), d (9, 10) hold novel classes now; b (7) is below the threshold anyway.
    assert names(lists.train.items) == ["f"]
    # Without exclusion c still fails: its only base class (1) has 10 pixels.
    assert names(build_fold_lists(ct, cv, "pascal", 1, exclude_novel=False).train.items) == ["f"]
    assert names(lists.val.items) == ["v1", "v3"]
    assert lists.val.item_classes == ((6,), (6,))


def test_min_pixels_parameter(pascal):
    _, ct, cv = pascal
    lists = build_fold_lists(ct, cv, "pascal", 0, min_pixels=100)
    assert names(lists.train.class_files(10)) == ["d"]
    with pytest.raises(ValueError, match="min_pixels"):
        build_fold_lists(ct, cv, "pascal", 0, min_pixels=0)


def test_counts_class_mismatch(pascal):
    _, ct, cv = pascal
    with pytest.raises(ValueError, match="for 20 classes, but coco has 80"):
        build_fold_lists(ct, cv, "coco", 0)


def test_parallel_counts_equal_serial(pascal):
    root, ct, _ = pascal
    parallel = count_classes(root, root / "lists" / "train.txt", 20, workers=2)
    assert parallel.items == ct.items
    assert np.array_equal(parallel.counts, ct.counts)
    assert np.array_equal(parallel.ignore, ct.ignore)


def test_counts_roundtrip(pascal, tmp_path):
    _, ct, _ = pascal
    save_counts(ct, tmp_path / "counts.jsonl")
    lines = (tmp_path / "counts.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["num_classes"] == 20
    assert json.loads(lines[6]) == {
        "image": "JPEGImages/f.jpg",
        "mask": "SegmentationClassAug/f.png",
        "counts": {"0": 4096 - 3048, "11": 2048, "255": 1000},
    }
    back = load_counts(tmp_path / "counts.jsonl")
    assert back.items == ct.items and back.source == ct.source
    assert np.array_equal(back.counts, ct.counts) and np.array_equal(back.ignore, ct.ignore)


def test_load_counts_bad_record(tmp_path):
    path = tmp_path / "counts.jsonl"
    header = '{"format": "hdmnet-pixel-counts", "version": 1, "num_classes": 20, "list": "x"}'
    path.write_text(header + '\n{"image": "i", "mask": "m", "counts": {"37": 5}}\n')
    with pytest.raises(DataError, match=r"counts.jsonl:2: .*class id 37"):
        load_counts(path)
    path.write_text('{"format": "other"}\n')
    with pytest.raises(DataError, match="not a pixel counts file"):
        load_counts(path)


def test_write_and_load_fold_lists(pascal, tmp_path):
    _, ct, cv = pascal
    lists = build_fold_lists(ct, cv, "pascal", 0)
    out = write_fold_lists(lists, tmp_path / "fold0", ct, cv)
    assert (out / "train.txt").read_text() == (
        "JPEGImages/a.jpg SegmentationClassAug/a.png\n"
        "JPEGImages/d.jpg SegmentationClassAug/d.png\n"
        "JPEGImages/f.jpg SegmentationClassAug/f.png\n"
    )
    classes = json.loads((out / "val_classes.json").read_text())
    assert list(classes) == ["1", "2", "3", "4", "5"]
    assert classes["2"] == ["JPEGImages/v4.jpg SegmentationClassAug/v4.png"]
    train_keys = list(json.loads((out / "train_classes.json").read_text()))
    assert train_keys == [str(c) for c in range(6, 21)]  # numeric order, diffable
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train"]["images"] == 3 and summary["val"]["images"] == 2
    assert summary["train"]["class_files"]["6"] == 1 and summary["train"]["pairs"] == 3
    assert summary["train"]["full_list_images"] == 6
    assert summary["train"]["excluded_for_novel_pixels"] == 1  # image c
    assert summary["novel_classes"] == [1, 2, 3, 4, 5]
    back = load_fold_lists(out)
    for mode in ("train", "val"):
        assert back.split(mode).items == lists.split(mode).items
        assert back.split(mode).item_classes == lists.split(mode).item_classes
    assert (back.dataset, back.fold, back.scheme, back.exclude_novel) == ("pascal", 0, "fwb", True)
    assert not list(out.glob(".*.tmp"))


def test_load_fold_lists_inconsistent_class_file(pascal, tmp_path):
    _, ct, cv = pascal
    out = write_fold_lists(build_fold_lists(ct, cv, "pascal", 0), tmp_path / "f")
    classes = json.loads((out / "val_classes.json").read_text())
    classes["1"].append("JPEGImages/zz.jpg SegmentationClassAug/zz.png")
    (out / "val_classes.json").write_text(json.dumps(classes))
    with pytest.raises(
        DataError, match=r"val_classes.json: class 1 lists .*zz.jpg.*not in .*val.txt"
    ):
        load_fold_lists(out)


def test_fold_summary_without_counts(pascal):
    _, ct, cv = pascal
    summary = fold_summary(build_fold_lists(ct, cv, "pascal", 0, exclude_novel=False))
    assert summary["train"]["images"] == 4 and "full_list_images" not in summary["train"]


# --- bad inputs ---------------------------------------------------------------------------


def test_unknown_class_id_names_file(tmp_path):
    path = write_split(tmp_path, {"x": make_mask((6, 2048)), "y": make_mask((37, 5))}, "t.txt")
    with pytest.raises(DataError, match=r"y\.png contains unknown class id\(s\) \[37\]"):
        count_classes(tmp_path, path, 20, workers=1)
    with pytest.raises(DataError, match=r"y\.png contains unknown class id\(s\) \[37\]"):
        count_classes(tmp_path, path, 20, workers=2)
    with pytest.raises(DataError, match=r"y\.png contains unknown class id"):
        read_mask(tmp_path / "SegmentationClassAug" / "y.png", 20)
    assert read_mask(tmp_path / "SegmentationClassAug" / "y.png", 80)[0, 0] == 37


def test_unreadable_mask_names_file(tmp_path):
    path = write_split(tmp_path, {"x": make_mask((6, 2048))}, "t.txt")
    (tmp_path / "SegmentationClassAug" / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot read mask .*x\.png"):
        count_classes(tmp_path, path, 20, workers=1)


def test_truncated_mask_names_file(tmp_path):
    mask = np.random.default_rng(0).integers(0, 21, (64, 64), dtype=np.uint8)
    Image.fromarray(mask, mode="L").save(tmp_path / "m.png")
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "m.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read mask .*m\.png"):
        read_mask(tmp_path / "m.png")


def test_low_bit_depth_png_not_read_by_fast_path(tmp_path):
    # A 1-bit PNG: OpenCV would expand it to 0/255; it must go through PIL and be rejected.
    Image.fromarray(np.eye(8, dtype=bool)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match=r"b\.png has image mode '1'"):
        read_mask(tmp_path / "b.png")


def test_histogram_exact_for_huge_masks():
    mask = np.zeros((4200, 4000), np.uint8)  # above 2**24 pixels: float32 bins would round
    mask[0, :7] = 5
    counts = class_pixel_counts(mask, 20)
    assert counts[5] == 7 and counts[0] == mask.size - 7


def test_rgb_mask_rejected(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m\.png has image mode 'RGB'"):
        read_mask(tmp_path / "m.png")


def test_palette_mask_read_as_indices(tmp_path):
    img = Image.fromarray(np.array([[0, 15], [255, 3]], dtype=np.uint8), mode="L").convert("P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    img.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[0, 15], [255, 3]]


def test_missing_files_named(tmp_path):
    path = write_split(tmp_path, {"x": make_mask((6, 2048))}, "t.txt")
    (tmp_path / "JPEGImages" / "x.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*x\.jpg"):
        count_classes(tmp_path, path, 20, workers=1)
    assert count_classes(tmp_path, path, 20, workers=1, check_images=False).counts[0, 6] == 2048
    with pytest.raises(FileNotFoundError, match=r"mask file not found: .*nope\.png"):
        read_mask(tmp_path / "nope.png")


def test_truncated_image_names_file(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "i.jpg"
    )
    data = (tmp_path / "i.jpg").read_bytes()
    (tmp_path / "i.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read image .*i\.jpg"):
        read_image(tmp_path / "i.jpg")


def test_bad_list_lines(tmp_path):
    (tmp_path / "l.txt").write_text("a.jpg a.png\nb.jpg\n")
    with pytest.raises(DataError, match=r"l\.txt:2: expected 'image_path mask_path'"):
        read_list(tmp_path / "l.txt")
    (tmp_path / "l.txt").write_text("a.jpg a.png\n\nb.jpg b.png\na.jpg a.png\n")
    with pytest.raises(DataError, match=r"l\.txt:4: duplicate of line 1"):
        read_list(tmp_path / "l.txt")
    (tmp_path / "l.txt").write_text("a.jpg a.png\n\n")
    assert read_list(tmp_path / "l.txt") == [ListItem("a.jpg", "a.png")]
