"""Training and evaluation transforms of PROTOCOL.md (OpenCV, numpy).

A transform takes an RGB image (HxWx3, uint8 or float), any number of class masks of the same
size (uint8) and an explicit ``np.random.Generator``, and returns the normalised image as float32
CHW and the masks as uint8 HxW. Randomness comes only from the generator, so an episode's
augmentation is a function of its seed.

Training: random scale, rotation (p 0.5; image padded with the mean, masks with 255), Gaussian
blur (p 0.5, kernel 5), horizontal flip (p 0.5), then a resize to size x size that does not keep
the aspect ratio (bilinear image, nearest masks). ``crop=True`` ends with a random size x size crop
(padded with the mean / 255) instead, as the base learner's schedule does.
Evaluation: resize to size x size only.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IGNORE = 255


def _check(image: np.ndarray, masks: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {image.shape}")
    out = []
    for k, mask in enumerate(masks):
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask {k} has shape {mask.shape}, image has {image.shape[:2]}")
        if mask.dtype != np.uint8:
            raise ValueError(f"mask {k} must be uint8, got {mask.dtype}")
        out.append(mask)
    return np.asarray(image, dtype=np.float32), out


def _normalise(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(((image - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def _resize(
    image: np.ndarray, masks: list[np.ndarray], size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    # cv2 sizes are (width, height); the aspect ratio is deliberately not kept.
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    masks = [cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) for m in masks]
    return image, masks


class TrainTransform:
    """Random scale, rotate, blur and flip, then resize (or random crop) to ``size``."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.9, 1.1),
        rotate: tuple[float, float] = (-10.0, 10.0),
        rotate_p: float = 0.5,
        blur_p: float = 0.5,
        blur_kernel: int = 5,
        flip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {scale}")
        if rotate[0] > rotate[1]:
            raise ValueError(f"rotate range must satisfy low <= high, got {rotate}")
        for name, p in (("rotate_p", rotate_p), ("blur_p", blur_p), ("flip_p", flip_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd and positive, got {blur_kernel}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.rotate = (float(rotate[0]), float(rotate[1]))
        self.rotate_p, self.blur_p, self.flip_p = rotate_p, blur_p, flip_p
        self.blur_kernel = blur_kernel
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.crop = crop

    def __call__(
        self, image: np.ndarray, masks: Sequence[np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        image, out = _check(image, masks)
        # Draw order is fixed (scale, rotate, blur, flip, crop) so results depend only on rng.
        s = rng.uniform(*self.scale)
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        out = [cv2.resize(m, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST) for m in out]
        if rng.random() < self.rotate_p:
            angle = rng.uniform(*self.rotate)
            h, w = image.shape[:2]
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            image = cv2.warpAffine(
                image,
                matrix,
                (w, h),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=tuple(float(v) for v in self.mean),
            )
            out = [
                cv2.warpAffine(
                    m,
                    matrix,
                    (w, h),
                    flags=cv2.INTER_NEAREST,
                    borderMode=cv2.BORDER_CONSTANT,
                    borderValue=IGNORE,
                )
                for m in out
            ]
        if rng.random() < self.blur_p:
            image = cv2.GaussianBlur(image, (self.blur_kernel, self.blur_kernel), 0)
        if rng.random() < self.flip_p:
            image = np.ascontiguousarray(image[:, ::-1])
            out = [np.ascontiguousarray(m[:, ::-1]) for m in out]
        if self.crop:
            image, out = self._random_crop(image, out, rng)
        else:
            image, out = _resize(image, out, self.size)
        return _normalise(image, self.mean, self.std), out

    def _random_crop(
        self, image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        size = self.size
        h, w = image.shape[:2]
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)
        if pad_h or pad_w:
            # Pad evenly on both sides: image with the mean, masks with ignore.
            border = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
            image = cv2.copyMakeBorder(
                image, *border, cv2.BORDER_CONSTANT, value=tuple(float(v) for v in self.mean)
            )
            masks = [
                cv2.copyMakeBorder(m, *border, cv2.BORDER_CONSTANT, value=IGNORE) for m in masks
            ]
            h, w = image.shape[:2]
        top = int(rng.integers(0, h - size + 1))
        left = int(rng.integers(0, w - size + 1))
        window = (slice(top, top + size), slice(left, left + size))
        return image[window], [np.ascontiguousarray(m[window]) for m in masks]


class EvalTransform:
    """Resize to size x size (bilinear image, nearest masks) and normalise; no randomness."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(
        self,
        image: np.ndarray,
        masks: Sequence[np.ndarray],
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        image, out = _check(image, masks)
        image, out = _resize(image, out, self.size)
        return _normalise(image, self.mean, self.std), out
