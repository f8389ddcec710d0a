"""Process pools: results in order, small inputs stay in-process, errors propagate."""

from __future__ import annotations

import os
import threading

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


def test_a_failing_job_among_many_pending_ones_neither_hangs_nor_runs_the_rest():
    # multiprocessing.Pool could hang for good on exit here (terminate with a blocked feeder).
    outcome: dict[str, object] = {}

    def run() -> None:
        jobs = [1] * 20 + [-3] + [1] * 4000
        try:
            with parallel.worker_pool(2) as pool:
                for _ in parallel.map_jobs(pool, square, jobs, "squares"):
                    pass
        except ValueError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the pool did not shut down after a failing job"
    assert outcome == {"error": "negative input -3"}


def test_unordered_and_ordered_mapping_return_every_result():
    with parallel.worker_pool(2) as pool:
        unordered = list(parallel.map_jobs(pool, square, list(range(300)), "squares"))
        ordered = list(parallel.map_jobs(pool, square, list(range(300)), "squares", ordered=True))
    assert sorted(unordered) == ordered == [x * x for x in range(300)]
