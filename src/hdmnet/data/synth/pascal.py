"""PASCAL VOC 2012 and SBD stand-ins: ``VOCtrainval_11-May-2012.tar``, ``benchmark.tgz`` and
``train_noval.txt``, in the layout of the official downloads.

Image roles, as in reality: VOC seg train and val images have palette PNG masks with 255 borders;
SBD images (all of them also VOC JPEGImages, same bytes) have ``cls/*.mat`` masks without borders;
SBD overlaps VOC train and VOC val partly, and its own train/val split cuts across both, so only
the train_noval rule keeps VOC val images out of training; some JPEGImages have no mask at all.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image

from hdmnet.data.classes import VOC_CLASSES, VOC_PALETTE
from hdmnet.data.synth.config import SynthConfig
from hdmnet.data.synth.looks import ClassLook, make_grid_looks
from hdmnet.data.synth.pack import TarWriter
from hdmnet.data.synth.scene import (
    ObjectSpec,
    Scene,
    border_band,
    class_weights,
    image_size,
    plan_split,
    render_scene,
)
from hdmnet.fileio import atomic_path, write_text
from hdmnet.progress import progress

VOC_TAR = "VOCtrainval_11-May-2012.tar"
SBD_TGZ = "benchmark.tgz"
TRAIN_NOVAL = "train_noval.txt"
VOC_ROOT = "VOCdevkit/VOC2012"
SBD_ROOT = "benchmark_RELEASE/dataset"
VOC_MTIME = 1336694400  # 2012-05-11, the release date in the archive name
SBD_MTIME = 1306886400  # 2011-06-01
PERSON = VOC_CLASSES.index("person") + 1
FOLDS = 4  # PASCAL-5i: fold f holds classes 5f+1 .. 5f+5
# Fixed 116-byte MAT-file header text: scipy would put the current time there.
MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Wed Jun  1 00:00:00 2011"


@dataclass(frozen=True)
class PascalLayout:
    """Which image id plays which role."""

    voc_train: list[str]
    voc_val: list[str]
    unlabelled: list[str]
    sbd_train: list[str]
    sbd_val: list[str]

    @property
    def sbd(self) -> list[str]:
        return sorted(self.sbd_train + self.sbd_val)

    @property
    def train_noval(self) -> list[str]:
        """SBD train and val minus every VOC 2012 val image (the official train_noval rule)."""
        val = set(self.voc_val)
        return sorted(i for i in set(self.sbd_train) | set(self.sbd_val) if i not in val)

    @property
    def all_images(self) -> list[str]:
        return sorted(
            set(self.voc_train) | set(self.voc_val) | set(self.unlabelled) | set(self.sbd)
        )


def voc_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct VOC-style ids ``YYYY_NNNNNN`` from the years 2007..2011."""
    codes = rng.choice(5 * 9000, size=n, replace=False)
    return [f"{2007 + int(c) // 9000}_{1 + int(c) % 9000:06d}" for c in codes]


def _split_val(rng: np.random.Generator, ids: list[str], fraction: float) -> tuple[list, list]:
    """(train, val) parts; both non-empty when there are two or more ids and 0 < fraction < 1."""
    n_val = round(fraction * len(ids))
    if len(ids) >= 2 and 0.0 < fraction < 1.0:
        n_val = min(max(n_val, 1), len(ids) - 1)
    order = rng.permutation(len(ids))
    val = [ids[i] for i in order[:n_val]]
    train = [ids[i] for i in order[n_val:]]
    return train, val


def plan_pascal(config: SynthConfig) -> tuple[PascalLayout, dict[str, list[ObjectSpec]]]:
    """Image roles and per-image object plans; deterministic in ``config``."""
    rng = np.random.default_rng([config.seed, 1])
    sbd_only = config.sbd_images - config.sbd_from_voc_train - config.sbd_from_voc_val
    n_total = config.voc_train + config.voc_val + sbd_only + config.voc_unlabelled
    ids = voc_ids(rng, n_total)
    cut = np.cumsum([config.voc_train, config.voc_val, sbd_only])
    voc_train, voc_val = ids[: cut[0]], ids[cut[0] : cut[1]]
    only, unlabelled = ids[cut[1] : cut[2]], ids[cut[2] :]
    from_train = [
        voc_train[i] for i in rng.permutation(len(voc_train))[: config.sbd_from_voc_train]
    ]
    from_val = [voc_val[i] for i in rng.permutation(len(voc_val))[: config.sbd_from_voc_val]]
    sbd_train, sbd_val = [], []
    # Split each overlap group separately so SBD train and SBD val both meet VOC train and val.
    for group in (from_train, from_val, only):
        train_part, val_part = _split_val(rng, group, config.sbd_val_fraction)
        sbd_train += train_part
        sbd_val += val_part
    layout = PascalLayout(
        voc_train=sorted(voc_train),
        voc_val=sorted(voc_val),
        unlabelled=sorted(unlabelled),
        sbd_train=sorted(sbd_train),
        sbd_val=sorted(sbd_val),
    )
    weights = class_weights(len(VOC_CLASSES), config.class_imbalance, rng, top=PERSON)
    size = len(VOC_CLASSES) // FOLDS
    groups = [list(range(size * f + 1, size * f + size + 1)) for f in range(FOLDS)]  # PASCAL-5i
    common = {
        "weights": weights,
        "max_classes": config.voc_max_classes,
        "duplicate_prob": config.duplicate_prob,
    }
    # Training role: every image of the training list (VOC train and SBD-only images).
    train_ids = sorted(voc_train + only)
    train_plans = plan_split(
        rng,
        len(train_ids),
        anchors_per_class=config.anchors_per_class,
        groups=groups,
        split_name="PASCAL train (voc_train + SBD-only images)",
        **common,
    )
    val_plans = plan_split(
        rng,
        len(voc_val),
        anchors_per_class=config.anchors_per_class,
        groups=None,
        split_name="PASCAL val (voc_val)",
        **common,
    )
    extra_plans = plan_split(rng, len(unlabelled), anchors_per_class=0, groups=None, **common)
    plans = dict(zip(train_ids, train_plans, strict=True))
    plans.update(zip(layout.voc_val, val_plans, strict=True))
    plans.update(zip(layout.unlabelled, extra_plans, strict=True))
    return layout, plans


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return data.tobytes()


def encode_voc_png(mask: np.ndarray) -> bytes:
    """Palette-mode PNG with the VOC palette, as in SegmentationClass."""
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask))
    image.putpalette(VOC_PALETTE.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_sbd_mat(scene: Scene) -> bytes:
    """SBD ``cls`` MAT file: struct GTcls with Boundaries, Segmentation, CategoriesPresent."""
    seg = scene.semantic()
    edges = border_band(seg.astype(np.int32), 1)
    boundaries = np.empty((len(VOC_CLASSES), 1), dtype=object)
    present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    for label in range(1, len(VOC_CLASSES) + 1):
        if label in present:
            boundaries[label - 1, 0] = scipy.sparse.csc_matrix(edges & (seg == label))
        else:
            boundaries[label - 1, 0] = scipy.sparse.csc_matrix(seg.shape, dtype=bool)
    buffer = io.BytesIO()
    scipy.io.savemat(
        buffer,
        {
            "GTcls": {
                "Boundaries": boundaries,
                "Segmentation": seg,
                "CategoriesPresent": present,
            }
        },
        do_compression=True,
    )
    data = bytearray(buffer.getvalue())
    data[:116] = MAT_HEADER.ljust(116, b" ")
    return bytes(data)


def _id_seed(image_id: str) -> list[int]:
    year, number = image_id.split("_")
    return [int(year), int(number)]


def pascal_looks(config: SynthConfig) -> list[ClassLook]:
    """The 20 class looks: a hue x tone grid over the PASCAL-5i fold groups."""
    rng = np.random.default_rng([config.seed, 10])
    return make_grid_looks(rng, FOLDS, len(VOC_CLASSES) // FOLDS)


def render_pascal_image(config: SynthConfig, image_id: str, specs: list[ObjectSpec]) -> Scene:
    """Render one PASCAL image; the same (config, id, plan) always gives the same scene."""
    return _render(config, pascal_looks(config), image_id, specs)


def _render(
    config: SynthConfig, looks: list[ClassLook], image_id: str, specs: list[ObjectSpec]
) -> Scene:
    rng = np.random.default_rng([config.seed, 2, *_id_seed(image_id)])
    size = image_size(rng, config.voc_side_range)
    return render_scene(rng, size, specs, looks, config.min_visible, config.voc_border_width)


def write_pascal(
    out_dir: Path,
    config: SynthConfig,
    plan: tuple[PascalLayout, dict[str, list[ObjectSpec]]] | None = None,
) -> dict[str, int]:
    """Write the VOC tar, the SBD tgz and train_noval.txt into ``out_dir``; return split sizes.

    ``plan`` is ``plan_pascal(config)``, computed here when not given.
    """
    layout, plans = plan if plan is not None else plan_pascal(config)
    looks = pascal_looks(config)
    has_voc_mask = set(layout.voc_train) | set(layout.voc_val)
    in_sbd = set(layout.sbd)
    pngs: dict[str, bytes] = {}
    mats: dict[str, bytes] = {}
    with (
        atomic_path(out_dir / VOC_TAR) as voc_tmp,
        atomic_path(out_dir / SBD_TGZ) as sbd_tmp,
        TarWriter(voc_tmp, VOC_MTIME) as voc,
        TarWriter(sbd_tmp, SBD_MTIME, gz=True) as sbd,
    ):
        voc.add_dir(f"{VOC_ROOT}/JPEGImages")
        sbd.add_dir(f"{SBD_ROOT}/img")
        images = layout.all_images
        for image_id in progress(images, total=len(images), desc="PASCAL images"):
            scene = _render(config, looks, image_id, plans[image_id])
            jpeg = encode_jpeg(scene.image, config.jpeg_quality)
            voc.add_file(f"{VOC_ROOT}/JPEGImages/{image_id}.jpg", jpeg)
            if image_id in has_voc_mask:
                pngs[image_id] = encode_voc_png(scene.voc_mask(config.voc_border_width))
            if image_id in in_sbd:
                sbd.add_file(f"{SBD_ROOT}/img/{image_id}.jpg", jpeg)
                mats[image_id] = encode_sbd_mat(scene)
        for image_id in sorted(pngs):
            voc.add_file(f"{VOC_ROOT}/SegmentationClass/{image_id}.png", pngs[image_id])
        lists = {"train": layout.voc_train, "val": layout.voc_val}
        lists["trainval"] = sorted(layout.voc_train + layout.voc_val)
        for name, ids in lists.items():
            voc.add_file(f"{VOC_ROOT}/ImageSets/Segmentation/{name}.txt", _lines(ids))
        for image_id in sorted(mats):
            sbd.add_file(f"{SBD_ROOT}/cls/{image_id}.mat", mats[image_id])
        sbd.add_file(f"{SBD_ROOT}/train.txt", _lines(layout.sbd_train))
        sbd.add_file(f"{SBD_ROOT}/val.txt", _lines(layout.sbd_val))
    write_text(out_dir / TRAIN_NOVAL, _lines(layout.train_noval).decode())
    return {
        "voc_jpeg_images": len(layout.all_images),
        "voc_train": len(layout.voc_train),
        "voc_val": len(layout.voc_val),
        "sbd_train": len(layout.sbd_train),
        "sbd_val": len(layout.sbd_val),
        "train_noval": len(layout.train_noval),
    }


def _lines(ids: list[str]) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()
