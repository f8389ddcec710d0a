"""The generated archives, read back with standard tools, have the real archives' layout and
consistent content; the manifest verifies them; a seed reproduces them byte for byte."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hdmnet.data.classes import COCO_IDS, VOC_PALETTE, coco_label_of
from hdmnet.data.synth import FILES, generate
from hdmnet.data.synth.coco import plan_coco, render_coco_image
from hdmnet.fileio import file_digest

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

VOC = "VOCdevkit/VOC2012"
SBD = "benchmark_RELEASE/dataset"
VOC_ID = re.compile(r"^20(07|08|09|10|11)_\d{6}$")


# ---------------------------------------------------------------- PASCAL VOC 2012


def test_voc_layout_and_lists(small_pascal, small_config) -> None:
    train, val, trainval = (small_pascal.voc_list(n) for n in ("train", "val", "trainval"))
    assert (len(train), len(val)) == (small_config.voc_train, small_config.voc_val)
    assert trainval == sorted(train + val) and train == sorted(train) and val == sorted(val)
    assert not set(train) & set(val)
    jpegs = small_pascal.jpeg_ids()
    assert all(VOC_ID.match(i) for i in jpegs)
    pngs = {
        n.rsplit("/", 1)[1][:-4]
        for n in small_pascal.voc_files
        if n.startswith(f"{VOC}/SegmentationClass/")
    }
    assert pngs == set(trainval)
    # JPEGImages holds many more images than have VOC masks (SBD-only and unannotated ones).
    sbd_only = (
        small_config.sbd_images - small_config.sbd_from_voc_train - small_config.sbd_from_voc_val
    )
    assert len(jpegs) == len(trainval) + sbd_only + small_config.voc_unlabelled
    assert small_pascal.voc_members[f"{VOC}/JPEGImages"].isdir()


def test_voc_masks(small_pascal) -> None:
    for image_id in small_pascal.voc_list("trainval"):
        png = small_pascal.voc_png(image_id)
        assert png.mode == "P"
        palette = np.array(png.getpalette(), dtype=np.uint8).reshape(-1, 3)
        assert np.array_equal(palette, VOC_PALETTE)
        mask = np.array(png)
        assert mask.shape == small_pascal.image(image_id).shape[:2]
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}, image_id
        assert values - {0, 255}, f"{image_id} has no object"
        assert 255 in values, f"{image_id} lacks the 255 object border"
        # The border is thin: it never covers more than a fraction of the objects.
        assert (mask == 255).sum() < (mask > 0).sum()


def test_sbd_layout_images_and_masks(small_pascal, small_config) -> None:
    sbd_train, sbd_val = small_pascal.sbd_list("train"), small_pascal.sbd_list("val")
    sbd = sbd_train + sbd_val
    assert len(sbd) == len(set(sbd)) == small_config.sbd_images
    for image_id in sbd:
        jpeg = small_pascal.sbd_files[f"{SBD}/img/{image_id}.jpg"]
        assert jpeg == small_pascal.voc_files[f"{VOC}/JPEGImages/{image_id}.jpg"]
        gtcls = small_pascal.sbd_mat(image_id)["GTcls"][0, 0]
        assert set(gtcls.dtype.names) == {"Segmentation", "Boundaries", "CategoriesPresent"}
        seg = gtcls["Segmentation"]
        assert seg.dtype == np.uint8
        assert seg.shape == small_pascal.image(image_id).shape[:2]
        assert seg.max() <= 20  # no 255 borders in SBD
        present = np.unique(seg[seg > 0])
        assert gtcls["CategoriesPresent"].ravel().tolist() == present.tolist()
        assert gtcls["Boundaries"].shape == (20, 1)
        for label in range(1, 21):
            edges = gtcls["Boundaries"][label - 1, 0].toarray().astype(bool)
            assert edges.shape == seg.shape
            assert edges.any() == (label in present)
            assert (seg[edges] == label).all()


def test_sbd_and_voc_agree_where_both_annotate(small_pascal, small_config) -> None:
    shared = set(small_pascal.voc_list("trainval")) & set(
        small_pascal.sbd_list("train") + small_pascal.sbd_list("val")
    )
    assert len(shared) == small_config.sbd_from_voc_train + small_config.sbd_from_voc_val
    for image_id in shared:
        voc, sbd = small_pascal.voc_mask(image_id), small_pascal.sbd_mask(image_id)
        inner = voc != 255
        assert np.array_equal(voc[inner], sbd[inner])


def test_train_noval_rule(small_pascal) -> None:
    sbd_train, sbd_val = set(small_pascal.sbd_list("train")), set(small_pascal.sbd_list("val"))
    voc_train, voc_val = set(small_pascal.voc_list("train")), set(small_pascal.voc_list("val"))
    # SBD's split cuts across VOC's, so only the train_noval rule keeps VOC val out of training.
    assert sbd_train & voc_val and sbd_val & voc_train and sbd_train & voc_train
    assert sbd_val & voc_val
    noval = small_pascal.train_noval
    assert noval == sorted((sbd_train | sbd_val) - voc_val)
    assert not set(noval) & voc_val


# ---------------------------------------------------------------- COCO 2014


def test_coco_zip_layout(small_coco, small_config) -> None:
    for split, count in (("train", small_config.coco_train), ("val", small_config.coco_val)):
        names = list(small_coco.zips[f"{split}2014.zip"])
        assert names[0] == f"{split}2014/"
        files = names[1:]
        assert len(files) == count
        assert all(re.match(rf"^{split}2014/COCO_{split}2014_\d{{12}}\.jpg$", n) for n in files)
    assert set(small_coco.zips["annotations_trainval2014.zip"]) >= {
        "annotations/instances_train2014.json",
        "annotations/instances_val2014.json",
    }


def test_coco_json_schema_and_api(small_coco) -> None:
    train_ids = set()
    for split in ("train", "val"):
        doc = small_coco.document(split)
        assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
        assert [c["id"] for c in doc["categories"]] == list(COCO_IDS)
        assert all(set(c) == {"id", "name", "supercategory"} for c in doc["categories"])
        image_keys = {"id", "file_name", "width", "height"}
        assert all(image_keys <= set(image) for image in doc["images"])
        ann_keys = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
        assert all(set(a) >= ann_keys for a in doc["annotations"])
        ids = [a["id"] for a in doc["annotations"]]
        assert len(ids) == len(set(ids))
        api = small_coco.api(split)
        assert sorted(api.getCatIds()) == list(COCO_IDS)
        assert len(api.getImgIds()) == len(doc["images"])
        assert set(a["category_id"] for a in doc["annotations"]) <= set(COCO_IDS)
        image_ids = {image["id"] for image in doc["images"]}
        assert not image_ids & train_ids  # train and val ids are disjoint, as in COCO
        train_ids |= image_ids
        annotated = {a["image_id"] for a in doc["annotations"]}
        assert image_ids - annotated, f"{split}: expected some images without annotations"
        for image in doc["images"][:20]:
            pixels = small_coco.image(split, image["file_name"])
            assert pixels.shape == (image["height"], image["width"], 3)


def test_coco_annotations_decode_consistently(small_coco) -> None:
    crowd_seen = polygon_seen = 0
    for split in ("train", "val"):
        api = small_coco.api(split)
        for ann in api.loadAnns(api.getAnnIds()):
            decoded = api.annToMask(ann)
            assert decoded.sum() == pytest.approx(ann["area"], abs=0.5)
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(decoded)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            if ann["iscrowd"]:
                crowd_seen += 1
                assert isinstance(ann["segmentation"]["counts"], list)
                assert ann["segmentation"]["size"] == [ann_h(api, ann), ann_w(api, ann)]
            else:
                polygon_seen += 1
                assert all(isinstance(v, float) for p in ann["segmentation"] for v in p)
    assert crowd_seen > 0 and polygon_seen > 0


def ann_h(api, ann) -> int:
    return api.imgs[ann["image_id"]]["height"]


def ann_w(api, ann) -> int:
    return api.imgs[ann["image_id"]]["width"]


def test_coco_annotations_match_rendered_objects(small_coco, small_config) -> None:
    """Re-render each val image from its plan and compare with the decoded annotations."""
    plans = plan_coco(small_config)["val"]
    api = small_coco.api("val")
    inter = union = agree = objects = 0
    for image_id, specs in plans.items():
        scene = render_coco_image(small_config, image_id, specs)
        image = api.imgs[image_id]
        assert scene.inst.shape == (image["height"], image["width"])
        semantic = np.zeros(scene.inst.shape, dtype=np.uint8)
        for ann in api.loadAnns(api.getAnnIds(imgIds=[image_id])):
            semantic[api.annToMask(ann) > 0] = coco_label_of(ann["category_id"])
        rendered = scene.semantic()
        inter += ((semantic > 0) & (rendered > 0)).sum()
        union += ((semantic > 0) | (rendered > 0)).sum()
        agree += ((semantic == rendered) & (rendered > 0)).sum()
        objects += (rendered > 0).sum()
    assert inter / union > 0.98  # the union of the instances covers the rendered objects
    assert agree / objects > 0.98  # with the right classes


# ---------------------------------------------------------------- manifest, determinism


def test_manifest_checksums_match_files(small_dir: Path, small_config) -> None:
    import json

    manifest = json.loads((small_dir / "manifest.json").read_text())
    assert set(manifest["archives"]) == set(FILES)
    for name, entry in manifest["archives"].items():
        path = small_dir / name
        assert entry["name"] == name
        assert entry["size"] == path.stat().st_size
        assert entry["md5"] == file_digest(path, "md5")
        assert entry["sha256"] == file_digest(path, "sha256")
    assert manifest["config"]["seed"] == small_config.seed
    assert sorted(p.name for p in small_dir.iterdir()) == sorted([*FILES, "manifest.json"])


def test_same_seed_same_bytes_other_seed_other_data(
    small_dir: Path, tmp_path: Path, small_config, coco_reader
) -> None:
    import dataclasses
    import json
    import os
    import subprocess
    import sys

    # A fresh process with another string-hash seed: set iteration order must not leak in. It
    # writes the two data sets in two worker processes (the fixture in one): the same bytes.
    config_json = json.dumps(dataclasses.asdict(small_config))
    code = (
        "import json, sys; from pathlib import Path; "
        "from hdmnet.data.synth import SynthConfig, generate; "
        "generate(Path(sys.argv[1]), SynthConfig.from_dict(json.loads(sys.argv[2])), workers=2)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "again"), config_json], check=True, env=env
    )
    first = json.loads((small_dir / "manifest.json").read_text())
    assert json.loads((tmp_path / "again" / "manifest.json").read_text()) == first
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (small_dir / name).read_bytes()
    other_config = dataclasses.replace(small_config, seed=small_config.seed + 1)
    other = generate(tmp_path / "other", other_config)
    for name in FILES:
        assert other["archives"][name]["sha256"] != first["archives"][name]["sha256"], name
    coco = coco_reader(tmp_path / "other", tmp_path / "json")
    before = coco_reader(small_dir, tmp_path / "json0")
    assert coco.document("val")["images"] != before.document("val")["images"]


def test_config_from_dict_round_trip(small_config) -> None:
    import dataclasses

    from hdmnet.data.synth import SynthConfig

    values = dataclasses.asdict(small_config)
    values["image_side_range"] = list(values["image_side_range"])
    values["voc_side_range"] = list(values["voc_side_range"])
    assert SynthConfig.from_dict(values) == small_config
    with pytest.raises(ValueError, match=r"unknown SynthConfig keys \['voc_tain'\]"):
        SynthConfig.from_dict({"voc_tain": 3})


def test_voc_masks_are_the_rendered_scenes(small_pascal, small_config) -> None:
    from hdmnet.data.synth.pascal import plan_pascal, render_pascal_image

    _, plans = plan_pascal(small_config)
    for image_id in small_pascal.voc_list("val")[:10]:
        scene = render_pascal_image(small_config, image_id, plans[image_id])
        expected = scene.voc_mask(small_config.voc_border_width)
        assert np.array_equal(small_pascal.voc_mask(image_id), expected)
        decoded = small_pascal.image(image_id).astype(int)
        assert np.abs(decoded - scene.image).mean() < 8  # only JPEG loss (noise, fine textures)


def test_jpeg_quality_is_applied(small_pascal) -> None:
    image_id = small_pascal.voc_list("train")[0]
    data = small_pascal.voc_files[f"{VOC}/JPEGImages/{image_id}.jpg"]
    jpeg = Image.open(io.BytesIO(data))
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB"
    # Quality 90 gives a luminance quantisation table with small steps.
    assert max(jpeg.quantization[0]) < 40


def test_synth_config_from_params_block() -> None:
    from types import SimpleNamespace

    from hdmnet.data.synth import SynthConfig, synth_config

    assert synth_config({"seed": 0, "scale": 1.0}) == SynthConfig()
    half = synth_config(SimpleNamespace(seed=4, scale=0.5))
    assert half.seed == 4
    assert (half.voc_train, half.voc_val, half.coco_train, half.coco_val) == (150, 75, 500, 250)
    assert half.anchors_per_class == 4
    assert synth_config({"seed": 0, "scale": 0.75}).anchors_per_class == 6  # 5-shot still safe
    assert synth_config({"seed": 0, "scale": 3}).anchors_per_class == 8
    with pytest.raises(ValueError, match=r"synth\.scale must be a positive number"):
        synth_config({"seed": 0, "scale": 0})


def test_infeasible_config_fails_before_writing(tmp_path: Path) -> None:
    from hdmnet.data.synth import synth_config

    with pytest.raises(ValueError, match=r"PASCAL val \(voc_val\): 15 images cannot hold"):
        generate(tmp_path / "out", synth_config({"seed": 0, "scale": 0.1}))
    assert not (tmp_path / "out").exists()
