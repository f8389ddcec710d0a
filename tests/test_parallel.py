"""Process pools: results in order, small inputs stay in-process, errors propagate."""

from __future__ import annotations

import os

import pytest

from hdmnet import parallel


def pid_of(_: int) -> int:
    return os.getpid()


def square(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x * x


def test_parallel_map_keeps_order_and_uses_workers():
    assert parallel.parallel_map(square, list(range(50)), 2, "squares") == [
        x * x for x in range(50)
    ]
    assert os.getpid() not in set(parallel.parallel_map(pid_of, list(range(8)), 2, "pids"))


def test_small_inputs_run_in_process(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_JOBS_PER_WORKER", 400)
    assert set(parallel.parallel_map(pid_of, list(range(100)), 2, "pids")) == {os.getpid()}


def test_worker_errors_reach_the_caller():
    with pytest.raises(ValueError, match="negative input -3"):
        parallel.parallel_map(square, [1, 2, -3, 4], 2, "squares")


def test_negative_worker_count_is_refused():
    with pytest.raises(ValueError, match="workers must be >= 0"):
        parallel.resolve_workers(-1)
