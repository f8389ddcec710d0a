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
        self,
        iterable: Iterable[T],
        total: int | None = None,
        desc: str = "",
        interval: float = 30.0,
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
        for done, item in enumerate(self.iterable, 1):
            yield item
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


class ByteProgress:
    """Byte counter for downloads and copies: a tqdm bar on a terminal, log lines elsewhere.

    Use as a context manager and call ``update(n)`` per chunk; ``initial`` is what a resumed
    transfer already has, so the bar and the ETA start from there.
    """

    def __init__(
        self, total: int | None, desc: str = "", initial: int = 0, interval: float = 30.0
    ) -> None:
        self.total = total
        self.desc = desc
        self.initial = initial
        self.done = initial
        self.interval = interval
        self._bar: tqdm | None = None
        self._start = self._last = time.monotonic()

    def __enter__(self) -> ByteProgress:
        if on_terminal():
            self._bar = tqdm(
                total=self.total,
                initial=self.initial,
                desc=self.desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                dynamic_ncols=True,
            )
        self._start = self._last = time.monotonic()
        return self

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info("%s", self._line(now - self._start))

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done > self.initial:
            log.info("%s", self._line(time.monotonic() - self._start))

    def _line(self, elapsed: float) -> str:
        mib = 1 << 20
        total = f"{self.total / mib:.1f}" if self.total else "?"
        parts = [self.desc or "transfer", f"{self.done / mib:.1f}/{total} MiB", f"{elapsed:.0f}s"]
        fresh = self.done - self.initial
        if self.total and fresh > 0 and elapsed > 0:
            parts.append(f"eta {elapsed / fresh * (self.total - self.done):.0f}s")
        return " ".join(parts)
