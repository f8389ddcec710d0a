"""Resumable state and deterministic, sharded, skippable epoch order."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from hdmnet.train.distributed import EpochSampler, per_process_batch
from hdmnet.train.state import History, Position, load_state, save_state, seed_everything


def test_epoch_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(a) == list(range(10))


def test_shards_cover_everything_and_skip_resumes_mid_epoch():
    shards = [EpochSampler(10, seed=1, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(5)
    seen = [i for s in shards for i in s]
    assert set(seen) == set(range(10)) and len(seen) == 12  # padded to 3 x 4
    full = list(shards[0])
    shards[0].set_epoch(5, skip_items=2)
    assert list(shards[0]) == full[2:] and len(shards[0]) == 2


def test_per_process_batch_requires_divisibility():
    assert per_process_batch(8, 4) == 2
    with pytest.raises(ValueError, match="not divisible by 3"):
        per_process_batch(8, 3)


def test_state_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    seed_everything(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "state.pth"
    save_state(path, model, opt, Position(1, 2, 7), History(0.5, 1, [{"loss": 1.0}]), {"fold": 0})
    expected_next = (torch.rand(1).item(), np.random.rand(), random.random())

    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    torch.rand(5)  # disturb the generators
    position, history = load_state(path, other, other_opt, {"fold": 0})
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == expected_next
    assert position == Position(1, 2, 7) and history.best_metric == 0.5
    assert torch.equal(other.weight, model.weight)
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    with pytest.raises(ValueError, match="fold: saved 0, now 1"):
        load_state(path, other, other_opt, {"fold": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["state.pth"]
