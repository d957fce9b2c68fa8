"""``mnist-server fetch``: put a model version from storage into a model repository, verified.

The operator runs this as the init container of a MnistModel's pods (same image, an emptyDir as
the repository), so a pod serves only once its version is on local disk and proven to be the
bytes the MnistModel pins: the archive is downloaded (HTTP(S), S3, or a file on a mounted
PersistentVolumeClaim) into the repository's volume, its SHA-256 compared with the pinned one,
and only then unpacked (``archive.unpack``: no links, no paths out, bounded size) and renamed
into place, with a provenance record the server reports (``repository.ModelSource``).

Fail closed: anything but a match exits non-zero having unpacked nothing, and writes
``<Reason>: <message>`` (one line) to the container's termination message, which the operator
turns into the MnistModel's condition. Downloads are bounded in bytes and in time; transient
failures (connection errors, timeouts, truncated transfers, HTTP 408/429/5xx) are retried with
exponential back-off, and the kubelet restarts a failed init container with its own back-off.
Error messages never quote a response body (a store's S3 error code at most) nor a URL's query
string (pre-signed URLs carry credentials there).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import logging
import os
import random
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, NoReturn
from urllib.parse import urlsplit

from mnist_server import s3
from mnist_server.archive import ArchiveError, unpack
from mnist_server.repository import (
    NAME_PATTERN,
    SHA256_PATTERN,
    VERSION_PATTERN,
    ModelSource,
    ModelVersion,
    RepositoryError,
    is_complete,
)

log = logging.getLogger("mnist_server.fetch")

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
TERMINATION_LOG = Path("/dev/termination-log")
_CHUNK = 1 << 20
_RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHOWN_SOURCE_CHARS = 120
# S3 error codes that mean "these credentials will not do", whatever the status (versitygw answers
# an unknown access key with 404 XAdminUserNotFound where AWS says 403 InvalidAccessKeyId).
_CREDENTIAL_ERRORS = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "AllAccessDisabled", "XAdminUserNotFound"}
)  # fmt: skip


class FetchReason(StrEnum):
    """Why a fetch failed: the condition reasons the operator shows (held equal to its registry
    by tests/unit/test_model_fetch.py)."""

    DIGEST_MISMATCH = "DigestMismatch"
    MODEL_ACCESS_DENIED = "ModelAccessDenied"
    INVALID_MODEL_ARCHIVE = "InvalidModelArchive"
    MODEL_FETCH_FAILED = "ModelFetchFailed"


class FetchError(Exception):
    def __init__(self, reason: FetchReason, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable

    @property
    def line(self) -> str:
        """The termination message: one line, reason first."""
        return f"{self.reason}: {' '.join(str(self).split())}"


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
    timeout: float = 600.0  # the whole fetch, retries included
    io_timeout: float = 15.0  # one connect or read
    attempts: int = 4
    backoff: float = 1.0  # before the second attempt; doubles each time


@dataclass(frozen=True)
class Source:
    uri: str
    s3_endpoint: str | None = None
    s3_region: str = s3.DEFAULT_REGION

    @property
    def kind(self) -> str:
        scheme = urlsplit(self.uri).scheme
        return {"http": "http", "https": "http", "s3": "s3", "file": "pvc"}[scheme]

    @property
    def shown(self) -> str:
        """The source as messages name it: no credentials, no query string, bounded."""
        parts = urlsplit(self.uri)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        text = f"{parts.scheme}://{host}{parts.path}"
        return text if len(text) <= _SHOWN_SOURCE_CHARS else text[: _SHOWN_SOURCE_CHARS - 3] + "..."


def fetch(
    source: Source,
    sha256: str,
    root: Path,
    name: str,
    version: str,
    *,
    limits: Limits | None = None,
    env: Mapping[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ModelVersion:
    """Download, verify, unpack: the version ready to serve, or a FetchError."""
    limits = limits or Limits()
    target = ModelVersion(name, version, root / name / version)
    recorded = _recorded(target)
    if recorded is not None and recorded.sha256 == sha256:
        log.info("version %s is already here, from an archive with sha256 %s", version, sha256)
        return target
    shutil.rmtree(target.path, ignore_errors=True)
    target.path.parent.mkdir(parents=True, exist_ok=True)
    download = root / f".download-{os.getpid()}"
    staging = target.path.with_name(f".tmp-{version}-{os.getpid()}")
    try:
        started = time.monotonic()
        got, size = _download(source, download, limits, os.environ if env is None else env, sleep)
        if got != sha256:
            raise FetchError(
                FetchReason.DIGEST_MISMATCH,
                f"the archive at {source.shown} has sha256 {got}, not the pinned {sha256} "
                f"({size} bytes): refusing to serve it",
            )
        log.info("verified sha256 %s of %s (%d bytes in %.1f s)", got, source.shown, size,
                 time.monotonic() - started)  # fmt: skip
        try:
            unpacked = unpack(download, staging, max_bytes=limits.max_unpacked_bytes)
        except ArchiveError as exc:
            raise FetchError(FetchReason.INVALID_MODEL_ARCHIVE, str(exc)) from None
        target.source_path.write_text(ModelSource(source.kind, sha256).to_json())
        staging.rename(target.path)
        log.info("unpacked %d bytes into %s", unpacked, target.path)
        return target
    finally:
        download.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)


def _recorded(target: ModelVersion) -> ModelSource | None:
    if not is_complete(target.path):
        return None
    try:
        return target.source()
    except RepositoryError:
        return None


def _download(
    source: Source, dest: Path, limits: Limits, env: Mapping[str, str], sleep: Callable[[float], None]
) -> tuple[str, int]:
    """The archive into ``dest``: its sha256 and size, retrying what may pass."""
    deadline = time.monotonic() + limits.timeout
    delay = limits.backoff
    for attempt in range(1, limits.attempts + 1):
        try:
            return _download_once(source, dest, limits, env, deadline)
        except FetchError as exc:
            left = deadline - time.monotonic()
            if not exc.retryable or attempt == limits.attempts or left <= delay:
                if exc.retryable:
                    raise FetchError(exc.reason, f"{exc} (gave up after {attempt} attempts)") from None
                raise
            pause = delay * random.uniform(0.5, 1.5)
            log.warning("attempt %d of %d failed: %s; retrying in %.1f s", attempt, limits.attempts,
                        exc, pause)  # fmt: skip
            sleep(pause)
            delay *= 2
    raise AssertionError("unreachable")


def _download_once(
    source: Source, dest: Path, limits: Limits, env: Mapping[str, str], deadline: float
) -> tuple[str, int]:
    if source.kind == "pvc":
        path = Path(urlsplit(source.uri).path)
        try:
            with path.open("rb") as f:
                return _copy(f, dest, limits, deadline, source, expected=None)
        except FileNotFoundError:
            raise FetchError(
                FetchReason.MODEL_FETCH_FAILED, f"no file {path} on the volume (check spec.source.pvc.path)"
            ) from None
        except IsADirectoryError:
            raise FetchError(
                FetchReason.MODEL_FETCH_FAILED, f"{path} is a directory, not the published archive"
            ) from None
        except PermissionError:
            raise FetchError(
                FetchReason.MODEL_ACCESS_DENIED, f"{path} is not readable by the pod's user"
            ) from None
    request, signed = _request(source, env)
    try:
        with urllib.request.urlopen(request, timeout=_io_timeout(limits, deadline)) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None and length.isdigit() else None
            if expected is not None and expected > limits.max_bytes:
                raise FetchError(
                    FetchReason.MODEL_FETCH_FAILED,
                    f"the archive at {source.shown} is {length} bytes, more than the limit of "
                    f"{limits.max_bytes}",
                )
            return _copy(response, dest, limits, deadline, source, expected=expected)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, source, signed) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        why = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise FetchError(
            FetchReason.MODEL_FETCH_FAILED,
            f"could not download {source.shown}: {_describe(why)}",
            retryable=True,
        ) from None


def _request(source: Source, env: Mapping[str, str]) -> tuple[urllib.request.Request, bool]:
    if source.kind == "http":
        return urllib.request.Request(source.uri, headers={"User-Agent": "mnist-server-fetch"}), False
    if source.s3_endpoint is None:
        raise FetchError(FetchReason.MODEL_FETCH_FAILED, "an s3:// source needs --s3-endpoint")
    try:
        obj = s3.S3Object.parse(source.uri, source.s3_endpoint, source.s3_region)
        credentials = s3.Credentials.from_env(env)
    except ValueError as exc:
        raise FetchError(FetchReason.MODEL_FETCH_FAILED, str(exc)) from None
    headers = {"User-Agent": "mnist-server-fetch", **s3.signed_headers("GET", obj, credentials)}
    return urllib.request.Request(obj.url, headers=headers), credentials is not None


def _http_error(exc: urllib.error.HTTPError, source: Source, signed: bool) -> FetchError:
    try:
        code = s3.error_code(exc.read(4096))
    except (OSError, http.client.HTTPException):
        code = None
    status = f"HTTP {exc.code}" + (f" {code}" if code else "")
    if exc.code in (401, 403) or code in _CREDENTIAL_ERRORS:
        if source.kind == "s3" and not signed:
            hint = "an anonymous request was refused: name a Secret with credentials in spec.source.s3"
        elif source.kind == "s3":
            hint = "the store refused the credentials from spec.source.s3.secretName"
        else:
            hint = "the server refused access"
        return FetchError(FetchReason.MODEL_ACCESS_DENIED, f"{source.shown}: {status}: {hint}")
    if exc.code == 404:
        return FetchError(FetchReason.MODEL_FETCH_FAILED, f"{source.shown}: {status}: no such object")
    return FetchError(
        FetchReason.MODEL_FETCH_FAILED, f"{source.shown}: {status}", retryable=exc.code in _RETRYABLE_STATUS
    )


def _copy(
    stream: IO[bytes], dest: Path, limits: Limits, deadline: float, source: Source, *, expected: int | None
) -> tuple[str, int]:
    """Stream into ``dest``, hashing as it arrives. ``expected``: the announced length (http.client
    returns a short body as if it were complete)."""
    digest, size = hashlib.sha256(), 0
    with dest.open("wb") as out:
        while True:
            if time.monotonic() > deadline:
                raise FetchError(
                    FetchReason.MODEL_FETCH_FAILED,
                    f"downloading {source.shown} took longer than {limits.timeout:g} s ({size} bytes so far)",
                )
            try:
                chunk = stream.read(_CHUNK)
            except http.client.IncompleteRead as exc:
                size += len(exc.partial)
                chunk = b""
                expected = expected or size + 1
            if not chunk:
                if expected is not None and size < expected:
                    raise FetchError(
                        FetchReason.MODEL_FETCH_FAILED,
                        f"the transfer of {source.shown} broke off after {size} of {expected} bytes",
                        retryable=True,
                    )
                return digest.hexdigest(), size
            size += len(chunk)
            if size > limits.max_bytes:
                raise FetchError(
                    FetchReason.MODEL_FETCH_FAILED,
                    f"the archive at {source.shown} is larger than the limit of {limits.max_bytes} bytes",
                )
            digest.update(chunk)
            try:
                out.write(chunk)
            except OSError as exc:  # the volume is full (its sizeLimit) or gone: no retry helps
                raise FetchError(
                    FetchReason.MODEL_FETCH_FAILED, f"cannot write the archive to the model volume: {exc}"
                ) from None


def _io_timeout(limits: Limits, deadline: float) -> float:
    return max(0.1, min(limits.io_timeout, deadline - time.monotonic()))


def _describe(why: object) -> str:
    if isinstance(why, TimeoutError):
        return "timed out"
    if isinstance(why, OSError) and why.strerror:
        return why.strerror.lower()
    return str(why) or type(why).__name__


# ----- the command line ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    limits = Limits()
    parser = argparse.ArgumentParser(
        prog="mnist-server fetch",
        description="Download a published model version (a tar.gz of its directory), verify its "
        "SHA-256 before anything is unpacked, and unpack it into a model repository. S3 credentials "
        "come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN); without them "
        "requests are anonymous. On failure, '<Reason>: <message>' goes to the termination log.",
    )
    parser.add_argument(
        "--source", required=True, help="http(s)://..., s3://<bucket>/<key> or file:///<path>"
    )
    parser.add_argument("--sha256", required=True, help="the archive's SHA-256, 64 lowercase hex digits")
    parser.add_argument("--model-root", type=Path, required=True, help="the model repository to fill")
    parser.add_argument("--model-name", default="mnist", help="(%(default)s)")
    parser.add_argument("--model-version", required=True, help="the version directory to create")
    parser.add_argument("--s3-endpoint", help="http(s)://host[:port] of the S3-compatible store")
    parser.add_argument("--s3-region", default=s3.DEFAULT_REGION, help="(%(default)s)")
    parser.add_argument(
        "--max-bytes", type=int, default=limits.max_bytes, help="largest archive (%(default)s)"
    )
    parser.add_argument(
        "--max-unpacked-bytes", type=int, default=limits.max_unpacked_bytes, help="(%(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=limits.timeout, help="seconds, retries included")
    parser.add_argument("--attempts", type=int, default=limits.attempts, help="(%(default)s)")
    parser.add_argument("--backoff", type=float, default=limits.backoff, help="first retry delay (s)")
    parser.add_argument(
        "--termination-log", type=Path, default=TERMINATION_LOG, help="where the failure reason goes"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s fetch: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not SHA256_PATTERN.match(args.sha256):
        _usage(parser, f"--sha256 {args.sha256!r} is not 64 lowercase hex digits")
    if not NAME_PATTERN.match(args.model_name) or not VERSION_PATTERN.match(args.model_version):
        _usage(parser, "--model-name and --model-version must be lowercase DNS-safe names")
    if urlsplit(args.source).scheme not in ("http", "https", "s3", "file"):
        _usage(parser, f"--source {args.source!r} is not http(s)://, s3:// or file://")
    source = Source(args.source, args.s3_endpoint, args.s3_region)
    limits = Limits(args.max_bytes, args.max_unpacked_bytes, args.timeout, attempts=max(1, args.attempts),
                    backoff=args.backoff)  # fmt: skip
    log.info("fetching %s (sha256 %s) as %s version %s", source.shown, args.sha256, args.model_name,
             args.model_version)  # fmt: skip
    try:
        fetch(source, args.sha256, args.model_root, args.model_name, args.model_version, limits=limits)
    except FetchError as exc:
        log.error("%s", exc.line)
        _terminate(args.termination_log, exc.line)
        return 1
    except OSError as exc:  # the volume itself: full (its sizeLimit), read-only, gone
        line = f"{FetchReason.MODEL_FETCH_FAILED}: cannot write the model to {args.model_root}: {exc}"
        log.error("%s", line)
        _terminate(args.termination_log, line)
        return 1
    return 0


def _usage(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.error(message)


def _terminate(path: Path, line: str) -> None:
    with contextlib.suppress(OSError):  # not in a container: the log line says it all
        path.write_text(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
