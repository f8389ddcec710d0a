"""Fixtures: generated archive sets (a small one, and the default one), read back with standard
tools only (tarfile, zipfile, PIL, scipy.io, pycocotools), never through generator internals."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hdmnet.data.synth import SynthConfig, generate

VOC = "VOCdevkit/VOC2012"
SBD = "benchmark_RELEASE/dataset"

#: Small but complete: every split and role exists, one anchor image per class.
SMALL = SynthConfig(
    seed=3,
    voc_train=40,
    voc_val=30,
    voc_unlabelled=4,
    sbd_images=60,
    sbd_from_voc_train=12,
    sbd_from_voc_val=8,
    coco_train=70,
    coco_val=50,
    anchors_per_class=1,
    coco_empty_prob=0.05,
    coco_crowd_prob=0.3,
)


@dataclass
class Pascal:
    voc_members: dict[str, tarfile.TarInfo]
    voc_files: dict[str, bytes]
    sbd_members: dict[str, tarfile.TarInfo]
    sbd_files: dict[str, bytes]
    train_noval: list[str]
    _cache: dict = field(default_factory=dict)

    def voc_list(self, name: str) -> list[str]:
        return self.voc_files[f"{VOC}/ImageSets/Segmentation/{name}.txt"].decode().split()

    def sbd_list(self, name: str) -> list[str]:
        return self.sbd_files[f"{SBD}/{name}.txt"].decode().split()

    def jpeg_ids(self) -> list[str]:
        prefix = f"{VOC}/JPEGImages/"
        return sorted(n[len(prefix) : -4] for n in self.voc_files if n.startswith(prefix))

    def voc_png(self, image_id: str) -> Image.Image:
        return Image.open(io.BytesIO(self.voc_files[f"{VOC}/SegmentationClass/{image_id}.png"]))

    def voc_mask(self, image_id: str) -> np.ndarray:
        key = ("voc", image_id)
        if key not in self._cache:
            self._cache[key] = np.array(self.voc_png(image_id))
        return self._cache[key]

    def sbd_mat(self, image_id: str) -> dict:
        return scipy.io.loadmat(io.BytesIO(self.sbd_files[f"{SBD}/cls/{image_id}.mat"]))

    def sbd_mask(self, image_id: str) -> np.ndarray:
        key = ("sbd", image_id)
        if key not in self._cache:
            self._cache[key] = self.sbd_mat(image_id)["GTcls"][0, 0]["Segmentation"]
        return self._cache[key]

    def image(self, image_id: str) -> np.ndarray:
        data = self.voc_files[f"{VOC}/JPEGImages/{image_id}.jpg"]
        return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


@dataclass
class Coco:
    zips: dict[str, dict[str, zipfile.ZipInfo]]
    files: dict[str, bytes]  # image files of both splits and the two JSON documents
    json_dir: Path

    def document(self, split: str) -> dict:
        return json.loads(self.files[f"annotations/instances_{split}2014.json"])

    def api(self, split: str):  # pycocotools has no type hints
        from pycocotools.coco import COCO

        return COCO(str(self.json_dir / f"instances_{split}2014.json"))

    def image(self, split: str, file_name: str) -> np.ndarray:
        data = self.files[f"{split}2014/{file_name}"]
        return np.array(Image.open(io.BytesIO(data)).convert("RGB"))


def read_tar(path: Path) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]:
    members, files = {}, {}
    with tarfile.open(path) as tar:
        for info in tar:
            members[info.name] = info
            if info.isfile():
                files[info.name] = tar.extractfile(info).read()
    return members, files


def read_pascal(out_dir: Path) -> Pascal:
    voc_members, voc_files = read_tar(out_dir / "VOCtrainval_11-May-2012.tar")
    sbd_members, sbd_files = read_tar(out_dir / "benchmark.tgz")
    noval = (out_dir / "train_noval.txt").read_text().split()
    return Pascal(voc_members, voc_files, sbd_members, sbd_files, noval)


def read_coco(out_dir: Path, json_dir: Path) -> Coco:
    zips, files = {}, {}
    for name in ("train2014.zip", "val2014.zip", "annotations_trainval2014.zip"):
        with zipfile.ZipFile(out_dir / name) as archive:
            zips[name] = {info.filename: info for info in archive.infolist()}
            for info in archive.infolist():
                if not info.is_dir():
                    files[info.filename] = archive.read(info)
    json_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        name = f"instances_{split}2014.json"
        (json_dir / name).write_bytes(files[f"annotations/{name}"])
    return Coco(zips, files, json_dir)


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_small")
    generate(out, SMALL)
    return out


@pytest.fixture(scope="session")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_default")
    generate(out, SynthConfig())
    return out


@pytest.fixture(scope="session")
def small_pascal(small_dir: Path) -> Pascal:
    return read_pascal(small_dir)


@pytest.fixture(scope="session")
def small_coco(small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Coco:
    return read_coco(small_dir, tmp_path_factory.mktemp("small_coco_json"))


@pytest.fixture(scope="session")
def default_pascal(default_dir: Path) -> Pascal:
    return read_pascal(default_dir)


@pytest.fixture(scope="session")
def default_coco(default_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Coco:
    return read_coco(default_dir, tmp_path_factory.mktemp("default_coco_json"))


@pytest.fixture(scope="session")
def small_config() -> SynthConfig:
    return SMALL


@pytest.fixture(scope="session")
def coco_reader():
    """``read_coco`` for tests that generate their own sets (conftest is not importable)."""
    return read_coco
