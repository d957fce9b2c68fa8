"""Payload decoding: JSON parsing, array validation and the PNG/JPEG preprocessing."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_server.decoding import (
    MAX_IMAGE_PIXELS,
    check_images,
    contains,
    count_byte,
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


# --- memory: bounded before anything large is built ----------------------------------------


def peak_allocated_mb(work: Callable[[], object]) -> float:
    """Peak memory Python and NumPy allocate while ``work`` runs (both report to tracemalloc)."""
    tracemalloc.start()
    with contextlib.suppress(InvalidInputError, TooLargeError):
        work()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def test_a_png_canvas_above_the_limit_is_refused_from_its_header() -> None:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    accepted = encode(np.zeros((side, side), np.uint8))
    assert images_from_upload(accepted).shape == (1, 28, 28)
    refused = encode(np.zeros((side + 1, side), np.uint8))
    with pytest.raises(InvalidInputError, match=f"{side}x{side + 1} pixels") as error:
        images_from_upload(refused)
    assert error.value.reason is Reason.BAD_IMAGE
    assert peak_allocated_mb(lambda: images_from_upload(refused)) < 2


def test_a_large_baseline_jpeg_is_decoded_at_a_reduced_scale_but_not_a_progressive_one() -> None:
    photo = np.full((4096, 3072, 3), 255, np.uint8)  # a 12-megapixel photo of white paper...
    photo[1000:3000, 1400:1700] = 0  # ...with a dark stroke
    baseline = encode(photo, fmt="JPEG")
    # Full size, one RGB copy alone would be 36 MiB.
    assert peak_allocated_mb(lambda: images_from_upload(baseline)) < 12
    image = images_from_upload(baseline)[0]
    assert image[14, 14] > 0.9 and image[14, 2] < 0.1  # inverted: a light stroke on black
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", progressive=True)
    with pytest.raises(InvalidInputError, match="progressive JPEG"):
        images_from_upload(buffer.getvalue())


def test_exif_orientation_is_applied_to_the_reduced_image() -> None:
    upright = np.zeros((1000, 1000), np.uint8)
    upright[100:300, 450:550] = 255  # a light bar near the top
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down: rotate 180 degrees to view
    buffer = io.BytesIO()
    Image.fromarray(upright[::-1, ::-1].copy()).save(buffer, format="PNG", exif=exif)
    image = images_from_upload(buffer.getvalue())[0]
    assert image[:14].mean() > image[14:].mean()  # the bar is back at the top


def test_png_text_chunks_cannot_inflate() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (8 * 1024 * 1024), zip=True)  # 8 MiB compressing to ~8 kB
    buffer = io.BytesIO()
    Image.fromarray(DIGIT).save(buffer, format="PNG", pnginfo=info)
    assert len(buffer.getvalue()) < 64 * 1024
    assert peak_allocated_mb(lambda: images_from_upload(buffer.getvalue())) < 4


@pytest.mark.parametrize("item", [b"{}", b"0", b"[]", b'"a"'])
def test_a_body_of_more_json_values_than_a_batch_can_need_is_refused_before_parsing(item: bytes) -> None:
    body = b'{"inputs": [' + b",".join([item] * 200_000) + b"]}"
    with pytest.raises(TooLargeError, match="more JSON values than 128 images") as error:
        parse_json(body, max_batch=128)
    assert error.value.reason is Reason.BATCH_TOO_LARGE
    assert peak_allocated_mb(lambda: parse_json(body, max_batch=128)) < 1
    many_keys = b'{"inputs": 0, ' + b",".join(b'"k%d": 0' % i for i in range(5000)) + b"}"
    with pytest.raises(TooLargeError, match="object members"):
        parse_json(many_keys, max_batch=128)


def test_one_long_string_among_numbers_is_refused_without_a_string_array() -> None:
    # NumPy would make a string array as wide as the longest string for all 100,000 values:
    # 100,000 x 40,000 characters x 4 bytes = 16 GB.
    body = b'{"inputs": [["' + b"x" * 40_000 + b'"' + b", 0" * 100_000 + b"]]}"
    parsed = parse_json(body, max_batch=128)
    assert parsed.mentions_strings
    with pytest.raises(InvalidInputError, match="holds strings"):
        images_from_json(parsed.value["inputs"], "inputs", 128, parsed.mentions_booleans)
    assert peak_allocated_mb(lambda: images_from_json(parsed.value["inputs"], "inputs", 128, False)) < 8
    plain = parse_json(json.dumps({"inputs": DIGIT.tolist()}).encode(), max_batch=1)
    assert not plain.mentions_strings  # the usual body skips the check


def test_nested_strings_are_found_at_any_depth_and_ragged_nesting_is_left_to_numpy() -> None:
    with pytest.raises(InvalidInputError, match="holds strings"):
        numeric_array([[[0.5] * 27 + ["x"]] * 28], "inputs", False)
    with pytest.raises(InvalidInputError, match="ragged"):
        numeric_array([[0.5, 0.5], 0.5], "inputs", False)


def v2_body(data: list[object], **extra: object) -> bytes:
    tensor = {"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def test_a_v2_envelope_s_strings_do_not_force_the_per_element_string_check() -> None:
    body = parse_json(v2_body([0.5] * 784, id='with "quotes" and \\\\ escapes'))
    data = body.value["inputs"][0]["data"]
    assert body.mentions_strings  # the envelope's own strings
    # Escaped quotes make more quotes than strings: the count proves nothing, so the check runs.
    assert body.may_hold_strings_in(data)
    plain = parse_json(v2_body([0.5] * 784, id="request-1", parameters={"a": ["b", 1]}))
    assert not plain.may_hold_strings_in(plain.value["inputs"][0]["data"])


@pytest.mark.parametrize("hidden", ["x", "0.5", ""])
def test_a_string_in_v2_data_is_always_found(hidden: str) -> None:
    data: list[object] = [0.5] * 784
    data[100] = hidden
    body = parse_json(v2_body(data, id="request-1"))
    assert body.may_hold_strings_in(body.value["inputs"][0]["data"])


def test_an_envelope_too_large_to_walk_counts_as_holding_strings() -> None:
    body = parse_json(v2_body([0.5] * 784, parameters={"padding": list(range(1000))}))
    assert body.may_hold_strings_in(body.value["inputs"][0]["data"])


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.sampled_from([0, 100, 20_000]),
    st.sampled_from([b"true", b"false", b",", b'"']),
)
def test_the_vectorised_body_scans_agree_with_bytes_methods(
    head: bytes, tail: bytes, filler: int, word: bytes
) -> None:
    """count_byte and contains (NumPy on large bodies) say what bytes.count and `in` say, with
    the word at either end, in the middle or absent, and whatever random bytes lie around it."""
    bodies = (
        head + b"1" * filler + tail,
        word + b"2" * filler + head,
        head + b" " * filler + word,
        head + b"3" * filler + word + b"4" * filler + tail,
    )
    for raw in bodies:
        assert contains(raw, word) == (word in raw)
        assert count_byte(raw, word[:1]) == raw.count(word[:1])
