"""Safe extraction of tar (any compression) and zip archives.

Every member is checked before anything is written: no absolute paths, no ``..`` components, no
links, devices or fifos. Members are extracted into a temporary folder beside the target and then
moved into place, so a failure leaves nothing half-written inside the target. A marker file in the
target records which archive (size and mtime) was extracted, so a re-run skips it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hdmnet.fileio import CHUNK, atomic_path, write_json
from hdmnet.progress import progress

log = logging.getLogger(__name__)

MARKER_PREFIX = ".extracted-"
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder or is not a plain file/folder."""

    def __init__(self, archive: Path, member: str, reason: str) -> None:
        super().__init__(f"{archive}: unsafe member {member!r}: {reason}; nothing was extracted")
        self.archive = archive
        self.member = member
        self.reason = reason


@dataclass(frozen=True)
class _Member:
    """A checked member: its relative path parts and how to write it."""

    parts: tuple[str, ...]
    is_dir: bool
    mode: int
    mtime: float | None
    source: tarfile.TarInfo | zipfile.ZipInfo


# Opens one checked member's data for reading.
_Reader = Callable[[_Member], IO[bytes]]


def marker_path(archive: Path, target: Path) -> Path:
    """The marker written into ``target`` once ``archive`` is fully extracted there."""
    return Path(target) / f"{MARKER_PREFIX}{Path(archive).name}"


def is_extracted(archive: Path, target: Path) -> bool:
    """True when the marker in ``target`` matches ``archive``'s current size and mtime."""
    marker = marker_path(archive, target)
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
        current = Path(archive).stat()
    except (OSError, ValueError):
        return False
    return (
        recorded.get("size") == current.st_size and recorded.get("mtime_ns") == current.st_mtime_ns
    )


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar/tgz/tar.bz2/tar.xz or zip ``archive`` into ``target``, refusing unsafe members.

    Raises ``UnsafeArchiveError`` (naming archive and member) before writing anything if any
    member is unsafe. Existing content of ``target`` is kept; archive files replace same-named
    files. Skips the work when ``target`` already holds a marker matching the archive.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"archive to extract not found: {archive}")
    if is_extracted(archive, target):
        log.info("%s already extracted into %s; skipping", archive.name, target)
        return
    stat_before = archive.stat()
    with _open_members(archive) as (members, read):
        # Parent first: the temporary folder must be on the target's filesystem for cheap renames.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
        try:
            for member in progress(members, desc=f"extract {archive.name}"):
                _write_member(tmp, member, read)
            target.mkdir(exist_ok=True)
            _merge_into(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(
        marker_path(archive, target),
        {
            "archive": archive.name,
            "size": stat_before.st_size,
            "mtime_ns": stat_before.st_mtime_ns,
            "members": len(members),
        },
    )
    log.info("extracted %s (%d members) into %s", archive.name, len(members), target)


@contextlib.contextmanager
def _open_members(archive: Path) -> Iterator[tuple[list[_Member], _Reader]]:
    """Open ``archive``, check every member, yield the checked list and a member reader."""
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in (_check_tar(archive, info) for info in tar.getmembers()) if m]

            def read_tar(member: _Member) -> IO[bytes]:
                handle = tar.extractfile(member.source)  # type: ignore[arg-type]
                if handle is None:  # only for non-files, which _check_tar refuses
                    raise ValueError(f"{archive}: member {member.source} has no data")
                return handle

            yield members, read_tar
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in (_check_zip(archive, info) for info in zf.infolist()) if m]
            yield members, lambda member: zf.open(member.source)
    else:
        raise ValueError(f"{archive}: not a tar or zip archive (cannot extract)")


def _safe_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Relative path parts of a member name; raises for absolute paths and ``..``."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UnsafeArchiveError(archive, name, "absolute path")
    # Backslashes count as separators for the check: such names escape on Windows.
    if ".." in re.split(r"[/\\]", name):
        raise UnsafeArchiveError(archive, name, "'..' path component")
    if "\x00" in name:
        raise UnsafeArchiveError(archive, name, "NUL byte in name")
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _check_tar(archive: Path, info: tarfile.TarInfo) -> _Member | None:
    parts = _safe_parts(archive, info.name)
    if info.issym() or info.islnk():
        kind = "symbolic link" if info.issym() else "hard link"
        raise UnsafeArchiveError(archive, info.name, f"{kind} to {info.linkname!r}")
    if not (info.isfile() or info.isdir()):
        raise UnsafeArchiveError(archive, info.name, "device, fifo or other special file")
    if not parts:  # the archive's root folder ("./")
        return None
    return _Member(parts, info.isdir(), info.mode & 0o777, float(info.mtime), info)


def _check_zip(archive: Path, info: zipfile.ZipInfo) -> _Member | None:
    parts = _safe_parts(archive, info.filename)
    unix_mode = info.external_attr >> 16
    kind = stat.S_IFMT(unix_mode)
    if stat.S_ISLNK(unix_mode):
        raise UnsafeArchiveError(archive, info.filename, "symbolic link")
    if kind and not (stat.S_ISREG(unix_mode) or stat.S_ISDIR(unix_mode)):
        raise UnsafeArchiveError(archive, info.filename, "device, fifo or other special file")
    if not parts:
        return None
    # Zips made on Windows carry no Unix mode; plain files get the usual 0o644.
    mode = unix_mode & 0o777 or 0o644
    mtime = time.mktime((*info.date_time, 0, 0, -1))
    return _Member(parts, info.is_dir(), mode, mtime, info)


def _write_member(root: Path, member: _Member, read: _Reader) -> None:
    dest = root.joinpath(*member.parts)
    if member.is_dir:
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with read(member) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    # Permission bits only (no setuid/setgid/sticky); owner keeps read/write so re-runs can replace.
    os.chmod(dest, member.mode | 0o600)
    if member.mtime is not None:
        os.utime(dest, (member.mtime, member.mtime))


def _merge_into(src_dir: Path, dst_dir: Path) -> None:
    """Move everything in ``src_dir`` into ``dst_dir``, merging folders, replacing files."""
    for entry in sorted(src_dir.iterdir()):
        dest = dst_dir / entry.name
        if entry.is_dir():
            if dest.is_dir():
                _merge_into(entry, dest)
                continue
            if dest.exists() or dest.is_symlink():
                dest.unlink()  # a file where the archive has a folder: the archive wins
            try:
                os.replace(entry, dest)  # one rename moves the whole subtree
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                dest.mkdir()
                _merge_into(entry, dest)
            continue
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)  # a folder where the archive has a file: the archive wins
        try:
            os.replace(entry, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Target folder on another filesystem (e.g. a user symlink): copy, then rename.
            with atomic_path(dest) as tmp:
                shutil.copy2(entry, tmp)
