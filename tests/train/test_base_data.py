"""The base learner's training images (``base.<dataset>.images``): ``all``, BAM's protocol (spec
PAPER.md), every image of the full training list with novel classes as background; ``base_only``,
only images whose classes are all base, whatever ``data.exclude_novel`` says for meta-training."""

from __future__ import annotations

import numpy as np
import pytest

from hdmnet import layout
from hdmnet.data.episodes import load_pair
from hdmnet.data.folds import apply_label_map, fold_classes
from hdmnet.data.lists import full_list, read_list
from hdmnet.jobs.inputs import dataset_root
from hdmnet.layout import BaseRun
from hdmnet.train.base import base_datasets

FOLD = 0
BASE = BaseRun("pascal", "small", FOLD, 321)


def lines(items) -> list[str]:
    return [item.line for item in items]


def novel_images(root, train_set) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mask, relabelled mask) of the training images that hold a novel class."""
    novel = fold_classes("pascal", FOLD)[1]
    found = []
    for item in train_set.items:
        _, mask = load_pair(root, item, 20)
        if np.isin(mask, novel).any():
            found.append((mask, apply_label_map(mask, train_set.lut)))
    return found


def test_all_images_is_the_full_training_list_with_novel_classes_as_background(embedded_data):
    params = embedded_data.with_overrides(["base.pascal.images=all"])
    root = dataset_root(params, "pascal")
    train_set, val_set = base_datasets(params, BASE)
    assert lines(train_set.items) == lines(read_list(full_list(root, "train")))
    assert lines(val_set.items) == lines(read_list(full_list(root, "val")))
    fold_list = read_list(layout.fold_dir(params, "pascal", FOLD) / "train.txt")
    assert len(train_set.items) > len(fold_list)

    base, novel = fold_classes("pascal", FOLD)
    with_novel = novel_images(root, train_set)
    assert len(with_novel) > 0.2 * len(train_set.items)
    for mask, relabelled in with_novel:
        assert (relabelled[np.isin(mask, novel)] == 0).all()
        for index, label in enumerate(base, start=1):
            assert (relabelled[mask == label] == index).all()


@pytest.mark.parametrize("exclude_novel", [True, False])
def test_base_only_never_shows_a_novel_class(embedded_data, exclude_novel):
    rule = str(exclude_novel).lower()
    params = embedded_data.with_overrides(
        [
            "base.pascal.images=base_only",
            f"data.exclude_novel={rule}",
            # The ablation variant flips the rule: it must differ from the full model's.
            f"variants.no_exclusion={{data.exclude_novel: {str(not exclude_novel).lower()}}}",
        ]
    )
    root = dataset_root(params, "pascal")
    train_set, val_set = base_datasets(params, BASE)
    excluding = layout.fold_dir(params, "pascal", FOLD, exclude_novel=True) / "train.txt"
    assert lines(train_set.items) == lines(read_list(excluding))
    assert novel_images(root, train_set) == []
    assert lines(val_set.items) == lines(read_list(full_list(root, "val")))
