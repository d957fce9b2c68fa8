"""A model from storage, pinned by digest: spec.source, and the pod parts that fetch it.

The shared server image serves a version fetched at pod start instead of one baked into it. An
init container of the same image (`mnist-server fetch`) downloads the published archive (a
tar.gz of the version directory) into an emptyDir, verifies its SHA-256 against the pinned one
before anything is unpacked, unpacks it safely and exits; only then does the server container
start, on that emptyDir (read-only), with nothing else to trust. Why an init container rather
than the server fetching for itself:

- the S3 credentials (a Secret of the model's own namespace, by name: a pod can reference no
  other) reach the init container only, never the process that answers requests;
- a failed fetch is a terminated container with a termination message (`<Reason>: <message>`)
  that the pod status carries to the operator, and the kubelet retries it with back-off: the
  server's probes, start-up budget and crash handling stay exactly as they are;
- the server keeps one job and one code path (a model repository on local disk), and a fetch
  happens once per pod, not once per worker or container restart.

Pure: no client, no I/O (builders.py calls these).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mnist_operator import api

SourceKind = Literal["http", "s3", "pvc"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("http", "s3", "pvc")
DEFAULT_REGION = "us-east-1"
# The fetched version's digest on the pod template: status reads what the pods serve from it
# (an annotation: a SHA-256 in hex is 64 characters, one more than a label value may have).
SHA256_ANNOTATION = f"{api.GROUP}/model-sha256"

FETCH_CONTAINER = "fetch-model"
# The server's default model name (MNIST_SERVER_MODEL_NAME, which spec.env may not set here).
MODEL_NAME = "mnist"
MODEL_VOLUME = "model"
MODEL_ROOT = "/var/lib/mnist/models"
SOURCE_VOLUME = "model-source"
SOURCE_MOUNT = "/var/run/mnist/source"
# Bounds the fetcher enforces; the emptyDir holds the archive and what it unpacks to at once.
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
MODEL_VOLUME_SIZE = "2Gi"
FETCH_TIMEOUT_SECONDS = 600
FETCH_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
# The server's settings that would point it away from the fetched version.
ENV_MODEL_ROOT = "MNIST_SERVER_MODEL_ROOT"
ENV_MODEL_NAME = "MNIST_SERVER_MODEL_NAME"
SOURCE_RESERVED_ENV = (ENV_MODEL_ROOT, ENV_MODEL_NAME)
# The keys the fetcher reads from the named Secret (the AWS SDKs' variable names).
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
OPTIONAL_SECRET_KEYS = ("AWS_SESSION_TOKEN",)


@dataclass(frozen=True)
class HttpLocation:
    url: str


@dataclass(frozen=True)
class S3Location:
    endpoint: str
    bucket: str
    key: str
    region: str = DEFAULT_REGION
    secret_name: str | None = None  # None: anonymous requests (a public bucket)


@dataclass(frozen=True)
class PvcLocation:
    claim_name: str
    path: str  # of the archive, relative to the volume's root


@dataclass(frozen=True)
class ModelSource:
    sha256: str  # of the published archive
    location: HttpLocation | S3Location | PvcLocation

    @property
    def kind(self) -> SourceKind:
        if isinstance(self.location, HttpLocation):
            return "http"
        return "s3" if isinstance(self.location, S3Location) else "pvc"

    @property
    def uri(self) -> str:
        """What the fetcher is told to fetch."""
        where = self.location
        if isinstance(where, HttpLocation):
            return where.url
        if isinstance(where, S3Location):
            return f"s3://{where.bucket}/{where.key}"
        return f"file://{SOURCE_MOUNT}/{where.path}"


def fetch_container(
    source: ModelSource, image: str, version: str, security_context: dict[str, Any]
) -> dict[str, Any]:
    """The init container that puts the pinned version into the model volume, or fails saying why."""
    args = [
        "--source", source.uri,
        "--sha256", source.sha256,
        "--model-root", MODEL_ROOT,
        "--model-name", MODEL_NAME,
        "--model-version", version,
        "--max-bytes", str(MAX_ARCHIVE_BYTES),
        "--max-unpacked-bytes", str(MAX_UNPACKED_BYTES),
        "--timeout", str(FETCH_TIMEOUT_SECONDS),
    ]  # fmt: skip
    mounts: list[dict[str, Any]] = [{"name": MODEL_VOLUME, "mountPath": MODEL_ROOT}]
    env: list[dict[str, Any]] = []
    where = source.location
    if isinstance(where, S3Location):
        args += ["--s3-endpoint", where.endpoint, "--s3-region", where.region]
        if where.secret_name:
            env = [_secret_env(where.secret_name, key, optional=False) for key in SECRET_KEYS]
            env += [_secret_env(where.secret_name, key, optional=True) for key in OPTIONAL_SECRET_KEYS]
    elif isinstance(where, PvcLocation):
        mounts.append({"name": SOURCE_VOLUME, "mountPath": SOURCE_MOUNT, "readOnly": True})
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": image,
        "command": ["mnist-server", "fetch"],
        "args": args,
        "resources": {kind: dict(values) for kind, values in FETCH_RESOURCES.items()},
        "securityContext": security_context,
        "volumeMounts": mounts,
        # The fetcher writes `<Reason>: <message>` there; a crash with no message shows its log.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env:
        container["env"] = env
    return container


def _secret_env(secret: str, key: str, *, optional: bool) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": key, "valueFrom": {"secretKeyRef": ref}}


def volumes(source: ModelSource) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": MODEL_VOLUME_SIZE}}]
    if isinstance(source.location, PvcLocation):
        claim = {"claimName": source.location.claim_name, "readOnly": True}
        out.append({"name": SOURCE_VOLUME, "persistentVolumeClaim": claim})
    return out


def server_env() -> list[dict[str, Any]]:
    return [{"name": ENV_MODEL_ROOT, "value": MODEL_ROOT}]


def server_mount() -> dict[str, Any]:
    # Read-only: the server never changes what was verified.
    return {"name": MODEL_VOLUME, "mountPath": MODEL_ROOT, "readOnly": True}
