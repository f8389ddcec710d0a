"""Pieces shared by ``prepare pascal`` and ``prepare coco``: image checks, label PNGs, links, pools.

JPEG check (a decision, documented here once): every image that gets a mask or a list entry is
read once in full and checked for a start-of-image marker, a header PIL can parse (format and
size) and an end-of-image marker after the last start-of-scan. That catches missing, empty,
non-JPEG and truncated files -- what an interrupted copy or extraction produces (a truncated
``COCO_train2014_000000167126.jpg`` circulates on mirrors) -- for one sequential read and no
decode. A full decode is NOT done: it would roughly double the COCO run time and only adds
detection of bit errors inside the compressed stream, which the download stage's archive
checksums already rule out.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, PngImagePlugin

from hdmnet.data.errors import DataError
from hdmnet.fileio import atomic_path

J = TypeVar("J")
R = TypeVar("R")

_SOI = b"\xff\xd8"
_SOS = b"\xff\xda"
_EOI = b"\xff\xd9"


def jpeg_size(path: Path) -> tuple[int, int]:
    """Check that ``path`` is a complete JPEG (see the module docstring); return (width, height)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image: {exc}") from exc
    if not data.startswith(_SOI):
        raise DataError(f"{path}: not a JPEG file (no start-of-image marker)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, size = image.format, image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt JPEG header: {exc}") from exc
    if fmt != "JPEG":
        raise DataError(f"{path}: expected a JPEG image, found {fmt}")
    # Inside compressed data every 0xFF byte is stuffed, so a marker after the last scan header
    # can only be the real end-of-image; without it the file was cut short.
    last_scan = data.rfind(_SOS)
    if last_scan < 0 or data.find(_EOI, last_scan + 2) < 0:
        raise DataError(f"{path}: truncated JPEG (no end-of-image marker after the image data)")
    return size


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel label PNG ('L', or 'P' as palette indices) as a uint8 array."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P"):
                raise DataError(
                    f"{path}: label PNG has mode {image.mode}; expected palette ('P') or 'L'"
                )
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: mask file is missing") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: corrupt label PNG: {exc}") from exc


def write_label_png(path: Path, mask: np.ndarray, text: dict[str, str] | None = None) -> None:
    """Write a 2-D uint8 mask as an 'L' PNG via temp + rename; ``text`` goes into tEXt chunks."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D uint8, got {mask.dtype} {mask.shape}")
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        Image.fromarray(mask).save(tmp, format="PNG", pnginfo=info)


def link_dir(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to the folder ``target``, replacing an older link."""
    if not target.is_dir():
        raise DataError(f"{target}: image folder is missing")
    link.parent.mkdir(parents=True, exist_ok=True)
    # Relative to the physical parent: that is how the OS resolves a relative link.
    relative = os.path.relpath(target.resolve(), link.parent.resolve())
    if link.is_symlink():
        if os.readlink(link) == relative:
            return
    elif link.exists():
        raise DataError(f"{link}: exists and is not a symlink; move it away to let prepare link it")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(relative, tmp, target_is_directory=True)
    os.replace(tmp, link)


def remove_temp_files(*folders: Path) -> None:
    """Delete the ``.<name>.<random>.tmp`` files that killed atomic writes leave behind."""
    for folder in folders:
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
