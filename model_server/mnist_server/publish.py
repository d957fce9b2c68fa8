"""``mnist-train publish``: put a trained version where a MnistModel can fetch it, and say how.

The version directory is packed reproducibly (``archive.pack``), uploaded (S3 with a signed PUT
whose body the store checks against the digest, a plain HTTP PUT, or a file in a directory, such
as a PersistentVolumeClaim's), and the command prints the archive's SHA-256 and the MnistModel
spec that serves exactly those bytes: train, publish, commit the snippet, and the GitOps tool
rolls it out, without a new image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mnist_server import s3
from mnist_server.archive import ArchiveError, Packed, pack

SECRET_PLACEHOLDER = "<a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY>"
PVC_PLACEHOLDER = "<the PersistentVolumeClaim holding that directory>"


class PublishError(Exception):
    """The version could not be published; the message says why."""


@dataclass(frozen=True)
class Published:
    uri: str
    sha256: str
    size: int
    spec: dict[str, Any]  # the MnistModel spec that serves it


def archive_name(version_dir: Path) -> str:
    return f"{version_dir.parent.name}-{version_dir.name}.tar.gz"


def publish(
    version_dir: Path,
    destination: str,
    *,
    s3_endpoint: str | None = None,
    s3_region: str = s3.DEFAULT_REGION,
    secret_name: str | None = None,
    pvc_claim: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Published:
    env = os.environ if env is None else env
    scheme = urlsplit(destination).scheme
    with tempfile.TemporaryDirectory(prefix="mnist-publish-") as tmp:
        try:
            packed = pack(version_dir, Path(tmp) / archive_name(version_dir))
        except ArchiveError as exc:
            raise PublishError(str(exc)) from None
        if scheme == "s3":
            location: dict[str, Any] = {"s3": _put_s3(packed, destination, s3_endpoint, s3_region, env)}
            if secret_name or s3.Credentials.from_env(env):
                location["s3"]["secretName"] = secret_name or SECRET_PLACEHOLDER
            uri = f"s3://{location['s3']['bucket']}/{location['s3']['key']}"
        elif scheme in ("http", "https"):
            uri = _put_http(packed, destination)
            location = {"http": {"url": uri}}
        else:
            directory = destination.endswith("/") or Path(destination).is_dir()
            path = _copy_to(packed, Path(destination) / packed.path.name if directory else Path(destination))
            base = Path(destination) if directory else path.parent
            location = {
                "pvc": {"claimName": pvc_claim or PVC_PLACEHOLDER, "path": str(path.relative_to(base))}
            }
            uri = str(path)
    spec = {"modelVersion": version_dir.name, "source": {"sha256": packed.sha256, **location}}
    return Published(uri, packed.sha256, packed.size, spec)


def _with_name(target: str, name: str) -> str:
    return target + name if target.endswith("/") else target


def _put_s3(
    packed: Packed, destination: str, endpoint: str | None, region: str, env: Mapping[str, str]
) -> dict[str, Any]:
    if not endpoint:
        raise PublishError("an s3:// destination needs --s3-endpoint")
    try:
        obj = s3.S3Object.parse(_with_name(destination, packed.path.name), endpoint, region)
        credentials = s3.Credentials.from_env(env)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    headers = s3.signed_headers("PUT", obj, credentials, payload_sha256=packed.sha256)
    _upload(packed, obj.url, headers)
    location = {"endpoint": obj.endpoint, "bucket": obj.bucket, "key": obj.key}
    if obj.region != s3.DEFAULT_REGION:
        location["region"] = obj.region
    return location


def _put_http(packed: Packed, destination: str) -> str:
    url = _with_name(destination, packed.path.name)
    _upload(packed, url, {})
    return url


def _upload(packed: Packed, url: str, headers: Mapping[str, str]) -> None:
    request_headers = {**headers, "Content-Type": "application/gzip", "Content-Length": str(packed.size)}
    try:
        with packed.path.open("rb") as body:
            request = urllib.request.Request(url, data=body, method="PUT", headers=request_headers)
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
    except urllib.error.HTTPError as exc:
        code = s3.error_code(exc.read(4096))
        raise PublishError(f"PUT {url}: HTTP {exc.code}" + (f" {code}" if code else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise PublishError(f"PUT {url}: {getattr(exc, 'reason', exc)}") from None


def _copy_to(packed: Packed, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(packed.path.read_bytes())
        partial.replace(path)  # never a half-written archive under the published name
    except OSError as exc:
        raise PublishError(f"{path}: {exc}") from None
    return path


def snippet(published: Published) -> str:
    """The spec as YAML (JSON strings are YAML strings: no quoting surprises)."""
    lines = ["spec:"]

    def emit(value: Any, indent: int) -> None:
        for key, item in value.items():
            if isinstance(item, dict):
                lines.append(" " * indent + f"{key}:")
                emit(item, indent + 2)
            else:
                lines.append(" " * indent + f"{key}: {json.dumps(item)}")

    emit(published.spec, 2)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-train publish",
        description="Publish a model version (a directory <root>/<name>/<version>) as a tar.gz for "
        "MnistModel spec.source, and print its SHA-256 and the spec that serves it. S3 credentials come "
        "from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN).",
    )
    parser.add_argument("version_dir", type=Path, help="the version directory, e.g. models/mnist/3")
    parser.add_argument(
        "--to",
        required=True,
        dest="destination",
        help="s3://<bucket>/<key>, an http(s):// URL that takes a PUT, or a file or directory "
        "(e.g. a PersistentVolumeClaim's); a destination ending in / gets <name>-<version>.tar.gz",
    )
    parser.add_argument("--s3-endpoint", help="http(s)://host[:port] of the S3-compatible store")
    parser.add_argument("--s3-region", default=s3.DEFAULT_REGION, help="(%(default)s)")
    parser.add_argument("--secret-name", help="the Secret the MnistModel reads S3 credentials from")
    parser.add_argument("--pvc-claim", help="the PersistentVolumeClaim that holds the directory")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        published = publish(
            args.version_dir,
            args.destination,
            s3_endpoint=args.s3_endpoint,
            s3_region=args.s3_region,
            secret_name=args.secret_name,
            pvc_claim=args.pvc_claim,
        )
    except (PublishError, ValueError) as exc:
        print(f"mnist-train publish: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"uri": published.uri, "sha256": published.sha256, "bytes": published.size,
                          "spec": published.spec}))  # fmt: skip
        return 0
    print(f"published {args.version_dir} as {published.uri} ({published.size} bytes)")
    print(f"sha256 {published.sha256}")
    print("\n# the MnistModel spec that serves exactly these bytes:")
    print(snippet(published))
    return 0


if __name__ == "__main__":
    sys.exit(main())
