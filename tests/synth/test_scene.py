"""Planning, rendering and annotation encoding, on single scenes."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hdmnet.data.synth import SynthConfig
from hdmnet.data.synth.coco import coco_groups, polygons_of, uncompressed_rle
from hdmnet.data.synth.looks import (
    SHAPES,
    TEXTURES,
    ClassLook,
    make_grid_looks,
    make_looks,
)
from hdmnet.data.synth.scene import (
    ObjectSpec,
    border_band,
    class_weights,
    image_size,
    plan_split,
    render_scene,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_looks_are_distinct_cells() -> None:
    looks = make_looks(np.random.default_rng(0), 80)
    cells = {(look.texture, round(look.hue, 3)) for look in looks}
    assert len(cells) == 80
    assert {look.texture for look in looks} == set(TEXTURES)
    with pytest.raises(ValueError, match="at most 84"):
        make_looks(np.random.default_rng(0), 85)


def test_looks_sharing_a_hue_differ_in_texture_shape_and_tone() -> None:
    looks = make_looks(np.random.default_rng(3), 20)
    # The first 12 classes (one per hue bin) all differ in hue.
    assert len({round(look.hue, 3) for look in looks[:12]}) == 12
    by_hue: dict[float, list] = {}
    for look in looks:
        by_hue.setdefault(round(look.hue, 3), []).append(look)
    shared = [group for group in by_hue.values() if len(group) > 1]
    assert len(shared) == 8  # 20 classes over 12 bins
    for first, second in shared:
        assert first.texture != second.texture
        assert first.shape != second.shape
        # Bright band (value >= 0.78) then dark band (value <= 0.62).
        assert first.value >= 0.78 > 0.62 >= second.value


def _hue_gap(a: float, b: float) -> float:
    return min(abs(a - b) % 360.0, 360.0 - abs(a - b) % 360.0)


def test_grid_looks_make_each_novel_class_new_in_hue_or_tone() -> None:
    looks = make_grid_looks(np.random.default_rng(3), groups=4, group_size=5)
    assert len(looks) == 20
    hues = sorted({round(look.hue, 6) for look in looks})
    assert len(hues) == 10
    steps = [_hue_gap(a, b) for a, b in zip(hues, hues[1:] + hues[:1], strict=True)]
    assert steps == pytest.approx([36.0] * 10)
    bright = [look.value >= 0.85 for look in looks]
    assert all(0.85 <= look.value <= 0.95 or 0.35 <= look.value <= 0.45 for look in looks)
    assert sum(bright) == 10
    group = [i // 5 for i in range(20)]
    for i, a in enumerate(looks):
        twins = [j for j, b in enumerate(looks) if j != i and round(b.hue, 6) == round(a.hue, 6)]
        # Each hue is one bright and one dark class, in different fold groups.
        assert len(twins) == 1 and bright[twins[0]] != bright[i] and group[twins[0]] != group[i]
        for j, b in enumerate(looks):
            if group[j] == group[i] and j != i:
                assert _hue_gap(a.hue, b.hue) >= 72.0 - 1e-6  # a group's classes stay apart
            elif group[j] != group[i]:
                # Every base class differs from this one in tone or by a whole hue step.
                assert bright[j] != bright[i] or _hue_gap(a.hue, b.hue) >= 36.0 - 1e-6
    # Both tones and every hue are base classes in every fold.
    for novel in range(4):
        base = [looks[i] for i in range(20) if group[i] != novel]
        assert {round(look.hue, 6) for look in base} == set(hues)
        assert {look.value >= 0.85 for look in base} == {True, False}
    with pytest.raises(ValueError, match="even number of groups"):
        make_grid_looks(np.random.default_rng(0), groups=3, group_size=5)


def test_class_weights_imbalanced_with_top_class() -> None:
    weights = class_weights(20, 0.8, np.random.default_rng(1), top=15)
    assert weights.shape == (20,)
    assert weights.sum() == pytest.approx(1.0)
    assert int(np.argmax(weights)) == 14
    assert weights.max() / weights.min() == pytest.approx(20**0.8)


def test_training_plan_anchors_stay_within_fold_groups() -> None:
    rng = np.random.default_rng(2)
    groups = coco_groups()
    assert sorted(c for g in groups for c in g) == list(range(1, 81))
    for group in groups:  # each group is novel together in both FWB and PANet folds
        assert len({(c - 1) % 4 for c in group}) == 1
        assert len({(c - 1) // 20 for c in group}) == 1
    weights = class_weights(80, 0.8, rng, top=1)
    plans = plan_split(rng, 600, weights, 3, groups, 4, 0.25)
    assert len(plans) == 600
    anchors = Counter(s.label for plan in plans for s in plan if s.anchor)
    assert anchors == dict.fromkeys(range(1, 81), 3)
    group_of = {c: i for i, g in enumerate(groups) for c in g}
    for plan in plans:
        if any(s.anchor for s in plan):
            assert len({group_of[s.label] for s in plan}) == 1
            assert len({s.label for s in plan if s.anchor}) == sum(s.anchor for s in plan)


def test_plan_refuses_too_few_images() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="PASCAL val: 10 images cannot hold 8 anchor"):
        plan_split(rng, 10, np.full(20, 0.05), 8, None, 3, 0.2, split_name="PASCAL val")


def test_image_sizes_vary_and_are_never_square() -> None:
    rng = np.random.default_rng(0)
    sizes = [image_size(rng, (160, 320)) for _ in range(300)]
    assert all(160 <= s <= 320 for size in sizes for s in size)
    assert all(h != w for h, w in sizes)
    assert any(h > w for h, w in sizes) and any(w > h for h, w in sizes)
    assert len(set(sizes)) > 100


def test_anchor_keeps_threshold_after_borders_and_occlusion() -> None:
    looks = make_looks(np.random.default_rng(0), 20)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        specs = [ObjectSpec(3), ObjectSpec(7), ObjectSpec(3, anchor=True), ObjectSpec(9, True)]
        scene = render_scene(rng, (170, 230), specs, looks, min_visible=2300, border_width=3)
        mask = scene.voc_mask(3)
        assert mask.shape == (170, 230) == scene.image.shape[:2]
        assert scene.image.dtype == np.uint8
        assert (mask == 3).sum() >= 2300 and (mask == 9).sum() >= 2300
        assert set(np.unique(mask)) <= {0, 3, 7, 9, 255}
        # Instances are numbered 1..n without gaps (fully hidden ones are dropped).
        assert np.unique(scene.inst[scene.inst > 0]).tolist() == list(
            range(1, len(scene.labels) + 1)
        )


def test_render_fails_clearly_when_anchors_cannot_fit() -> None:
    looks = make_looks(np.random.default_rng(0), 20)
    specs = [ObjectSpec(c, anchor=True) for c in (1, 2, 3)]
    with pytest.raises(RuntimeError, match="could not place anchors"):
        render_scene(np.random.default_rng(0), (64, 70), specs, looks, 2300, 3, max_tries=3)


def test_border_band_width() -> None:
    inst = np.zeros((40, 40), dtype=np.int32)
    inst[10:30, 10:30] = 1
    band = border_band(inst, 3)
    row = band[20]
    assert row[:8].sum() == 0 and row[12:28].sum() == 0
    assert row[8:12].sum() == 3  # a band three pixels wide straddling the edge
    assert not border_band(inst, 0).any()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_and_texture_renders(shape: str) -> None:
    rng = np.random.default_rng(5)
    for texture in TEXTURES:
        look = ClassLook(shape, 5, 0.5, 1.2, texture, 8.0, 0.3, 100.0, 0.8, 0.8, "dark", 0.9)
        scene = render_scene(rng, (180, 200), [ObjectSpec(1, True)], [look], 2100, 3)
        assert (scene.semantic() == 1).sum() >= 2100
        pixels = scene.image[scene.inst == 1].astype(float)
        assert pixels.std(axis=0).max() > 5  # textured, not flat
    spread = {}
    for texture in ("flat", "stripes"):
        look = ClassLook(shape, 5, 0.5, 1.2, texture, 8.0, 0.3, 100.0, 0.8, 0.8, "dark", 0.9)
        scene = render_scene(
            np.random.default_rng(5), (180, 200), [ObjectSpec(1, True)], [look], 2100, 3
        )
        spread[texture] = scene.image[scene.inst == 1].astype(float).std(axis=0).max()
    assert spread["flat"] < 0.5 * spread["stripes"]  # shading and grain only


def test_polygons_rasterise_back_to_the_mask() -> None:
    rng = np.random.default_rng(0)
    ious = []
    for _ in range(40):
        mask = np.zeros((90, 120), dtype=np.uint8)
        centre = (int(rng.integers(0, 120)), int(rng.integers(0, 90)))
        axes = (int(rng.integers(2, 40)), int(rng.integers(2, 40)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        mask[rng.random(mask.shape) < 0.002] = 1  # stray single pixels
        polygons = polygons_of(mask)
        assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 90, 120)))
        ious.append((decoded & mask).sum() / (decoded | mask).sum())
    assert min(ious) > 0.85
    assert np.mean(ious) > 0.97


def test_polygon_origin_offsets_crops() -> None:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:15, 8:20] = 1
    full = polygons_of(mask)
    crop = polygons_of(mask[5:15, 8:20], origin=(8, 5))
    assert np.allclose(np.sort(np.array(full[0])), np.sort(np.array(crop[0])))
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(crop, 20, 30)))
    assert np.array_equal(decoded, mask)


def test_uncompressed_rle_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for first_pixel in (0, 1):
        mask = (rng.random((13, 17)) < 0.4).astype(np.uint8)
        mask[0, 0] = first_pixel
        rle = uncompressed_rle(mask)
        assert rle["size"] == [13, 17]
        assert sum(rle["counts"]) == 13 * 17
        assert (rle["counts"][0] == 0) == (first_pixel == 1)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 13, 17))
        assert np.array_equal(decoded, mask)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_side_range": (200, 100)}, "image_side_range"),
        ({"voc_side_range": (32, 100)}, "voc_side_range"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"voc_train": -1}, "voc_train must be >= 0"),
        ({"sbd_from_voc_train": 400}, "sbd_from_voc_train=400 exceeds voc_train=300"),
        ({"sbd_from_voc_val": 151}, "sbd_from_voc_val=151 exceeds voc_val=150"),
        ({"sbd_images": 100}, "sbd_images=100 is smaller"),
        ({"coco_crowd_prob": 1.5}, "coco_crowd_prob"),
        ({"voc_max_classes": 0}, "voc_max_classes"),
    ],
)
def test_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthConfig(**changes)
