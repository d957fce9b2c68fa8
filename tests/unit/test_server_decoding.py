"""Payload decoding: JSON parsing, array validation and the PNG/JPEG preprocessing."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from mnist_server.decoding import (
    check_images,
    images_from_json,
    images_from_upload,
    numeric_array,
    parse_json,
)
from mnist_server.errors import InvalidInputError, Reason, TooLargeError

DIGIT = np.zeros((28, 28), np.uint8)
DIGIT[6:22, 12:16] = 255  # a light "1" on black, as in MNIST
DIGIT[6:9, 9:12] = 180


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_a_28x28_grayscale_png_round_trips_exactly() -> None:
    images = images_from_upload(encode(DIGIT))
    assert images.dtype == np.float32
    assert images.shape == (1, 28, 28)
    np.testing.assert_allclose(images[0], DIGIT / 255, atol=1e-7)


def test_a_dark_digit_on_light_paper_is_inverted() -> None:
    images = images_from_upload(encode(255 - DIGIT))
    np.testing.assert_allclose(images[0], DIGIT / 255, atol=1e-7)


def test_transparent_pixels_count_as_paper() -> None:
    # A canvas drawing: black strokes on a fully transparent background.
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = np.where(DIGIT > 0, 255, 0)
    images = images_from_upload(encode(rgba, mode="RGBA"))
    np.testing.assert_allclose(images[0], (DIGIT > 0).astype(np.float32), atol=1e-7)


def test_colour_and_jpeg_and_a_larger_image_are_reduced_to_28x28_grayscale() -> None:
    large = np.kron(DIGIT, np.ones((10, 10), np.uint8))  # 280x280
    rgb = np.stack([large] * 3, axis=-1)
    images = images_from_upload(encode(rgb, fmt="JPEG"))
    assert images.shape == (1, 28, 28)
    assert np.abs(images[0] - DIGIT / 255).mean() < 0.03


def test_a_non_square_image_is_padded_with_black_keeping_its_aspect_ratio() -> None:
    wide = np.full((28, 56), 255, np.uint8)
    wide[:, :28] = 0  # left half dark, right half light: mean 0.5, not inverted
    images = images_from_upload(encode(wide))[0]
    assert images.shape == (28, 28)
    assert np.all(images[:6] == 0)  # padding above
    assert np.all(images[-6:] == 0)  # and below
    assert images[14, 20] > 0.9


def test_json_bodies_in_utf16_are_read_and_booleans_are_noticed() -> None:
    body = parse_json(json.dumps({"inputs": [True]}).encode("utf-16"))
    assert body.value == {"inputs": [True]}
    assert body.mentions_booleans
    assert not parse_json(b'{"inputs": [1]}').mentions_booleans


def test_numeric_arrays_keep_integers_and_check_images_returns_float32() -> None:
    array = numeric_array([[[0, 1] * 14] * 28], "inputs", check_booleans=False)
    assert array.dtype.kind == "i"
    images = check_images(array, "inputs", max_batch=4)
    assert images.dtype == np.float32
    assert images.shape == (1, 28, 28)


def test_single_image_versus_batch() -> None:
    image = np.full((28, 28), 0.25).tolist()
    single = images_from_json(image, "inputs", 4, check_booleans=False)
    batch = images_from_json([image, image], "inputs", 4, check_booleans=False)
    assert single.single
    assert single.images.shape == (1, 28, 28)
    assert not batch.single
    assert batch.images.shape == (2, 28, 28)


def test_the_batch_limit_is_checked_after_the_shape() -> None:
    image = np.zeros((28, 28)).tolist()
    with pytest.raises(TooLargeError) as too_many:
        images_from_json([image] * 5, "inputs", 4, check_booleans=False)
    assert too_many.value.reason is Reason.BATCH_TOO_LARGE
    with pytest.raises(InvalidInputError) as wrong:
        images_from_json([[0.0] * 5] * 5, "inputs", 4, check_booleans=False)
    assert wrong.value.reason is Reason.WRONG_SHAPE
    assert "[5, 5]" in wrong.value.message
