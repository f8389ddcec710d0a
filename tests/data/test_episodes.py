"""Episode sampling rules, determinism (also across DataLoader workers), masks, bbox supports."""

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hdmnet.data.episodes import (
    BaseDataset,
    EpisodeDataset,
    bbox_mask,
    binary_mask,
    collate,
)
from hdmnet.data.errors import DataError
from hdmnet.data.folds import base_label_map
from hdmnet.data.lists import (
    build_fold_lists,
    count_classes,
    write_fold_lists,
)
from hdmnet.data.masks import read_mask
from hdmnet.data.transforms import EvalTransform, TrainTransform

SIZE = 24


def _write(root: Path, name: str, mask: np.ndarray, rng: np.random.Generator) -> str:
    image = rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg")
    Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
    return f"JPEGImages/{name}.jpg SegmentationClassAug/{name}.png\n"


def _mask(shape, classes, rng):
    """Non-overlapping 10x10 blocks of the given classes (jittered), each with a 255 border."""
    mask = np.zeros(shape, np.uint8)
    for k, c in enumerate(classes):
        y, x = 1 + 14 * (k // 2) + rng.integers(0, 3), 1 + 14 * (k % 2) + rng.integers(0, 3)
        mask[y : y + 10, x : x + 10] = 255
        mask[y + 1 : y + 9, x + 1 : x + 9] = c
    return mask


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny PASCAL-like set: fold 0 (novel 1..5), images of two sizes, lists written to disk."""
    root = tmp_path_factory.mktemp("pascal")
    for sub in ("JPEGImages", "SegmentationClassAug", "lists"):
        (root / sub).mkdir()
    rng = np.random.default_rng(0)
    train, val = [], []
    for j in range(12):
        shape = (30, 40) if j % 2 else (36, 28)
        classes = [6 + j % 3] + ([1] if j == 11 else [])  # image 11 shows a novel class
        train.append(_write(root, f"t{j:02d}", _mask(shape, classes, rng), rng))
        classes = [j % 5 + 1] + ([(j + 2) % 5 + 1] if j % 2 == 0 else []) + [7]
        val.append(_write(root, f"v{j:02d}", _mask(shape, classes, rng), rng))
    (root / "lists" / "train.txt").write_text("".join(train))
    (root / "lists" / "val.txt").write_text("".join(val))
    ct = count_classes(root, root / "lists" / "train.txt", 20, workers=1)
    cv = count_classes(root, root / "lists" / "val.txt", 20, workers=1)
    lists = build_fold_lists(ct, cv, "pascal", 0, min_pixels=40)
    fold_dir = write_fold_lists(lists, root / "folds" / "fold0", ct, cv)
    return root, lists, fold_dir


def val_set(data, seed=7, n=30, shot=1, **kw):
    root, _, fold_dir = data
    return EpisodeDataset(root, fold_dir, "val", shot, EvalTransform(SIZE), n, seed, **kw)


def test_val_episode_contents(data):
    root, lists, _ = data
    ds = val_set(data)
    assert len(ds) == 30 and len(lists.val.items) == 12
    for i in range(30):
        sample = ds[i]
        recipe = ds.episode_recipe(i)
        assert recipe.query == lists.val.items[i % 12]  # in order, cycling
        assert sample["query_name"] == recipe.query.image
        c = sample["class_id"]
        assert c == recipe.class_id and c in lists.val.item_classes[i % 12]
        assert sample["class_index"] == [1, 2, 3, 4, 5].index(c)
        assert recipe.query not in recipe.supports
        assert all(s in lists.val.class_files(c) for s in recipe.supports)
        assert sample["query"].shape == (3, SIZE, SIZE) and sample["query"].dtype == torch.float32
        assert sample["supports"].shape == (1, 3, SIZE, SIZE)
        assert sample["support_masks"].shape == (1, SIZE, SIZE)
        assert sample["query_mask"].dtype == torch.long
        assert set(sample["query_mask"].unique().tolist()) <= {0, 1, 255}
        assert 1 in sample["query_mask"] and 1 in sample["support_masks"]
        original = read_mask(root / recipe.query.mask)
        assert torch.equal(sample["label"], torch.from_numpy(binary_mask(original, c)).long())
        assert sample["support_names"] == [s.image for s in recipe.supports]


def test_binary_mask_keeps_ignore():
    mask = np.array([[0, 3, 255], [7, 3, 0]], np.uint8)
    assert binary_mask(mask, 3).tolist() == [[0, 1, 255], [0, 1, 0]]


def test_multi_shot_supports_distinct(data):
    root, lists, _ = data
    # Every base class of the training list has 3 or 4 images: 2 shots is the most it allows.
    ds = EpisodeDataset(root, lists, "train", 2, EvalTransform(SIZE), seed=1)
    for i in range(len(ds)):
        recipe = ds.episode_recipe(i)
        assert len(set(recipe.supports)) == 2 and recipe.query not in recipe.supports


def test_evaluation_episodes_are_pure_functions_of_seed_and_index(data):
    a, b = val_set(data, seed=7), val_set(data, seed=7)
    recipes = [a.episode_recipe(i) for i in range(30)]
    assert [b.episode_recipe(i) for i in reversed(range(30))][::-1] == recipes
    for i in (0, 13, 29):
        x, y = a[i], b[i]
        for key in ("query", "query_mask", "supports", "support_masks", "label"):
            assert torch.equal(x[key], y[key])
    other = val_set(data, seed=8)
    assert [other.episode_recipe(i) for i in range(30)] != recipes


def batches(ds, workers):
    loader = DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=collate)
    return list(loader)


def test_determinism_across_worker_counts(data):
    ds = val_set(data, n=12)
    serial, parallel = batches(ds, 0), batches(ds, 2)
    assert len(serial) == len(parallel) == 3
    for x, y in zip(serial, parallel, strict=True):
        assert torch.equal(x["query"], y["query"])
        assert torch.equal(x["supports"], y["supports"])
        assert torch.equal(x["class_id"], y["class_id"])
        assert x["support_names"] == y["support_names"]
        assert all(torch.equal(p, q) for p, q in zip(x["label"], y["label"], strict=True))


def test_collate_keeps_original_size_labels_as_list(data):
    ds = val_set(data, n=4)
    batch = collate([ds[0], ds[1]])
    assert batch["query"].shape == (2, 3, SIZE, SIZE)
    assert batch["class_index"].dtype == torch.long and batch["class_index"].shape == (2,)
    assert isinstance(batch["label"], list)
    assert batch["label"][0].shape == (36, 28) and batch["label"][1].shape == (30, 40)


def test_training_epochs_and_base_masks(data):
    root, lists, _ = data
    ds = EpisodeDataset(root, lists, "train", 1, TrainTransform(SIZE), seed=3)
    assert len(ds) == len(lists.train.items) == 11  # image 11 holds novel class 1: excluded
    epoch0 = [ds.episode_recipe(i) for i in range(len(ds))]
    sample0 = ds[4]
    ds.set_epoch(1)
    epoch1 = [ds.episode_recipe(i) for i in range(len(ds))]
    assert epoch1 != epoch0 and [r.query for r in epoch1] == [r.query for r in epoch0]
    ds.set_epoch(0)
    assert torch.equal(ds[4]["query"], sample0["query"])
    assert sample0["class_index"] == lists.base.index(sample0["class_id"])
    assert "label" not in sample0
    # Base mask: base classes 6.. -> 1.., as the lookup table says, after the same resize.
    plain = EpisodeDataset(root, lists, "train", 1, EvalTransform(SIZE), seed=3)
    lut = base_label_map("pascal", 0)
    for i in range(len(plain)):
        query = plain.episode_recipe(i).query
        resized = cv2.resize(
            read_mask(root / query.mask), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST
        )
        assert np.array_equal(plain[i]["query_base_mask"].numpy(), lut[resized])


def test_base_dataset_labels_are_the_folds_relabelling(data):
    root, lists, _ = data
    lut = base_label_map("pascal", 0)
    a = BaseDataset(root, lists.train.items, lut, EvalTransform(SIZE), keep_label=True)
    for i in range(len(a)):
        original = read_mask(root / lists.train.items[i].mask)
        assert np.array_equal(a[i]["label"].numpy(), lut[original])
    assert set(a[0]["mask"].unique().tolist()) <= set(range(16)) | {255}
    assert a[0]["label"].shape == read_mask(root / lists.train.items[0].mask).shape


def test_base_dataset_reproducible_by_epoch(data):
    root, lists, _ = data
    lut = base_label_map("pascal", 0)
    ds = BaseDataset(root, lists.train.items, lut, TrainTransform(SIZE, crop=True), seed=2)
    first = ds[3]
    assert first["image"].shape == (3, SIZE, SIZE) and first["mask"].shape == (SIZE, SIZE)
    assert torch.equal(ds[3]["image"], first["image"])
    ds.set_epoch(5)
    assert not torch.equal(ds[3]["image"], first["image"])


def test_too_few_images_for_shot_names_class_and_list(data):
    _, lists, fold_dir = data
    counts = {c: len(ix) for c, ix in lists.val.class_items.items()}
    short = min(counts, key=counts.get)
    listed = re.escape(str(fold_dir / "val.txt"))
    with pytest.raises(
        DataError, match=rf"class {short} has {counts[short]} image\(s\) in {listed}"
    ):
        val_set(data, shot=counts[short])
    assert len(val_set(data, shot=counts[short] - 1)) == 30  # the query plus shot supports fit


def test_bbox_mask_fills_component_boxes():
    mask = np.zeros((10, 12), np.uint8)
    mask[1:3, 1:4] = 1
    mask[2, 2] = 0  # hole inside the first object: filled by its box
    mask[5:9, 6] = 1
    mask[8, 6:10] = 1  # an L shape: one component, box 5..8 x 6..9
    mask[0, 11] = 255
    mask[6, 7] = 255  # ignore inside a box becomes foreground
    out = bbox_mask(mask)
    expected = np.zeros_like(mask)
    expected[1:3, 1:4] = 1
    expected[5:9, 6:10] = 1
    expected[0, 11] = 255
    assert np.array_equal(out, expected)
    assert not bbox_mask(np.zeros((4, 4), np.uint8)).any()


def test_bbox_supports(data):
    root, _, _ = data
    ds = val_set(data, annotation="bbox")
    for i in range(6):
        recipe = ds.episode_recipe(i)
        support = read_mask(root / recipe.supports[0].mask)
        expected = bbox_mask(binary_mask(support, recipe.class_id))
        expected = cv2.resize(expected, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        sample = ds[i]
        assert np.array_equal(sample["support_masks"][0].numpy(), expected)
        plain = val_set(data)[i]  # the query side is unchanged by the support annotation type
        assert torch.equal(sample["query_mask"], plain["query_mask"])


def test_bad_arguments(data):
    with pytest.raises(ValueError, match="annotation"):
        val_set(data, annotation="scribble")
    with pytest.raises(ValueError, match="shot"):
        val_set(data, shot=0)
    with pytest.raises(ValueError, match="mode"):
        EpisodeDataset(data[0], data[1], "test", 1, EvalTransform(SIZE))
    with pytest.raises(IndexError):
        val_set(data, n=5).episode_recipe(5)


def test_image_mask_size_mismatch_names_both_files(data, tmp_path):
    root, lists, _ = data
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClassAug").mkdir()
    for item in lists.val.items:
        for rel in (item.image, item.mask):
            (tmp_path / rel).write_bytes((root / rel).read_bytes())
    first = lists.val.items[0]
    Image.new("RGB", (5, 5)).save(tmp_path / first.image, format="JPEG")
    ds = EpisodeDataset(tmp_path, lists, "val", 1, EvalTransform(SIZE), 1)
    with pytest.raises(DataError, match=r"v00\.jpg is 5x5 but its mask .*v00\.png is 28x36"):
        ds[0]


def _count_reads(monkeypatch) -> list[str]:
    import hdmnet.data.episodes as episodes

    reads: list[str] = []
    real = episodes.read_image

    def counting(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(episodes, "read_image", counting)
    return reads


@pytest.mark.parametrize("kind", ["episodes", "base"])
def test_kept_pairs_give_the_same_samples_and_are_read_once(data, monkeypatch, kind):
    """A training set may keep the decoded images and masks (``cache_mb``): every sample of
    every epoch is the same as without, and each file is read once; kept arrays are read-only,
    so no transform can change what a later epoch gets."""
    root, lists, _ = data
    lut = base_label_map("pascal", 0)

    def make(cache_mb: int):
        if kind == "episodes":
            transform = TrainTransform(SIZE)
            return EpisodeDataset(root, lists, "train", 2, transform, seed=3, cache_mb=cache_mb)
        transform = TrainTransform(SIZE, crop=True)
        items = lists.train.items
        return BaseDataset(root, items, lut, transform, seed=2, cache_mb=cache_mb)

    plain, kept = make(0), make(1)
    expected = []
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        expected += [plain[i] for i in range(len(plain))]
    reads = _count_reads(monkeypatch)
    got = []
    for epoch in (0, 1):
        kept.set_epoch(epoch)
        got += [kept[i] for i in range(len(kept))]
    for a, b in zip(expected, got, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert sorted(reads) == sorted(set(reads))  # each image read once, over both epochs
    assert len(reads) == len({item.image for item in lists.train.items})


def test_a_budget_smaller_than_a_pair_keeps_nothing(data, monkeypatch):
    root, lists, _ = data
    lut = base_label_map("pascal", 0)
    ds = BaseDataset(root, lists.train.items, lut, EvalTransform(SIZE), cache_mb=0)
    reads = _count_reads(monkeypatch)
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert len(reads) == 2 * len(ds)
