"""The one preprocessing function shared by training and serving."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from spine_ui.config import PreprocessConfig
from spine_ui.core.contract import preprocess, to_model_input
from spine_ui.core.preprocess import enhance, normalise, to_square


def test_enhance_is_clahe_clip_2_at_working_size():
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.random((2000, 1000)).astype(np.float32), (0, 0), 9)
    img = (img - img.min()) / (img.max() - img.min())
    out = enhance(img)
    assert out.dtype == np.uint8 and out.shape == (1024, 512)
    small = cv2.resize(img, (512, 1024), interpolation=cv2.INTER_AREA)
    ref = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(np.uint8(np.rint(small * 255)))
    np.testing.assert_array_equal(out, ref)
    assert PreprocessConfig().clahe_clip == 2.0


def test_small_images_are_not_upscaled():
    img = np.linspace(0, 1, 300 * 200, dtype=np.float32).reshape(300, 200)
    assert enhance(img).shape == (300, 200)


def test_normalise_imagenet():
    x = normalise(np.full((4, 4), 255, np.uint8))
    np.testing.assert_allclose(x[:, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-6)
    assert normalise(np.zeros((2, 4, 4), np.uint8)).shape == (2, 3, 4, 4)


@pytest.mark.parametrize("policy", ["stretch", "letterbox"])
def test_placement_crop_recovers_the_image_region(policy):
    img = np.zeros((400, 200), np.uint8)
    img[100:300, 50:150] = 255
    square, placement = to_square(img, 128, policy)
    assert square.shape == (128, 128)
    region = placement.crop(square)
    back = cv2.resize(region, (200, 400), interpolation=cv2.INTER_NEAREST)
    assert np.mean(back == img) > 0.97
    if policy == "letterbox":
        assert placement.pad_x > 0 and placement.pad_y == 0


def test_preprocess_equals_its_parts():
    img = np.random.default_rng(1).random((256, 256)).astype(np.float32)
    np.testing.assert_array_equal(preprocess(img, 64), to_model_input(enhance(img), 64)[0])
    with pytest.raises(ValueError):
        to_square(img, 64, "crop")
