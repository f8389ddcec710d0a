"""Base-learner validation: batched, inputs kept across epochs within the memory budget, and the
same counts as scoring one image at a time."""

from __future__ import annotations

import numpy as np
import torch

from hdmnet.evaluate.metrics import intersection_union, upsample_to_label
from hdmnet.jobs.distributed import DistInfo
from hdmnet.train.base import BaseValidation

CLASSES = 4
INFO = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


class CountingSet:
    """Validation samples of varied original label sizes; counts how often each is read."""

    num_classes = CLASSES

    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.samples = []
        for index in range(count):
            label = torch.randint(0, CLASSES, (20 + index, 30 - index), generator=generator)
            label[0, :5] = 255  # ignored pixels
            image = torch.randn(3, 16, 16, generator=generator)
            self.samples.append({"image": image, "label": label})
        self.reads = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        self.reads += 1
        return self.samples[index]


def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Conv2d(3, CLASSES, 3, padding=1).eval()


def one_at_a_time(net: torch.nn.Module, val_set: CountingSet) -> tuple[np.ndarray, np.ndarray]:
    inter, union = np.zeros(CLASSES, np.int64), np.zeros(CLASSES, np.int64)
    with torch.no_grad():
        for sample in val_set.samples:
            logits = upsample_to_label(net(sample["image"][None]), tuple(sample["label"].shape))
            i, u = intersection_union(logits[0].argmax(0), sample["label"], CLASSES)
            inter, union = inter + i, union + u
    return inter, union


def test_batched_validation_counts_like_one_image_at_a_time():
    val_set, net = CountingSet(11), model()
    meter = BaseValidation(val_set, INFO, budget_mb=64, batch_size=4)(net)
    inter, union = one_at_a_time(net, val_set)
    np.testing.assert_array_equal(meter.inter, inter)
    np.testing.assert_array_equal(meter.union, union)
    assert union[1:].min() > 0


def test_inputs_are_read_once_within_the_budget_and_every_time_beyond_it():
    net = model()
    kept_set = CountingSet(6)
    kept = BaseValidation(kept_set, INFO, budget_mb=64, batch_size=4)
    first, second = kept(net), kept(net)
    assert kept_set.reads == 6
    np.testing.assert_array_equal(first.inter, second.inter)
    streamed_set = CountingSet(6)
    streamed = BaseValidation(streamed_set, INFO, budget_mb=0, batch_size=4)
    third, fourth = streamed(net), streamed(net)
    assert streamed_set.reads == 12
    np.testing.assert_array_equal(third.union, first.union)
    np.testing.assert_array_equal(fourth.inter, first.inter)


def test_validation_restores_training_mode():
    net = model().train()
    BaseValidation(CountingSet(2), INFO, budget_mb=1)(net)
    assert net.training
