"""Turning request payloads into a validated ``(n, 28, 28)`` float32 batch, shared by all protocols.

Bodies are parsed by orjson and JSON arrays go through one ``np.asarray`` (C speed, no
per-element Python), then NumPy's own dtype and shape say what is wrong. Every failure is a 4xx
``ApiError`` that names the field and the problem; nothing here may raise anything else for any
input.
"""

from __future__ import annotations

import io
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from mnist_server.errors import InvalidInputError, Reason, TooLargeError
from mnist_server.model import Images
from mnist_server.repository import IMAGE_SHAPE

IMAGE_FORMATS = ("PNG", "JPEG")
# Checked from the header before decoding (a 74 KB PNG can declare a 4096x4096 canvas that cost
# ~320 MiB through the conversions): the largest canvas a PNG or a progressive JPEG may have...
MAX_IMAGE_PIXELS = 2048 * 2048
# ...and a baseline JPEG, which is decoded at 1/2 to 1/8 scale (a 12-megapixel photo fits).
MAX_JPEG_PIXELS = 4096 * 4096
# Large images are reduced (box filter, integer factor) to about this side before the colour work:
# 8 times the model's 28, so the final Lanczos resize sees the same detail.
WORKING_SIDE = 224
_EXPECTED = "[28, 28] (one image) or [n, 28, 28] (a batch)"


@dataclass(frozen=True)
class JsonBody:
    value: Any
    # NumPy silently promotes booleans mixed with numbers to 0/1; only a body that spells
    # `true`/`false` somewhere needs the slower per-element check, so the common case stays fast.
    mentions_booleans: bool
    # NumPy turns a list holding a string into a string array as wide as the longest string, for
    # every element: one long string among 100,000 numbers costs gigabytes. Only a body with
    # strings other than its top-level keys needs the check (every string is two quotes).
    mentions_strings: bool = True
    quotes: int = -1  # the '"' characters in the body (-1: not counted)

    def may_hold_strings_in(self, part: Any) -> bool:
        """Whether ``part`` (a value inside this body, e.g. a tensor's data) may hold strings:
        not if the strings elsewhere in the body, counted in a walk that skips ``part``, account
        for every quote (each string has at least two). A walk too long to be worth it says yes."""
        if not self.mentions_strings:
            return False
        found = _strings_outside(self.value, part, budget=[_STRING_WALK_BUDGET])
        return found < 0 or self.quotes != 2 * found


@dataclass(frozen=True)
class Batch:
    images: Images
    single: bool  # the request held one bare image rather than a list of them


def parse_json(raw: bytes, max_batch: int | None = None) -> JsonBody:
    """A JSON object. With ``max_batch``, a body holding more values than ``max_batch`` images
    could need is refused before it is parsed: parsed, a few MiB of small JSON values cost over
    a hundred MiB of Python objects."""
    if max_batch is not None:
        check_json_size(raw, max_batch)
    # orjson parses a request several times faster than the standard library (about 0.1 ms
    # rather than 0.8 ms for one image). It accepts strict UTF-8 JSON only; anything it refuses
    # (other encodings, NaN tokens, huge integers, malformed text) takes the standard path,
    # whose messages and NaN handling (a 400 non_finite later) are the documented behaviour.
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(value, dict):
            quotes = count_byte(raw, b'"')
            return JsonBody(
                value,
                mentions_booleans=contains(raw, b"true") or contains(raw, b"false"),
                mentions_strings=quotes != 2 * len(value),
                quotes=quotes,
            )
    if not raw.strip():
        raise InvalidInputError("request body is empty; expected a JSON object", Reason.INVALID_JSON)
    try:
        text = raw.decode(json.detect_encoding(raw))
        value = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}", Reason.INVALID_JSON) from None
    except RecursionError:
        raise InvalidInputError(
            "request body is not valid JSON: nested too deeply", Reason.INVALID_JSON
        ) from None
    if not isinstance(value, dict):
        raise InvalidInputError(
            f"request body must be a JSON object, got a JSON {_json_type(value)}", Reason.INVALID_JSON
        )
    quotes = text.count('"')
    return JsonBody(
        value,
        mentions_booleans="true" in text or "false" in text,
        mentions_strings=quotes != 2 * len(value),
        quotes=quotes,
    )


# Values visited when counting a body's strings outside its data (an envelope has a dozen).
_STRING_WALK_BUDGET = 256


def _strings_outside(value: Any, part: Any, budget: list[int]) -> int:
    """The strings (object keys included) in ``value`` outside ``part``; -1 once ``budget[0]``
    values have been visited."""
    budget[0] -= 1
    if budget[0] < 0:
        return -1
    if value is part:
        return 0
    if isinstance(value, str):
        return 1
    if isinstance(value, dict):
        found = len(value)
        items: Any = value.values()
    elif isinstance(value, list):
        found, items = 0, value
    else:
        return 0
    for item in items:
        inner = _strings_outside(item, part, budget)
        if inner < 0:
            return -1
        found += inner
    return found


# Room for the fields around the pixels (ids, shapes, names, parameters).
_JSON_SLACK = 1024


def check_json_size(raw: bytes, max_batch: int) -> None:
    """Refuse a body with more JSON values or object members than a valid request can have.

    Counted on the raw bytes (``bytes.count`` runs at memory speed): every value after the first
    in an array or object follows a ',' and every object member has a ':', so these bound the
    number of Python objects parsing would create (separators inside strings count too, which
    can only over-count). Deep nesting without separators is the parser's depth limit's business.
    """
    values = max_batch * IMAGE_SHAPE[0] * IMAGE_SHAPE[1] + _JSON_SLACK
    members = max_batch + _JSON_SLACK
    if count_byte(raw, b",") > values or count_byte(raw, b":") > members:
        raise TooLargeError(
            f"the request body holds more JSON values than {max_batch} images (the most accepted per "
            f"request) can need; at most {values} values and {members} object members are read",
            Reason.BATCH_TOO_LARGE,
        )


# The body scans above run on every JSON request. ``bytes.count`` and ``in`` take 0.13-0.27 ms
# each on a 64-image body (380 KB), together a quarter of parsing it; a NumPy comparison takes
# 0.03 ms. A single image's body (3 KB) keeps the plain scan: 2.4 µs, NumPy's calls 3.5 µs.
_VECTOR_SCAN_BYTES = 16 * 1024


def count_byte(raw: bytes, byte: bytes) -> int:
    """``raw.count(byte)`` for a single byte."""
    if len(raw) < _VECTOR_SCAN_BYTES:
        return raw.count(byte)
    return int(np.count_nonzero(np.frombuffer(raw, np.uint8) == byte[0]))


def contains(raw: bytes, word: bytes) -> bool:
    """``word in raw``: one vectorised comparison per byte of ``word``."""
    if len(raw) < max(_VECTOR_SCAN_BYTES, len(word)):
        return word in raw
    buffer = np.frombuffer(raw, np.uint8)
    starts = len(buffer) - len(word) + 1
    found = buffer[:starts] == word[0]
    for offset in range(1, len(word)):
        found &= buffer[offset : offset + starts] == word[offset]
    return bool(found.any())


def require(body: dict[str, Any], field: str, hint: str) -> Any:
    if field not in body:
        raise InvalidInputError(f"request body has no {field!r} field; {hint}", Reason.MISSING_FIELD)
    return body[field]


def numeric_array(
    value: Any, field: str, check_booleans: bool, check_strings: bool = True
) -> npt.NDArray[Any]:
    """``value`` as a rectangular numeric array (any shape), or a 400 saying what it holds instead."""
    if check_strings:
        _refuse_strings(value, field)
    try:
        array = np.asarray(value)
    except ValueError:
        # NumPy's message ("inhomogeneous shape after 2 dimensions") is accurate but cryptic.
        raise InvalidInputError(
            f"{field} is ragged (or nested too deeply): every image must be 28 rows of 28 numbers",
            Reason.WRONG_SHAPE,
        ) from None
    kind = array.dtype.kind
    if kind == "b" or (kind in "iuf" and check_booleans and _holds_booleans(array, value)):
        raise InvalidInputError(
            f"{field} holds booleans; pixels must be numbers in [0, 1]", Reason.WRONG_DTYPE
        )
    if kind in "US":
        raise InvalidInputError(
            f"{field} holds strings; pixels must be numbers in [0, 1]", Reason.WRONG_DTYPE
        )
    if kind not in "iuf":
        raise InvalidInputError(
            f"{field} holds null, objects or numbers too large; pixels must be numbers in [0, 1]",
            Reason.WRONG_DTYPE,
        )
    return array


def check_images(array: npt.NDArray[Any], field: str, max_batch: int, expected: str = _EXPECTED) -> Images:
    """Validate an ``(n, 28, 28)`` numeric array (shape, batch size, finiteness, range) → float32."""
    if array.ndim >= 1 and array.shape[0] == 0:
        raise InvalidInputError(
            f"{field} is an empty batch; send at least one 28x28 image", Reason.EMPTY_BATCH
        )
    if array.ndim != 3 or array.shape[1:] != IMAGE_SHAPE:
        raise InvalidInputError(
            f"{field} has shape {list(array.shape)}; expected {expected}", Reason.WRONG_SHAPE
        )
    if array.shape[0] > max_batch:
        raise TooLargeError(
            f"{field} holds {array.shape[0]} images; at most {max_batch} are accepted per request",
            Reason.BATCH_TOO_LARGE,
        )
    low, high = array.min(), array.max()
    # One pass each for min and max: NaN makes both comparisons false, and so does infinity, so
    # the finiteness check runs only for arrays that already failed the range check.
    if not (low >= 0 and high <= 1):
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInputError(
                f"{field} holds NaN or Infinity; pixels must be numbers in [0, 1]", Reason.NON_FINITE
            )
        raise InvalidInputError(
            f"{field} values must be in [0, 1] (scale 0-255 pixels by 1/255); got min {low:g}, max {high:g}",
            Reason.OUT_OF_RANGE,
        )
    return array.astype(np.float32, copy=False)


def images_from_json(
    value: Any, field: str, max_batch: int, check_booleans: bool, check_strings: bool = True
) -> Batch:
    """One ``[28][28]`` image or a ``[n][28][28]`` batch (``field`` names it in errors)."""
    array = numeric_array(value, field, check_booleans, check_strings)
    single = array.shape == IMAGE_SHAPE
    return Batch(check_images(array[np.newaxis] if single else array, field, max_batch), single)


def images_from_upload(data: bytes) -> Images:
    """A PNG/JPEG as one MNIST-like ``(1, 28, 28)`` image.

    MNIST digits are light strokes on a black background. Grayscale, with transparent pixels
    taken as white paper; an image that is mostly light (a dark digit on paper) is inverted;
    then it is padded to a square with black, keeping its aspect ratio, and resized to 28x28.

    Memory is bounded before anything is decoded (a small file can declare a huge canvas): the
    canvas's size is checked from the header, a JPEG is decoded in grayscale at a reduced scale,
    and a large image is reduced to about ``WORKING_SIDE`` pixels before any other copy is made.
    """
    from PIL import Image, ImageOps, ImageStat

    _limit_png_text()
    if not data:
        raise InvalidInputError("the uploaded image is empty", Reason.BAD_IMAGE)
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            _check_canvas(image)
            if image.format == "JPEG":
                # libjpeg scales by 1/2 to 1/8 while decoding: a photo never lands full size.
                image.draft("L", (WORKING_SIDE, WORKING_SIDE))
            image.load()
            orientation = image.getexif().get(_ORIENTATION)
            transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            if transparent:
                working = image.convert("RGBA").convert("LA") if image.mode == "P" else image.convert("LA")
            else:
                working = image.convert("L")
        factor = min(working.size) // WORKING_SIDE
        if factor >= 2:
            working = working.reduce(factor)
        if orientation in _TRANSPOSE:
            working = working.transpose(Image.Transpose(_TRANSPOSE[orientation]))
        if transparent:
            gray, alpha = working.split()
            gray = Image.composite(gray, Image.new("L", gray.size, 255), alpha)
        else:
            gray = working
    except InvalidInputError:
        raise
    except Exception as exc:
        # Pillow signals corrupt or truncated data with many exception types (OSError,
        # SyntaxError, ValueError, struct.error, DecompressionBombError ...): all mean "bad image".
        raise InvalidInputError(
            f"could not decode the image as {' or '.join(IMAGE_FORMATS)}: {exc}", Reason.BAD_IMAGE
        ) from None
    if ImageStat.Stat(gray).mean[0] > 127.5:
        gray = ImageOps.invert(gray)
    square = ImageOps.pad(gray, IMAGE_SHAPE, method=Image.Resampling.LANCZOS, color=0)
    pixels = np.asarray(square, dtype=np.float32) / np.float32(255.0)
    return pixels[np.newaxis]


def _check_canvas(image: Any) -> None:
    """Refuse, from the header alone, a canvas whose decoding would cost too much memory."""
    width, height = image.size
    progressive = image.format == "JPEG" and bool(image.info.get("progressive"))
    # A baseline JPEG is decoded at a reduced scale (draft); a progressive one needs its whole
    # coefficient buffer (2 bytes per pixel and component) whatever the scale, and a PNG its canvas.
    limit = MAX_JPEG_PIXELS if image.format == "JPEG" and not progressive else MAX_IMAGE_PIXELS
    if width * height > limit:
        side = math.isqrt(limit)
        kind = "progressive JPEG" if progressive else image.format
        raise InvalidInputError(
            f"image is {width}x{height} pixels; at most {limit} pixels (e.g. {side}x{side}) are "
            f"decoded for a {kind}: scale it down",
            Reason.BAD_IMAGE,
        )


def _limit_png_text() -> None:
    # Text chunks are decompressed whole (up to 64 MiB per image by Pillow's default): a few kB
    # of zTXt can inflate to that. Digits need no text.
    from PIL import PngImagePlugin

    PngImagePlugin.MAX_TEXT_CHUNK = 64 * 1024
    PngImagePlugin.MAX_TEXT_MEMORY = 256 * 1024


_ORIENTATION = 0x0112  # EXIF Orientation
# As ImageOps.exif_transpose, applied to the reduced image rather than the whole canvas: the
# orientation's Image.Transpose (FLIP_LEFT_RIGHT 0, FLIP_TOP_BOTTOM 1, ROTATE_90 2, ROTATE_180 3,
# ROTATE_270 4, TRANSPOSE 5, TRANSVERSE 6).
_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}


def _refuse_strings(value: Any, field: str) -> None:
    """A 400 if ``value``'s nested lists hold a string, found before NumPy sees it (see
    ``JsonBody.mentions_strings``): level by level, in C loops, stopping at a level that is not
    all lists (NumPy refuses a ragged nesting before it allocates anything)."""
    level = [value]
    while level:
        kinds = set(map(type, level))
        if str in kinds:
            raise InvalidInputError(
                f"{field} holds strings; pixels must be numbers in [0, 1]", Reason.WRONG_DTYPE
            )
        if kinds != {list}:
            return
        level = list(itertools.chain.from_iterable(level))


def _holds_booleans(array: npt.NDArray[Any], value: Any) -> bool:
    if array.size == 0:
        return False
    objects = np.asarray(value, dtype=object)
    # np.asarray: on a 0-d array (a bare number) the ufunc returns a plain bool, not an array.
    return bool(np.asarray(_IS_BOOL(objects)).any())


_IS_BOOL = np.frompyfunc(lambda item: item.__class__ is bool, 1, 1)


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
