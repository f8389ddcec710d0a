"""Training and evaluation transforms: shapes, normalisation, padding values, reproducibility."""

import cv2
import numpy as np
import pytest

from hdmnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, TrainTransform

MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def sample(h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.choice(np.array([0, 1, 255], dtype=np.uint8), size=(h, w))
    base = rng.choice(np.array([0, 4, 9, 255], dtype=np.uint8), size=(h, w))
    return image, mask, base


def denormalise(chw):
    return chw.transpose(1, 2, 0) * STD + MEAN


def test_eval_transform_resizes_without_keeping_aspect():
    image, mask, base = sample()
    out, (m, b) = EvalTransform(24)(image, [mask, base])
    assert out.shape == (3, 24, 24) and out.dtype == np.float32 and out.flags.c_contiguous
    assert m.shape == (24, 24) and m.dtype == np.uint8
    assert set(np.unique(m)) <= {0, 1, 255} and set(np.unique(b)) <= {0, 4, 9, 255}
    expected = cv2.resize(image.astype(np.float32), (24, 24), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(denormalise(out), expected, atol=1e-3)
    assert np.array_equal(m, cv2.resize(mask, (24, 24), interpolation=cv2.INTER_NEAREST))


def test_normalisation_of_mean_image_is_zero():
    image = np.broadcast_to(MEAN, (8, 8, 3)).astype(np.float32)
    out, _ = EvalTransform(8)(image, [])
    np.testing.assert_allclose(out, 0.0, atol=1e-5)
    white = np.full((8, 8, 3), 255, np.uint8)
    out, _ = EvalTransform(8)(white, [])
    np.testing.assert_allclose(out[:, 0, 0], (255 - MEAN) / STD, rtol=1e-5)


def test_train_transform_reproducible_and_seed_dependent():
    image, mask, base = sample()
    t = TrainTransform(32)
    a = t(image, [mask, base], np.random.default_rng(5))
    b = t(image, [mask, base], np.random.default_rng(5))
    assert np.array_equal(a[0], b[0])
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1], strict=True))
    outs = [t(image, [mask], np.random.default_rng(s))[0] for s in range(6)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    assert a[0].shape == (3, 32, 32) and a[1][0].shape == (32, 32) and a[1][1].shape == (32, 32)
    assert set(np.unique(a[1][0])) <= {0, 1, 255} and set(np.unique(a[1][1])) <= {0, 4, 9, 255}


def no_aug(**kw):
    args = dict(scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0, flip_p=0.0)
    args.update(kw)
    return TrainTransform(20, **args)


def test_train_transform_identity_when_disabled():
    image, mask, _ = sample(20, 20)
    out, (m,) = no_aug()(image, [mask], np.random.default_rng(0))
    np.testing.assert_allclose(denormalise(out), image, atol=1e-3)
    assert np.array_equal(m, mask)


def test_flip_is_joint():
    image, mask, _ = sample(20, 20)
    out, (m,) = no_aug(flip_p=1.0)(image, [mask], np.random.default_rng(0))
    np.testing.assert_allclose(denormalise(out), image[:, ::-1], atol=1e-3)
    assert np.array_equal(m, mask[:, ::-1])


def test_blur_applied_with_kernel_5():
    image, mask, _ = sample(20, 20)
    out, (m,) = no_aug(blur_p=1.0)(image, [mask], np.random.default_rng(0))
    expected = cv2.GaussianBlur(image.astype(np.float32), (5, 5), 0)
    np.testing.assert_allclose(denormalise(out), expected, atol=1e-3)
    assert np.array_equal(m, mask)  # masks are never blurred


def test_rotation_pads_image_with_mean_and_masks_with_ignore():
    image = np.full((20, 20, 3), 10, np.uint8)
    mask = np.ones((20, 20), np.uint8)
    t = no_aug(rotate_p=1.0, rotate=(45.0, 45.0))
    out, (m,) = t(image, [mask], np.random.default_rng(0))
    assert m[0, 0] == 255 and m[10, 10] == 1  # corner came from outside the image
    np.testing.assert_allclose(out[:, 0, 0], 0.0, atol=1e-5)  # mean padding normalises to 0
    np.testing.assert_allclose(denormalise(out)[10, 10], 10, atol=1e-3)
    assert set(np.unique(m)) == {1, 255}


def test_scale_range_respected():
    image, mask, _ = sample(40, 40)
    # Scale 0.5 then resize back: equals a direct down/up resize, so the image loses detail.
    out, _ = no_aug(scale=(0.5, 0.5))(image, [mask], np.random.default_rng(0))
    small = cv2.resize(image.astype(np.float32), None, fx=0.5, fy=0.5)
    expected = cv2.resize(small, (20, 20), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(denormalise(out), expected, atol=1e-3)


def test_probabilities_roughly_half():
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, :5] = 255  # asymmetric, so a flip is visible
    t = TrainTransform(10, scale=(1.0, 1.0), rotate_p=0.0, blur_p=0.0)
    flips = sum(
        t(image, [], np.random.default_rng(s))[0][0, 0, 0] < 0 for s in range(400)
    )  # flipped -> left column dark
    assert 150 < flips < 250


def test_random_crop_pads_small_images():
    image, mask, _ = sample(10, 12)
    t = TrainTransform(16, scale=(1.0, 1.0), rotate_p=0, blur_p=0, flip_p=0, crop=True)
    out, (m,) = t(image, [mask], np.random.default_rng(0))
    assert out.shape == (3, 16, 16) and m.shape == (16, 16)
    assert (m[0] == 255).all() and (m[-1] == 255).all()  # 6 rows of padding, 3 each side
    assert np.array_equal(m[3:13, 2:14], mask)
    big, bmask, _ = sample(40, 50)
    out, (m,) = t(big, [bmask], np.random.default_rng(1))
    assert out.shape == (3, 16, 16)
    hits = [
        (y, x)
        for y in range(25)
        for x in range(35)
        if np.array_equal(bmask[y : y + 16, x : x + 16], m)
    ]
    assert hits  # the crop is a window of the original


def test_bad_inputs():
    image, mask, _ = sample()
    with pytest.raises(ValueError, match=r"mask 0 has shape \(5, 5\)"):
        EvalTransform(8)(image, [mask[:5, :5]])
    with pytest.raises(ValueError, match="HxWx3"):
        EvalTransform(8)(image[..., 0], [])
    with pytest.raises(ValueError, match="uint8"):
        EvalTransform(8)(image, [mask.astype(np.int64)])
    with pytest.raises(ValueError, match="rotate_p"):
        TrainTransform(8, rotate_p=1.5)
    with pytest.raises(ValueError, match="blur_kernel"):
        TrainTransform(8, blur_kernel=4)
