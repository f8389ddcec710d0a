"""Fold class sets (PASCAL-5i, COCO-20i FWB and PANet) and the base relabelling table."""

import numpy as np
import pytest

from hdmnet.data.folds import apply_label_map, base_label_map, fold_classes, num_classes


def test_num_classes():
    assert num_classes("pascal") == 20
    assert num_classes("coco") == 80
    with pytest.raises(ValueError, match="unknown dataset 'voc'"):
        num_classes("voc")


@pytest.mark.parametrize("fold", range(4))
def test_pascal_folds(fold):
    base, novel = fold_classes("pascal", fold)
    assert novel == [5 * fold + k for k in range(1, 6)]
    assert base == [c for c in range(1, 21) if c not in novel]


def test_pascal_fold_values_spelled_out():
    assert fold_classes("pascal", 0)[1] == [1, 2, 3, 4, 5]
    assert fold_classes("pascal", 3)[1] == [16, 17, 18, 19, 20]
    assert fold_classes("pascal", 2)[0] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 17, 18, 19, 20]


@pytest.mark.parametrize("fold", range(4))
def test_coco_fwb_folds(fold):
    base, novel = fold_classes("coco", fold, "fwb")
    assert novel == [4 * k + fold + 1 for k in range(20)]
    assert len(base) == 60 and sorted(set(base) | set(novel)) == list(range(1, 81))
    assert not set(base) & set(novel)


def test_coco_fwb_fold1_spelled_out():
    assert fold_classes("coco", 1, "fwb")[1][:4] == [2, 6, 10, 14]
    assert fold_classes("coco", 1, "fwb")[1][-1] == 78


@pytest.mark.parametrize("fold", range(4))
def test_coco_panet_folds(fold):
    base, novel = fold_classes("coco", fold, "panet")
    assert novel == list(range(20 * fold + 1, 20 * fold + 21))
    assert base == [c for c in range(1, 81) if c not in novel]


def test_novel_sets_partition_all_classes():
    for dataset, scheme in (("pascal", "fwb"), ("coco", "fwb"), ("coco", "panet")):
        novel = [c for f in range(4) for c in fold_classes(dataset, f, scheme)[1]]
        assert sorted(novel) == list(range(1, num_classes(dataset) + 1))


@pytest.mark.parametrize("fold", [-1, 4, 1.0, True, "0"])
def test_bad_fold(fold):
    with pytest.raises(ValueError, match=r"fold must be an integer in 0\.\.3"):
        fold_classes("coco", fold)


def test_bad_scheme():
    with pytest.raises(ValueError, match="unknown fold scheme 'pfenet'"):
        fold_classes("coco", 0, "pfenet")


def test_pascal_lut_fold0():
    lut = base_label_map("pascal", 0)
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[0] == 0 and lut[255] == 255
    assert lut[1:6].tolist() == [0] * 5  # novel -> background
    assert lut[6:21].tolist() == list(range(1, 16))  # base -> 1..15 in base order
    assert (lut[21:255] == 255).all()


def test_coco_fwb_lut_fold1():
    lut = base_label_map("coco", 1, "fwb")
    base, novel = fold_classes("coco", 1, "fwb")
    assert lut[base].tolist() == list(range(1, 61))
    assert (lut[novel] == 0).all()
    assert lut[1] == 1 and lut[2] == 0 and lut[3] == 2 and lut[80] == 60


def test_apply_label_map():
    lut = base_label_map("pascal", 1)  # novel 6..10
    mask = np.array([[0, 1, 6], [11, 255, 20]], dtype=np.uint8)
    assert apply_label_map(mask, lut).tolist() == [[0, 1, 0], [6, 255, 15]]
    with pytest.raises(ValueError, match="uint8"):
        apply_label_map(mask.astype(np.int32), lut)
