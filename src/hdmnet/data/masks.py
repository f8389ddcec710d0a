"""Reading and validating images and class masks, and counting class pixels.

Masks are single-channel PNGs of class indices: 0 background, 1..C classes, 255 ignore. Palette
('P') PNGs are read as their indices, never converted to colours, so VOC-style masks also work.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from hdmnet.data.errors import DataError
from hdmnet.errors import MissingFileError

__all__ = ["DataError", "class_pixel_counts", "read_image", "read_mask", "validate_mask"]

IGNORE = 255
# PIL modes whose pixel values are class indices.
_INDEX_MODES = ("L", "P")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FLOAT_EXACT = 1 << 24


def read_mask(path: str | os.PathLike[str], num_classes: int | None = None) -> np.ndarray:
    """Read a class mask as a uint8 HxW array; with ``num_classes``, also validate its ids."""
    path = Path(path)
    mask = _read_gray_png(path)
    if mask is None:
        mask = _read_with_pil(path)
    if num_classes is not None:
        validate_mask(mask, num_classes, path)
    return mask


def _read_gray_png(path: Path) -> np.ndarray | None:
    """Fast path: decode an 8-bit grayscale PNG with OpenCV; None for anything else.

    The header is checked first because OpenCV silently expands palette and low-bit-depth PNGs
    (to colours or rescaled grey levels), which would corrupt class ids.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"mask file not found: {path}") from None
    # PNG signature, then the IHDR chunk: bit depth at byte 24, colour type at byte 25 (0 = grey).
    if len(data) < 26 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    if data[24] != 8 or data[25] != 0:
        return None
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2 or mask.dtype != np.uint8:
        return None  # let PIL produce the error message
    return mask


def _read_with_pil(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            mode = img.mode
            # np.array on a 'P' image yields the palette indices, which are the class ids.
            mask = np.array(img, dtype=np.uint8) if mode in _INDEX_MODES else None
    except FileNotFoundError:
        raise MissingFileError(f"mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from exc
    if mask is None:
        raise DataError(
            f"mask {path} has image mode {mode!r}; expected a single-channel class-index PNG "
            f"(mode 'L' or 'P')"
        )
    return mask


def validate_mask(mask: np.ndarray, num_classes: int, path: str | os.PathLike[str]) -> None:
    """Raise naming ``path`` if the mask holds an id other than 0, 1..num_classes or 255."""
    bad = (mask > num_classes) & (mask != IGNORE)
    if bad.any():
        ids = sorted(int(v) for v in np.unique(mask[bad]))
        raise DataError(
            f"mask {path} contains unknown class id(s) {ids}; "
            f"expected 0, 1..{num_classes} or {IGNORE}"
        )


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as uint8 HxWx3 RGB; a truncated or corrupt file raises naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            # load() forces a full decode so a truncated file fails here, not as grey pixels later.
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise MissingFileError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _histogram(mask: np.ndarray) -> np.ndarray:
    """Pixels per value 0..255 of a uint8 array, exact, in one pass."""
    if mask.size < _FLOAT_EXACT:
        # cv2.calcHist reads uint8 directly (np.bincount first casts every pixel to int64, about
        # 2x slower); its float32 bins are exact below 2**24 pixels.
        hist = cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256])
        return hist.ravel().astype(np.int64)
    return np.bincount(mask.ravel(), minlength=256).astype(np.int64)


def class_pixel_counts(
    mask: np.ndarray, num_classes: int, path: str | os.PathLike[str] = "<array>"
) -> np.ndarray:
    """Pixels per class 0..num_classes (int64, length num_classes+1), in one histogram pass.

    Ids other than 0, 1..num_classes and 255 raise naming ``path`` and the ids.
    """
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise DataError(f"mask {path} must be a 2-D uint8 array, got {mask.dtype} {mask.shape}")
    counts = _histogram(mask)
    unknown = np.flatnonzero(counts[num_classes + 1 : IGNORE]) + num_classes + 1
    if unknown.size:
        raise DataError(
            f"mask {path} contains unknown class id(s) {unknown.tolist()}; "
            f"expected 0, 1..{num_classes} or {IGNORE}"
        )
    return counts[: num_classes + 1]
