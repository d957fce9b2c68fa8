"""Make ``model.onnx`` for a version from its SavedModel (needs TensorFlow, tf2onnx and onnx).

Converted from the SavedModel's serving signature with ``tf2onnx.convert.from_function``: the
Keras path (``from_keras``) does not work with Keras 3, and starting from the signature converts
exactly what the TensorFlow backend serves, with the variables frozen into constants.

Run ``python -m mnist_server.backends.onnx_export <version dir>`` (or call :func:`export_onnx`).
The file is written under a temporary name, checked against TensorFlow on random images, and
only then renamed into place: a server never reads half of it, and a conversion that disagrees
with the SavedModel is never published. An existing ``model.onnx`` is left alone (versions are
immutable once published).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_server.backends import ONNX_FILE, BackendError
from mnist_server.repository import IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME

# ONNX opset 17 is supported by every ONNX Runtime since 1.13.
OPSET = 17


def export_onnx(version_dir: Path, opset: int = OPSET) -> Path:
    """``<version_dir>/model.onnx``, converted from ``<version_dir>``'s SavedModel if missing;
    raises BackendError, and writes nothing, if the conversion disagrees with TensorFlow."""
    target = Path(version_dir) / ONNX_FILE
    if target.is_file():
        return target
    proto = convert(version_dir, opset)
    fd, staging = tempfile.mkstemp(prefix=f".{ONNX_FILE}.", dir=version_dir)
    try:
        # mkstemp makes the file private (0600); the server often runs as another user (the image
        # is built as root and runs as 65532), so give it the mode any new file would get.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(proto.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())
        check_agreement(version_dir, Path(staging))
        Path(staging).replace(target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


def check_agreement(
    version_dir: Path, onnx_file: Path | None = None, images: int = 64, tolerance: float = 1e-4
) -> float:
    """The largest difference between the probabilities of ``onnx_file`` (default: the version's
    ``model.onnx``) under ONNX Runtime and of the SavedModel under TensorFlow, on random images;
    raises BackendError above ``tolerance``, so a faulty conversion is never published."""
    import numpy as np

    from mnist_server.backends import open_runner
    from mnist_server.backends.onnx import OnnxRunner

    batch = np.random.default_rng(0).random((images, *IMAGE_SHAPE), dtype=np.float32)
    expected = open_runner("tensorflow", version_dir)(batch)
    got = OnnxRunner(onnx_file or Path(version_dir) / ONNX_FILE)(batch)
    difference = float(np.max(np.abs(expected - got)))
    if difference > tolerance:
        raise BackendError(
            f"{version_dir}: the ONNX model disagrees with the SavedModel by up to {difference:.2g} "
            f"(tolerance {tolerance:g}); not publishing it"
        )
    return difference


def convert(version_dir: Path, opset: int = OPSET) -> Any:
    """The SavedModel's serving signature as an ONNX ``ModelProto``."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise BackendError(f"ONNX export needs TensorFlow and tf2onnx ({exc.name} is missing)") from None
    loaded = tf.saved_model.load(str(version_dir))
    if SIGNATURE_NAME not in loaded.signatures:
        raise BackendError(f"{version_dir}: no {SIGNATURE_NAME!r} signature")
    signature = loaded.signatures[SIGNATURE_NAME]

    # A fresh tf.function over the signature: tf2onnx traces it, freezes the variables it
    # captures and names the graph's input and output after the serving contract.
    @tf.function  # type: ignore[untyped-decorator]
    def serve(images: Any) -> dict[str, Any]:
        return {OUTPUT_NAME: signature(**{INPUT_NAME: images})[OUTPUT_NAME]}

    spec = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name=INPUT_NAME)
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset)
    return proto


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_server.backends.onnx_export",
        description="Write model.onnx into a model version directory, converted from its SavedModel "
        "and checked against it (nothing is written if they disagree; an existing model.onnx is kept).",
    )
    parser.add_argument("version_dir", type=Path, help="e.g. models/mnist/1")
    parser.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (%(default)s)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        print(export_onnx(args.version_dir, args.opset))
    except (BackendError, OSError) as exc:
        print(f"onnx_export: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
