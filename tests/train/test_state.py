"""Resumable state and deterministic, sharded, skippable epoch order."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hdmnet.jobs.distributed import EpochSampler, per_process_batch
from hdmnet.train.state import (
    History,
    Position,
    ResumeStateError,
    load_state,
    save_state,
    seed_everything,
)


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


def test_state_round_trip_restores_weights_optimizer_rng_and_best_weights(tmp_path):
    seed_everything(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    # Leave a cached Gaussian in both generators that keep one.
    np.random.randn()
    random.gauss(0, 1)
    best = {k: v.clone() * 2 for k, v in model.state_dict().items()}
    path = tmp_path / "state.pth"
    history = History(0.5, 1, [{"loss": 1.0}])
    save_state(path, model, opt, Position(1, 2, 7), history, best, {"fold": 0})
    expected_next = (torch.rand(1).item(), np.random.randn(), random.gauss(0, 1))

    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    torch.rand(5)  # disturb the generators
    np.random.randn(3)
    resumed = load_state(path, other, other_opt, {"fold": 0})
    assert (torch.rand(1).item(), np.random.randn(), random.gauss(0, 1)) == expected_next
    assert resumed.position == Position(1, 2, 7) and resumed.history.best_metric == 0.5
    assert torch.equal(other.weight, model.weight)
    assert all(torch.equal(resumed.best_weights[k], v) for k, v in best.items())
    assert other_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    with pytest.raises(ResumeStateError, match="fold: saved 0, now 1"):
        load_state(path, other, other_opt, {"fold": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["state.pth"]


class _Payload:
    """Unpickling this object would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "state.pth"
    torch.save({"format": "hdmnet-train-state", "meta": _Payload(marker)}, path)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ResumeStateError, match=r"state\.pth: not a readable resume state"):
        load_state(path, model, opt, {"fold": 0})
    assert not marker.exists()


@pytest.mark.parametrize(
    "content", [b"", b"not a torch file", b"PK\x03\x04truncated zip"], ids=["empty", "text", "zip"]
)
def test_unreadable_states_name_the_file(tmp_path, content):
    path = tmp_path / "state.pth"
    path.write_bytes(content)
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ResumeStateError, match=r"state\.pth: not a readable resume state"):
        load_state(path, model, torch.optim.SGD(model.parameters(), lr=0.1), {})
