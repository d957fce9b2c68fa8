"""The on-disk model repository shared by the trainer, the server and the server image.

Layout: ``<root>/<model-name>/<version>/`` holds a TensorFlow SavedModel (``saved_model.pb``,
``variables/``) and ``metadata.json``. The SavedModel's ``serving_default`` signature takes
``images``: float32 ``[batch, 28, 28]`` with pixel values in [0, 1] and returns
``probabilities``: float32 ``[batch, 10]`` (softmax). A version directory is complete only once
it has been renamed into place: writers build it under a hidden ``.tmp-*`` name first, so a
server never sees a half-written version.

A version fetched from storage (``mnist-server fetch``) has a provenance record beside it,
``<root>/<name>/<version>.source.json``: where it came from (``http``, ``s3`` or ``pvc``) and the
SHA-256 of the archive it was unpacked from, written only after that digest was verified.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
SOURCE_SUFFIX = ".source.json"
SOURCE_KINDS = ("http", "s3", "pvc")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# Versions are directory names and Kubernetes label values: DNS-label-like, at most 63 chars.
VERSION_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
NAME_PATTERN = VERSION_PATTERN


class RepositoryError(Exception):
    """The model repository does not hold what was asked for; the message names the path."""


@dataclass(frozen=True)
class ModelSource:
    """Where a fetched version came from, and the verified digest of its archive."""

    kind: str  # one of SOURCE_KINDS
    sha256: str

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "sha256": self.sha256})


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path

    @property
    def source_path(self) -> Path:
        return self.path.with_name(self.path.name + SOURCE_SUFFIX)

    def source(self) -> ModelSource | None:
        """The provenance record of a fetched version; None for one baked into the image."""
        try:
            data = json.loads(self.source_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"{self.source_path}: unreadable provenance: {exc}") from exc
        kind, digest = (data.get("kind"), data.get("sha256")) if isinstance(data, dict) else (None, None)
        if kind not in SOURCE_KINDS or not isinstance(digest, str) or not SHA256_PATTERN.match(digest):
            raise RepositoryError(f"{self.source_path}: not a provenance record ({{kind, sha256}})")
        return ModelSource(kind, digest)

    def metadata(self) -> dict[str, Any]:
        meta_path = self.path / METADATA_FILE
        try:
            data = json.loads(meta_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RepositoryError(f"{meta_path}: unreadable metadata: {exc}") from exc
        if not isinstance(data, dict):
            raise RepositoryError(f"{meta_path}: metadata is not a JSON object")
        return data


def is_complete(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() and not path.name.startswith(".")


def list_versions(root: Path, name: str) -> list[str]:
    """Complete versions of a model, oldest first (natural order: 2 < 10)."""
    model_dir = root / name
    if not model_dir.is_dir():
        return []
    versions = [p.name for p in model_dir.iterdir() if p.is_dir() and is_complete(p)]
    return sorted(versions, key=_natural_key)


def resolve(root: Path, name: str, version: str | None = None) -> ModelVersion:
    """The requested version, or the newest complete one when ``version`` is None or 'latest'."""
    if version in (None, "", "latest"):
        versions = list_versions(root, name)
        if not versions:
            raise RepositoryError(f"{root / name}: no complete model version found")
        version = versions[-1]
    path = root / name / version
    if not is_complete(path):
        raise RepositoryError(f"{path}: not a complete model version (no saved_model.pb)")
    return ModelVersion(name=name, version=version, path=path)


def _natural_key(text: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part]
