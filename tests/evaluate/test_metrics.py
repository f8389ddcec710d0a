"""Metrics on hand-built predictions with hand-computed IoUs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hdmnet.evaluate.metrics import (
    FewShotMeter,
    SemanticMeter,
    class_prediction,
    intersection_union,
    upsample_to_label,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.long)


def test_intersection_union_ignores_255():
    pred = t([[1, 1, 0], [0, 1, 1]])
    label = t([[1, 0, 0], [255, 1, 255]])
    inter, union = intersection_union(pred, label, 2)
    # valid pixels: (1,1) (1,0) (0,0) (1,1): fg inter 2, fg union 3; bg inter 1, bg union 2
    assert inter.tolist() == [1, 2]
    assert union.tolist() == [2, 3]


def test_few_shot_meter_accumulates_per_class_then_averages():
    meter = FewShotMeter(num_classes=2)
    # class 0, episode 1: fg inter 1, union 2; episode 2: fg inter 2, union 2 -> IoU 3/4
    meter.update(0, t([[1, 1, 0, 0]]), t([[1, 0, 0, 0]]))
    meter.update(0, t([[1, 1, 0, 0]]), t([[1, 1, 0, 0]]))
    # class 1: fg inter 0, union 1 -> IoU 0
    meter.update(1, t([[0, 0, 0, 0]]), t([[0, 0, 1, 0]]))
    assert meter.class_iou().tolist() == [0.75, 0.0]
    assert meter.miou() == pytest.approx(0.375)
    # FB: fg inter 3 / union 5; bg: ep1 inter 2 union 3, ep2 inter 2 union 2, ep3 inter 3 union 4
    assert meter.fbiou() == pytest.approx((3 / 5 + 7 / 9) / 2)
    assert meter.episodes == 3


def test_meter_merge_equals_single_meter():
    rng = np.random.default_rng(0)
    single, left, right = FewShotMeter(3), FewShotMeter(3), FewShotMeter(3)
    for i in range(10):
        pred = torch.from_numpy(rng.integers(0, 2, (5, 6)))
        label = torch.from_numpy(rng.choice([0, 1, 255], (5, 6)))
        single.update(i % 3, pred, label)
        (left if i < 5 else right).update(i % 3, pred, label)
    left.merge(right)
    assert np.array_equal(left.class_inter, single.class_inter)
    assert left.miou() == single.miou() and left.fbiou() == single.fbiou()


def test_bad_class_index_and_shape_mismatch():
    meter = FewShotMeter(2)
    with pytest.raises(ValueError, match="class index 2"):
        meter.update(2, t([[1]]), t([[1]]))
    with pytest.raises(ValueError, match="shape"):
        meter.update(0, t([[1, 0]]), t([[1]]))


def test_semantic_meter_excludes_background():
    meter = SemanticMeter(3)
    meter.update(t([[0, 1, 2, 2]]), t([[0, 1, 1, 2]]))
    # class1: inter 1 union 2 = .5; class2: inter 1 union 2 = .5; bg: inter 1 union 1
    assert meter.miou() == pytest.approx(0.5)
    assert meter.miou(exclude_background=False) == pytest.approx(2 / 3)
    empty = SemanticMeter(4)
    empty.update(t([[0]]), t([[0]]))
    assert math.isnan(empty.class_iou()[3]) and empty.miou() == 0.0


def test_upsampling_to_original_label_size():
    # A 2x2 logit map whose foreground wins on the right column, scored on a 3x5 label.
    logits = torch.tensor([[[[1.0, -1.0], [1.0, -1.0]], [[-1.0, 1.0], [-1.0, 1.0]]]])
    up = upsample_to_label(logits, (3, 5))
    assert up.shape == (1, 2, 3, 5)
    pred = up.argmax(1)[0]
    # align_corners=True: column x maps to 0.25*x; the middle column is a tie (0 wins argmax)
    assert pred.tolist() == [[0, 0, 0, 1, 1]] * 3
    label = t([[0, 0, 1, 1, 255]] * 3)
    meter = FewShotMeter(1)
    meter.update(0, pred, label)
    assert meter.class_iou()[0] == pytest.approx(3 / 6)


def test_class_prediction_is_argmax_over_the_classes_ties_to_the_lowest():
    logits = torch.tensor(
        [[[0.0, 2.0], [1.0, 1.0]], [[1.0, 2.0], [0.5, 1.0]], [[0.5, -1.0], [1.0, 3.0]]]
    )
    # Pixel (0, 1): classes 0 and 1 tie at 2.0; (1, 0): classes 0 and 2 tie at 1.0.
    assert torch.equal(class_prediction(logits), t([[1, 0], [0, 2]]))
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(16, 37, 41, generator=g)
    tied = torch.randint(0, 3, (16, 37, 41), generator=g).float()  # many ties
    for scores in (dense, tied):
        assert torch.equal(class_prediction(scores), scores.argmax(0))
