"""Atomic export of a Keras model into the model repository (see ``repository``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mnist_server.repository import (
    IMAGE_SHAPE,
    INPUT_NAME,
    METADATA_FILE,
    OUTPUT_NAME,
    SIGNATURE_NAME,
    VERSION_PATTERN,
    ModelVersion,
    RepositoryError,
)


def export_model(
    model: Any, root: Path, name: str, version: str, metadata: dict[str, Any], *, onnx: bool = False
) -> ModelVersion:
    """Write ``model`` as ``<root>/<name>/<version>/`` with the serving signature and metadata;
    with ``onnx``, also ``model.onnx`` converted from that SavedModel (for the lean, faster
    ``onnx`` backend), checked against TensorFlow before the version is published.

    The version is built in a hidden temporary directory beside its final place and renamed in
    one step, so an interrupted export leaves no directory a server would load. An existing
    version is never overwritten: versions are immutable once published.
    """
    import keras
    import tensorflow as tf

    for label, value in (("model name", name), ("version", version)):
        if not VERSION_PATTERN.match(value):
            raise RepositoryError(
                f"{label} {value!r} must be lowercase letters, digits, '.' or '-' (at most 63)"
            )
    model_dir = Path(root) / name
    final = model_dir / version
    if final.exists():
        raise RepositoryError(f"{final}: version already exists; versions are immutable")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir))
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)

        def serve(images: Any) -> dict[str, Any]:
            return {OUTPUT_NAME: model(images, training=False)}

        archive.add_endpoint(
            name=SIGNATURE_NAME,
            fn=serve,
            input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name=INPUT_NAME)],
        )
        saved = staging / "model"
        archive.write_out(str(saved), verbose=False)
        (saved / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        if onnx:
            from mnist_server.backends.onnx_export import export_onnx

            export_onnx(saved)  # checked against TensorFlow before it is written
        _fsync_tree(saved)
        saved.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ModelVersion(name=name, version=version, path=final)


def _fsync_tree(path: Path) -> None:
    # The rename must not publish a directory whose files are still only in the page cache.
    for directory, _dirs, files in os.walk(path):
        for file_name in files:
            fd = os.open(Path(directory) / file_name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
