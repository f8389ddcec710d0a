"""Learnability proxy: object regions of a class look alike across images and unlike other
classes and the background. Nearest-centroid classification on simple colour and texture
statistics, centroids from one half of the images, accuracy measured on the other half."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MIN_REGION = 300  # pixels left after eroding the region edge
ERODE = np.ones((5, 5), dtype=np.uint8)


def region_features(image: np.ndarray, mask: np.ndarray, labels: list[int]) -> dict[int, list]:
    """Colour mean/std, chroma vector and gradient energies of each labelled region."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3))
    gy = np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))
    lap = np.abs(cv2.Laplacian(gray, cv2.CV_32F))
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    angle = hsv[..., 0] / 256.0 * 2.0 * np.pi
    chroma = np.stack([np.cos(angle) * hsv[..., 1], np.sin(angle) * hsv[..., 1]], axis=-1)
    out = {}
    for label in labels:
        sel = cv2.erode((mask == label).astype(np.uint8), ERODE).astype(bool)
        if sel.sum() < MIN_REGION:
            continue
        px = image[sel].astype(np.float32)
        out[label] = np.concatenate(
            [
                px.mean(0),
                px.std(0),
                chroma[sel].mean(0),
                [gx[sel].mean(), gy[sel].mean(), lap[sel].mean()],
            ]
        )
    return out


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray, half: np.ndarray):
    """Accuracy on half 1 of centroids fitted on half 0 (features standardised on half 0)."""
    mean, std = features[half == 0].mean(0), features[half == 0].std(0) + 1e-6
    z = (features - mean) / std
    classes = np.unique(labels[half == 0])
    centroids = np.stack([z[(half == 0) & (labels == c)].mean(0) for c in classes])
    test = half == 1
    dist = ((z[test][:, None, :] - centroids[None]) ** 2).sum(-1)
    predicted = classes[np.argmin(dist, axis=1)]
    return predicted == labels[test], labels[test]


def test_nearest_centroid_sanity() -> None:
    """The measure itself: random features score near chance, separable ones near 1."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 20)
    half = np.tile([0, 1], 200)
    noise = rng.normal(size=(400, 8))
    correct, _ = nearest_centroid_accuracy(noise, labels, half)
    assert correct.mean() < 0.2
    separable = np.concatenate([noise * 0.1, np.eye(20)[labels]], axis=1)
    correct, _ = nearest_centroid_accuracy(separable, labels, half)
    assert correct.mean() > 0.95


def test_pascal_classes_separable_from_each_other_and_background(default_pascal) -> None:
    feats, labels, half = [], [], []
    ids = default_pascal.voc_list("trainval")[:240]
    for n, image_id in enumerate(ids):
        mask = default_pascal.voc_mask(image_id)
        present = [int(c) for c in np.unique(mask) if c != 255]
        for label, f in region_features(default_pascal.image(image_id), mask, present).items():
            feats.append(f)
            labels.append(label)
            half.append(n % 2)
    correct, truth = nearest_centroid_accuracy(np.array(feats), np.array(labels), np.array(half))
    objects = truth > 0
    print(
        f"\nPASCAL nearest-centroid over {len(labels)} regions: objects "
        f"{correct[objects].mean():.2f} (chance 0.05), background {correct[~objects].mean():.2f}"
    )
    assert objects.sum() > 150
    assert correct[objects].mean() > 0.75  # 21-way, chance about 0.05
    assert correct[~objects].mean() > 0.7


def test_coco_classes_separable(default_coco) -> None:
    from hdmnet.data.classes import coco_label_of

    feats, labels, half = [], [], []
    api = default_coco.api("train")
    for n, image_id in enumerate(sorted(api.imgs)[:500]):
        image = api.imgs[image_id]
        mask = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        anns = api.loadAnns(api.getAnnIds(imgIds=[image_id], iscrowd=False))
        for ann in anns:
            mask[api.annToMask(ann) > 0] = coco_label_of(ann["category_id"])
        present = sorted({coco_label_of(a["category_id"]) for a in anns})
        if not present:
            continue
        pixels = default_coco.image("train", image["file_name"])
        for label, f in region_features(pixels, mask, present).items():
            feats.append(f)
            labels.append(label)
            half.append(n % 2)
    correct, truth = nearest_centroid_accuracy(np.array(feats), np.array(labels), np.array(half))
    print(
        f"\nCOCO nearest-centroid over {len(labels)} regions: {correct.mean():.2f} (chance 0.0125)"
    )
    assert len(truth) > 300
    assert correct.mean() > 0.7  # 80-way, chance 0.0125
