"""File helpers shared by every stage: atomic writes, checksums and full-disk errors.

Every output is written to a temporary file in the destination folder and renamed into place,
so a killed stage never leaves a half-written file at a final path. A write that fails because
the disk or the user's quota is full raises ``NoSpaceError`` naming the file: a bare
"[Errno 28] No space left on device" from deep inside a stage does not say which of the data
and results folders filled up.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from hdmnet.errors import HdmnetError

CHUNK = 1 << 20
NO_SPACE = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "no space left (disk quota exceeded)",
}


class NoSpaceError(HdmnetError, OSError):
    """The disk or the quota is full while writing ``path``; ``errno`` stays ENOSPC/EDQUOT."""

    def __init__(self, path: str | os.PathLike[str], code: int = errno.ENOSPC) -> None:
        reason = NO_SPACE.get(code, "no space left")
        super().__init__(
            f"{path}: {reason} (free space or point paths.data/paths.results elsewhere)"
        )
        # Set after init: with strerror and filename unset, str() stays the message above.
        self.errno = code
        self.path = Path(path)

    def __reduce__(self) -> tuple[type[NoSpaceError], tuple[Path, int]]:
        # Errors from pool workers come back pickled; rebuild from the path, not the message.
        return type(self), (self.path, self.errno)


@contextlib.contextmanager
def reporting_full_disk(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full-disk ``OSError`` raised in the block into ``NoSpaceError`` naming ``path``."""
    try:
        yield
    except NoSpaceError:
        raise
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise NoSpaceError(path, exc.errno) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    A full disk while the block writes (or while the temporary file is made) raises
    ``NoSpaceError`` naming ``path``; the temporary file is removed either way.
    """
    final = Path(path)
    with reporting_full_disk(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            # mkstemp creates 0600 files; give the result the usual permissions (0666 - umask).
            if tmp.exists():
                os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only when the block succeeds."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not a write mode")
    with atomic_path(path) as tmp, open(tmp, mode.replace("x", "w"), **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (works for multi-GB archives)."""
    return file_digests(path, (algorithm,))[algorithm]


def file_digests(path: str | os.PathLike[str], algorithms: Iterable[str]) -> dict[str, str]:
    """Hex digests of a file for several algorithms in one read (``{"md5": .., ...}``)."""
    digests = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            for digest in digests.values():
                digest.update(chunk)
    return {name: digest.hexdigest() for name, digest in digests.items()}
