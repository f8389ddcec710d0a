"""``hdmnet predict``: segment new images from K annotated examples with a trained HDMNet.

Given a checkpoint (ours, or an official HDMNet file), K support images with their masks (or
boxes) and query images, writes each query's predicted mask (a 0/255 PNG at the query's
original size) and an overlay. The episode runs as in the test protocol: the evaluation
transform (:class:`~hdmnet.data.transforms.EvalTransform` at the checkpoint's image size), every
image encoded on its own into its code (``encode_support``/``support_code``,
``encode_query``/``query_code``), codes decoded in batches of ``batch_size`` queries, a last
partial batch padded with copies to the same shape (as ``EpisodeRunner`` does), the final
output upsampled to the original size and thresholded (``upsample_to_label``,
``binary_prediction``). So the same inputs give the evaluator's numbers: a dataset episode
predicted here with the evaluator's batch shape has its IoU, pixel for pixel.

Support masks: with ``class_id`` (dataset-style class-index masks) pixels of that class are the
foreground and 255 is ignored; without it every non-zero pixel is foreground (a black and
white mask). Boxes (``left,top,right,bottom`` in pixels, right and bottom excluded, several per
image separated by ``;``) fill rectangles, as the protocol's box annotations do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hdmnet.config import Params, from_mapping
from hdmnet.data.episodes import binary_mask
from hdmnet.data.masks import read_image, read_mask
from hdmnet.data.transforms import EvalTransform
from hdmnet.errors import HdmnetError
from hdmnet.evaluate.metrics import binary_prediction, upsample_to_label
from hdmnet.fileio import atomic_open
from hdmnet.layout import Run
from hdmnet.model import HDMNet, load_checkpoint
from hdmnet.model.hdmnet import QueryCode, SupportCode
from hdmnet.model.weights import CheckpointError

log = logging.getLogger("hdmnet.predict")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE = 255
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)  # RGB


class PredictError(HdmnetError, ValueError):
    """Input ``hdmnet predict`` cannot use: the message names the file or value."""


@dataclass(frozen=True)
class Support:
    """One annotated example: the RGB image and its 0/1/255 mask at the image's size."""

    image: np.ndarray
    mask: np.ndarray
    name: str


@dataclass(frozen=True)
class Prediction:
    query: Path
    mask: np.ndarray  # 0/1 at the query's original size

    @property
    def foreground(self) -> float:
        return float(self.mask.mean())


# -- the model --------------------------------------------------------------------------------


@dataclass
class Predictor:
    """A trained HDMNet ready to segment queries at ``image_size``."""

    model: HDMNet
    image_size: int
    device: torch.device
    batch_size: int = 8
    source: str = ""

    @property
    def shot(self) -> int:
        return int(self.model.shot)

    def encode_supports(self, supports: Sequence[Support]) -> SupportCode:
        """The K supports' code (each image encoded on its own, as the protocol does)."""
        if len(supports) != self.shot:
            raise PredictError(
                f"{self.source} is a {self.shot}-shot model: give {self.shot} support "
                f"image(s) with masks, got {len(supports)}"
            )
        transform = EvalTransform(self.image_size)
        codes = []
        for support in supports:
            tensor, (resized,) = transform(support.image, [support.mask])
            if not (resized == 1).any():
                raise PredictError(
                    f"support {support.name}: its foreground vanishes at the model's input size "
                    f"({self.image_size} px): annotate a larger region"
                )
            mask = torch.from_numpy(resized.astype(np.int64)).to(self.device)[None]
            image = torch.from_numpy(tensor)[None].to(self.device)
            with torch.inference_mode():
                features = self.model.encode_support(image, mask)
                codes.append(self.model.support_code(features, mask))
        return SupportCode.cat(codes)

    def encode_query(self, image: np.ndarray) -> QueryCode:
        tensor, _ = EvalTransform(self.image_size)(image, [])
        with torch.inference_mode():
            features = self.model.encode_query(torch.from_numpy(tensor)[None].to(self.device))
            return self.model.query_code(features)

    def decode(self, queries: Sequence[QueryCode], supports: SupportCode) -> list[torch.Tensor]:
        """Final logits ``[2, h, w]`` per query, decoded ``batch_size`` at a time; the last
        batch is padded with copies of its last query so every batch has one shape."""
        out: list[torch.Tensor] = []
        for start in range(0, len(queries), self.batch_size):
            batch = list(queries[start : start + self.batch_size])
            real = len(batch)
            batch += [batch[-1]] * (self.batch_size - real)
            query_code = QueryCode.cat(batch)
            support_code = SupportCode.cat([supports] * len(batch))
            with torch.inference_mode():
                decoded = self.model.decode_codes(query_code, support_code)
            out += [decoded.final[b : b + 1] for b in range(real)]
        return out

    def predict(self, supports: Sequence[Support], queries: Sequence[Path]) -> Iterable[Prediction]:
        """Each query's 0/1 mask at its original size, in order (read and encoded lazily, a
        batch at a time)."""
        support_code = self.encode_supports(supports)
        for start in range(0, len(queries), self.batch_size):
            paths = list(queries[start : start + self.batch_size])
            images = [read_image(path) for path in paths]
            codes = [self.encode_query(image) for image in images]
            for path, image, logits in zip(
                paths, images, self.decode(codes, support_code), strict=True
            ):
                final = upsample_to_label(logits, image.shape[:2])[0]
                mask = binary_prediction(final).cpu().numpy().astype(np.uint8)
                yield Prediction(path, mask)


def load_predictor(
    checkpoint: Path,
    params: Params | None,
    *,
    device: str = "auto",
    batch_size: int = 8,
    image_size: int | None = None,
    fold: int = 0,
) -> Predictor:
    """The model of ``checkpoint``: ours carries its configuration; an official file takes the
    model settings and image size of ``params`` (e.g. presets/paper.yaml) and its dataset, shot
    and backbone from its weights (``fold`` only sizes nothing: every fold has as many base
    classes)."""
    if batch_size < 1:
        raise PredictError(f"batch size must be at least 1, got {batch_size}")
    loaded = load_checkpoint(checkpoint)
    meta = loaded["meta"]
    if meta.get("kind") != "hdmnet":
        raise PredictError(
            f"{checkpoint} is a {meta.get('kind', 'unknown')} checkpoint (a base learner?), "
            "not a trained HDMNet: use a meta learner's best.pth or last.pth"
        )
    ours = "config" in meta
    if ours:
        model_params = from_mapping(meta["config"], source=f"{checkpoint} (its configuration)")
    elif params is None:
        raise PredictError(
            f"{checkpoint} carries no model settings (an official file?): give them with "
            "--params, e.g. --params presets/paper.yaml"
        )
    else:
        model_params = params
    missing = [key for key in ("dataset", "backbone", "shot") if key not in meta]
    if missing:
        raise PredictError(f"{checkpoint}: cannot tell its {', '.join(missing)} from the weights")
    run = Run(
        meta["dataset"],
        meta["backbone"],
        meta.get("variant", "full"),
        int(meta.get("fold", fold)),
        int(meta["shot"]),
        meta.get("train_seed"),
    )
    model = HDMNet.from_config(model_params, run)
    try:
        load_checkpoint(checkpoint, model)
    except CheckpointError as error:
        hint = "" if ours else " (an official file takes the model settings of --params)"
        raise PredictError(f"{str(error).splitlines()[0]}{hint}") from None
    target = _device(device)
    model.to(target).eval()
    size = image_size or getattr(model_params.meta, run.dataset).image_size
    log.info(
        "%s: %s, %s, %d-shot, %d px, on %s",
        checkpoint,
        run.dataset,
        run.backbone,
        run.shot,
        size,
        target,
    )
    return Predictor(model, size, target, batch_size, str(checkpoint))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PredictError(f"device {name}: no GPU is visible (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PredictError(f"unknown device {name!r} (use auto, cpu or cuda[:N])") from None


# -- inputs -----------------------------------------------------------------------------------


def load_supports(
    images: Sequence[Path],
    masks: Sequence[Path] | None = None,
    boxes: Sequence[str] | None = None,
    class_id: int | None = None,
) -> list[Support]:
    """The annotated examples: one mask file or one box string per image."""
    if (masks is None) == (boxes is None):
        raise PredictError("give the supports' masks or their boxes (one of the two)")
    notes = list(masks if masks is not None else boxes or [])
    if len(notes) != len(images):
        kind = "masks" if masks is not None else "boxes"
        raise PredictError(f"{len(images)} support image(s) but {len(notes)} {kind}: one each")
    supports = []
    for image_path, note in zip(images, notes, strict=True):
        image = read_image(image_path)
        if masks is not None:
            raw = read_mask(note)
            if raw.shape != image.shape[:2]:
                raise PredictError(
                    f"support mask {note} is {raw.shape[1]}x{raw.shape[0]} but its image "
                    f"{image_path} is {image.shape[1]}x{image.shape[0]}"
                )
            mask = support_mask(raw, class_id, str(note))
        else:
            mask = box_mask(str(note), image.shape[:2], str(image_path))
        supports.append(Support(image, mask, str(image_path)))
    return supports


def support_mask(mask: np.ndarray, class_id: int | None, name: str) -> np.ndarray:
    """0/1/255 labels from a mask file (module docstring); refuses an empty foreground."""
    if class_id is None:
        label = (mask > 0).astype(np.uint8)
        what = "no foreground pixel (every pixel is 0)"
    else:
        label = binary_mask(mask, class_id)
        what = f"no pixel of class {class_id}"
    if not (label == 1).any():
        raise PredictError(f"support mask {name} has {what}: annotate the object to segment")
    return label


def box_mask(spec: str, shape: tuple[int, int], name: str) -> np.ndarray:
    """A 0/1 mask with the boxes ``left,top,right,bottom[;...]`` filled."""
    height, width = shape
    mask = np.zeros(shape, dtype=np.uint8)
    for part in spec.split(";"):
        try:
            left, top, right, bottom = (int(v) for v in part.split(","))
        except ValueError:
            raise PredictError(
                f"box {part!r} of support {name}: expected left,top,right,bottom in pixels"
            ) from None
        if not (0 <= left < right <= width and 0 <= top < bottom <= height):
            raise PredictError(
                f"box {part!r} of support {name}: outside the {width}x{height} image or empty "
                "(right and bottom are excluded, so right > left and bottom > top)"
            )
        mask[top:bottom, left:right] = 1
    return mask


def query_files(paths: Sequence[Path]) -> list[Path]:
    """Image files given directly or found (sorted) in the given folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise PredictError(
                    f"query folder {path} holds no image ({', '.join(IMAGE_SUFFIXES)})"
                )
            found += images
        elif path.is_file():
            found.append(path)
        else:
            raise PredictError(f"query {path}: no such file or folder")
    stems = [p.stem for p in found]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise PredictError(
            f"several queries are named {', '.join(clashes)}: their masks would overwrite each "
            "other; predict them in separate runs"
        )
    return found


# -- outputs ----------------------------------------------------------------------------------


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The query with its predicted foreground tinted and outlined (RGB uint8)."""
    out = image.astype(np.float32)
    fg = mask.astype(bool)
    out[fg] = (1 - alpha) * out[fg] + alpha * OVERLAY_COLOUR
    out = out.clip(0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in OVERLAY_COLOUR), 1)
    return out


def write_png(path: Path, pixels: np.ndarray) -> None:
    """A PNG written atomically (RGB arrays are converted to OpenCV's BGR)."""
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", pixels)
    if not ok:
        raise PredictError(f"cannot encode {path} as PNG")
    with atomic_open(path, "wb") as handle:
        handle.write(data.tobytes())


def write_outputs(prediction: Prediction, out: Path) -> dict[str, Any]:
    """``<stem>.png`` (0/255) and ``<stem>_overlay.png`` in ``out``; returns what was written."""
    mask_path = out / f"{prediction.query.stem}.png"
    overlay_path = out / f"{prediction.query.stem}_overlay.png"
    write_png(mask_path, prediction.mask * 255)
    write_png(overlay_path, overlay(read_image(prediction.query), prediction.mask))
    return {"query": str(prediction.query), "mask": str(mask_path), "overlay": str(overlay_path)}


def run_predict(
    predictor: Predictor,
    supports: Sequence[Support],
    queries: Sequence[Path],
    out: Path,
) -> list[dict[str, Any]]:
    """Predict every query and write its outputs; returns one entry per query (paths, the
    foreground fraction and the seconds per query over the run)."""
    if out.exists() and not out.is_dir():
        raise PredictError(f"output {out} is a file: give a folder for the masks and overlays")
    started = time.perf_counter()
    written = []
    for prediction in predictor.predict(supports, queries):
        entry = write_outputs(prediction, out)
        entry["foreground"] = prediction.foreground
        written.append(entry)
    seconds = time.perf_counter() - started
    for entry in written:
        entry["seconds_per_query"] = seconds / max(1, len(written))
    return written
