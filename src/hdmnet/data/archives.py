"""Safe extraction of tar (any compression) and zip archives.

Every member is checked before anything is written: no absolute paths, no ``..`` components, no
links, devices or fifos. Members are extracted into a temporary folder beside the target and then
moved into place, so a failure leaves nothing half-written inside the target. A marker file in the
target records which archive (size and mtime) was extracted, so a re-run skips it.

A damaged archive is a ``DataError`` naming the archive and the member, never a traceback from
the decoders. A tar cut exactly between two members is the subtle case: Python's tarfile reads it
as a shorter, valid archive. So after the last member a tar must hold the end-of-archive marker
(a zero block; POSIX writers add two, GNU tar then pads to 10240 bytes). Only the first block is
required: a cut inside the marker loses no member, and tarfile itself stops at one zero block.
An archive whose size or checksum was verified against the published value cannot be cut, so for
it a missing marker is only logged: the official VOC tar is 512-byte aligned but not padded to
GNU tar's records, and no copy is at hand here to prove that it ends with zero blocks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn, TypeVar

from hdmnet.data.errors import DataError
from hdmnet.errors import HdmnetError, MissingFileError
from hdmnet.fileio import CHUNK, atomic_path, reporting_full_disk, write_json
from hdmnet.progress import progress

log = logging.getLogger(__name__)

MARKER_PREFIX = ".extracted-"
_DRIVE = re.compile(r"^[A-Za-z]:")
_T = TypeVar("_T")
_REDO = "delete it and run hdmnet download again"
# What a damaged archive raises while it is read: tarfile's and zipfile's own errors, a compressed
# stream that ends early (EOFError) or does not decode (zlib, lzma; bz2 and gzip raise OSError
# without an errno). Only reads of the archive are wrapped: a failing write keeps its own error.
_DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


class UnsafeArchiveError(HdmnetError, ValueError):
    """An archive member would land outside the target folder or is not a plain file/folder."""

    def __init__(self, archive: Path, member: str, reason: str) -> None:
        super().__init__(f"{archive}: unsafe member {member!r}: {reason}; nothing was extracted")
        self.archive = archive
        self.member = member
        self.reason = reason


@dataclass(frozen=True)
class _Member:
    """A checked member: its relative path parts and how to write it."""

    name: str
    parts: tuple[str, ...]
    is_dir: bool
    mode: int
    mtime: float | None
    source: tarfile.TarInfo | zipfile.ZipInfo


# Yields one checked member's data in chunks; a damaged archive raises DataError.
_Reader = Callable[[_Member], Iterator[bytes]]


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


def safe_extract(archive: Path, target: Path, *, verified: bool = False) -> None:
    """Extract a tar/tgz/tar.bz2/tar.xz or zip ``archive`` into ``target``, refusing unsafe members.

    Raises ``UnsafeArchiveError`` (naming archive and member) before writing anything if any
    member is unsafe, and ``DataError`` if the archive is truncated or corrupt; either way
    ``target`` is left as it was. Existing content of ``target`` is kept; archive files replace
    same-named files. Skips the work when ``target`` already holds a marker matching the
    archive. ``verified`` says the archive's size or checksum matched the published value, so a
    tar without an end-of-archive marker is extracted with a warning instead of refused.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise MissingFileError(f"archive to extract not found: {archive}")
    if is_extracted(archive, target):
        log.info("%s already extracted into %s; skipping", archive.name, target)
        return
    stat_before = archive.stat()
    tmp: Path | None = None
    try:
        with reporting_full_disk(target), _open_members(archive, verified) as (members, read):
            # Parent first: the temporary folder must be on the target's filesystem (renames).
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
            for member in progress(members, desc=f"extract {archive.name}"):
                _write_member(tmp, member, read)
        # Leaving the block checked the tar's end: only a complete archive reaches the target.
        with reporting_full_disk(target):
            target.mkdir(exist_ok=True)
            _merge_into(tmp, target)
    finally:
        if tmp is not None:
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
def _open_members(archive: Path, verified: bool) -> Iterator[tuple[list[_Member], _Reader]]:
    """Open ``archive``, check every member, yield the checked list and a member reader; once
    the block is done, check that a tar ended with its end-of-archive marker."""
    if tarfile.is_tarfile(archive):
        with _opened(archive, lambda: tarfile.open(archive, "r:*")) as tar:
            infos = _scan_tar(archive, tar)
            members = [m for m in (_check_tar(archive, info) for info in infos) if m]

            def read_tar(member: _Member) -> Iterator[bytes]:
                return _chunks(archive, member, lambda: tar.extractfile(member.source))

            yield members, read_tar
            _check_tar_end(archive, tar, verified)
    elif zipfile.is_zipfile(archive):
        with _opened(archive, lambda: zipfile.ZipFile(archive)) as zf:
            members = [m for m in (_check_zip(archive, info) for info in zf.infolist()) if m]
            yield members, lambda member: _chunks(archive, member, lambda: zf.open(member.source))
    else:
        raise DataError(f"{archive}: not a tar or zip archive, or a truncated one; {_REDO}")


def _raise_damaged(archive: Path, where: str, error: BaseException) -> NoReturn:
    """Raise the one-line error for a damaged archive; a real I/O error (it has an errno, e.g.
    EIO or EACCES) is re-raised as it is, since downloading again would not help."""
    if isinstance(error, OSError) and error.errno is not None:
        raise error
    raise DataError(
        f"{archive}: truncated or corrupt archive {where} ({error}); {_REDO}"
    ) from error


def _opened(archive: Path, open_: Callable[[], _T]) -> _T:
    try:
        return open_()
    except _DAMAGED as exc:
        _raise_damaged(archive, "at its start", exc)


def _scan_tar(archive: Path, tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every header; reaching the next one means reading past the data of the previous one."""
    try:
        return tar.getmembers()
    except _DAMAGED as exc:
        where = f"in or after member {tar.members[-1].name!r}" if tar.members else "at its start"
        _raise_damaged(archive, where, exc)


def _chunks(
    archive: Path, member: _Member, open_: Callable[[], IO[bytes] | None]
) -> Iterator[bytes]:
    """The data of one member in chunks. Only the reads are guarded: a write error in the
    caller's loop is never thrown in here, it just closes this generator."""
    try:
        handle = open_()
        if handle is None:  # only for non-files, which the checks refuse
            raise DataError(f"{archive}: member {member.name!r} has no data")
        with handle:
            while chunk := handle.read(CHUNK):
                yield chunk
    except _DAMAGED as exc:
        _raise_damaged(archive, f"in member {member.name!r}", exc)


def _check_tar_end(archive: Path, tar: tarfile.TarFile, verified: bool) -> None:
    """Require a zero block where the header after the last member would be (module docstring).

    Called after every member was read, so the stream only moves forward: seeking back in a
    compressed tar would decompress it again from the start.
    """
    try:
        tar.fileobj.seek(tar.offset)
        block = tar.fileobj.read(tarfile.BLOCKSIZE)
    except _DAMAGED as exc:
        _raise_damaged(archive, "at its end", exc)
    if block == tarfile.NUL * tarfile.BLOCKSIZE:
        return
    last = repr(tar.members[-1].name) if tar.members else "(none)"
    problem = f"no end-of-archive marker after its last member {last}"
    if verified:
        log.warning("%s: %s; its size or checksum matched, so none is missing", archive, problem)
        return
    raise DataError(f"{archive}: {problem} (cut short between two members?); {_REDO}")


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
    return _Member(info.name, parts, info.isdir(), info.mode & 0o777, float(info.mtime), info)


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
    return _Member(info.filename, parts, info.is_dir(), mode, mtime, info)


def _write_member(root: Path, member: _Member, read: _Reader) -> None:
    dest = root.joinpath(*member.parts)
    if member.is_dir:
        dest.mkdir(parents=True, exist_ok=True)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        for chunk in read(member):
            out.write(chunk)
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
