"""Byte-reproducible tar, tar.gz and zip writers.

Every member gets a fixed mtime, owner and mode, members are written in the caller's order, and
the gzip header carries no file name and a fixed time: the same content gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


class TarWriter:
    """Append directories and files to a (optionally gzipped) tar with fixed metadata."""

    def __init__(self, path: Path, mtime: int, gz: bool = False) -> None:
        self._raw: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._gz = (
            gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0, compresslevel=6)
            if gz
            else None
        )
        self._tar = tarfile.open(  # noqa: SIM115 - closed in close()
            fileobj=self._gz or self._raw, mode="w", format=tarfile.GNU_FORMAT
        )
        self._mtime = mtime
        self._dirs: set[str] = set()

    def _info(self, name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.size = size
        info.mtime = self._mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_dir(self, name: str) -> None:
        """Add ``name`` and its missing parents as directory members (once each)."""
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth])
            if path not in self._dirs:
                self._dirs.add(path)
                self._tar.addfile(self._info(path, tarfile.DIRTYPE, 0o755))

    def add_file(self, name: str, data: bytes) -> None:
        if "/" in name:
            self.add_dir(name.rsplit("/", 1)[0])
        self._tar.addfile(self._info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        if self._gz is not None:
            self._gz.close()
        self._raw.close()

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ZipWriter:
    """Append directories and files to a zip with fixed timestamps and attributes."""

    def __init__(self, path: Path, date_time: tuple[int, int, int, int, int, int]) -> None:
        self._zip = zipfile.ZipFile(path, "w", allowZip64=True)
        self._date_time = date_time
        self._dirs: set[str] = set()

    def _info(self, name: str, attr: int, compress: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=self._date_time)
        info.create_system = 3  # Unix, so the permission bits below are meaningful everywhere
        info.external_attr = attr
        info.compress_type = compress
        return info

    def add_dir(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            path = "/".join(parts[:depth]) + "/"
            if path not in self._dirs:
                self._dirs.add(path)
                self._zip.writestr(
                    self._info(path, (0o40755 << 16) | 0x10, zipfile.ZIP_STORED), b""
                )

    def add_file(self, name: str, data: bytes, compress: bool = False) -> None:
        """Add a file; JPEGs are stored as they are, text is worth deflating."""
        if "/" in name:
            self.add_dir(name.rsplit("/", 1)[0])
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        self._zip.writestr(self._info(name, 0o100644 << 16, method), data)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
