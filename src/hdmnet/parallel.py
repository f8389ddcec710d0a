"""Process pools for the data stages (conversion, pixel counting), with progress bars.

Workers come from a *forkserver*: forking the calling process directly can deadlock when it
holds threads (torch, tqdm's monitor, a test runner), because a child inherits locks held by
threads that do not exist in it. The forkserver is a fresh single-threaded process.

The pool is a ``concurrent.futures.ProcessPoolExecutor``, not ``multiprocessing.Pool``: when a
job fails part way, ``Pool.terminate`` can hang for good (its task-feeding thread blocked on a
queue lock; seen in the bad-input tests), whereas the executor drops the pending chunks and lets
the running ones finish.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TypeVar

from hdmnet.progress import progress

# Starting a pool (forkserver, imports in each worker) costs about half a second, the work of a
# few hundred masks: below this many jobs per worker, a pool is slower than one process.
MIN_JOBS_PER_WORKER = 400

J = TypeVar("J")
R = TypeVar("R")


def _worker_init() -> None:
    # One OpenCV thread per worker process: the pool already fills the cores.
    import cv2

    cv2.setNumThreads(1)


def resolve_workers(workers: int | None) -> int:
    """None -> every core; negative -> error; 0 and 1 both mean in-process."""
    if workers is None:
        return os.cpu_count() or 1
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return workers


@contextlib.contextmanager
def worker_pool(workers: int | None) -> Iterator[ProcessPoolExecutor | None]:
    """A pool of ``workers`` processes, or None (run in-process) for 0 or 1.

    Create it before loading large inputs, so that nothing large is pickled to the workers.
    On exit, also after an error, jobs not started are cancelled and running ones finish.
    """
    workers = resolve_workers(workers)
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_chunk(func: Callable[[J], R], chunk: Sequence[J]) -> list[R]:
    return [func(job) for job in chunk]


def map_jobs(
    pool: ProcessPoolExecutor | None,
    func: Callable[[J], R],
    jobs: Sequence[J],
    desc: str,
    ordered: bool = False,
) -> Iterator[R]:
    """Run ``func`` over ``jobs`` with a progress bar; completion order unless ``ordered``."""
    if pool is None:
        results: Iterator[R] = map(func, jobs)
    else:
        # Chunks amortise the pickling; small enough that the bar and load balance stay smooth.
        size = max(1, min(64, len(jobs) // (8 * pool._max_workers)))  # type: ignore[attr-defined]
        futures = [
            pool.submit(_run_chunk, func, jobs[start : start + size])
            for start in range(0, len(jobs), size)
        ]
        done = futures if ordered else as_completed(futures)
        results = (result for future in done for result in future.result())
    yield from progress(results, total=len(jobs), desc=desc)


def parallel_map(
    func: Callable[[J], R], jobs: Sequence[J], workers: int | None, desc: str
) -> list[R]:
    """``list(map(func, jobs))`` in a pool of up to ``workers`` processes, order kept (small
    inputs run in this process: see MIN_JOBS_PER_WORKER)."""
    workers = min(resolve_workers(workers), max(1, len(jobs) // MIN_JOBS_PER_WORKER))
    with worker_pool(workers) as pool:
        return list(map_jobs(pool, func, jobs, desc, ordered=True))
