"""Progress reporting: a bar with ETA on a terminal, plain periodic log lines elsewhere.

SLURM logs and CI output are not terminals; a redrawn bar there is noise, so we print one line
every ``interval`` seconds instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("hdmnet")


def on_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """Wraps an iterable; ``set(**stats)`` attaches running figures (loss, mIoU) to the output."""

    def __init__(
        self, iterable: Iterable[T], total: int | None = None, desc: str = "", interval: float = 30.0
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        self.desc = desc
        self.interval = interval
        self.stats: dict[str, float] = {}
        self._bar: tqdm | None = None

    def set(self, **stats: float) -> None:
        self.stats.update(stats)
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in self.stats.items()}, refresh=False)

    def __iter__(self) -> Iterator[T]:
        if on_terminal():
            self._bar = tqdm(self.iterable, total=self.total, desc=self.desc, dynamic_ncols=True)
            yield from self._bar
            self._bar.close()
            return
        start = last = time.monotonic()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= self.interval or done == self.total:
                last = now
                log.info("%s", self._line(done, now - start))

    def _line(self, done: int, elapsed: float) -> str:
        parts = [self.desc or "progress", f"{done}/{self.total or '?'}", f"{elapsed:.0f}s"]
        if self.total and done:
            parts.append(f"eta {elapsed / done * (self.total - done):.0f}s")
        parts += [f"{k}={v:.4g}" for k, v in self.stats.items()]
        return " ".join(parts)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "") -> Progress:
    return Progress(iterable, total=total, desc=desc)


def _length(iterable: Iterable[object]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None
