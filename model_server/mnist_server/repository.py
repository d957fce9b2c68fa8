"""The on-disk model repository shared by the trainer, the server and the server image.

Layout: ``<root>/<model-name>/<version>/`` holds a TensorFlow SavedModel (``saved_model.pb``,
``variables/``) and ``metadata.json``. The SavedModel's ``serving_default`` signature takes
``images``: float32 ``[batch, 28, 28]`` with pixel values in [0, 1] and returns
``probabilities``: float32 ``[batch, 10]`` (softmax). A version directory is complete only once
it has been renamed into place: writers build it under a hidden ``.tmp-*`` name first, so a
server never sees a half-written version.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
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
class ModelVersion:
    name: str
    version: str
    path: Path

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
