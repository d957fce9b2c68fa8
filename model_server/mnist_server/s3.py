"""Just enough of the S3 API for one object: where it is, and AWS Signature Version 4 headers.

The fetcher (an init container of the server image) and the publisher (``mnist-train publish``)
each make one GET or PUT of one object, so a signer on the standard library keeps the server
image free of an SDK. Requests use path-style addressing (``<endpoint>/<bucket>/<key>``), which
every S3-compatible store serves (MinIO, Ceph RGW, SeaweedFS, versitygw, and AWS for buckets
without dots in their names).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
DEFAULT_REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# An S3 error document's code (SignatureDoesNotMatch, NoSuchKey, ...): the only part of an error
# body ever repeated, so that what a store says can never carry anything else into a status.
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z]{1,64})</Code>")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Credentials | None:
        """The standard AWS variables; None (unsigned requests) when no key is set."""
        key, secret = env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", "")
        if not key and not secret:
            return None
        if not key or not secret:
            raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
        return cls(key, secret, env.get("AWS_SESSION_TOKEN") or None)


@dataclass(frozen=True)
class S3Object:
    endpoint: str  # scheme://host[:port]
    bucket: str
    key: str
    region: str = DEFAULT_REGION

    @classmethod
    def parse(cls, uri: str, endpoint: str, region: str = DEFAULT_REGION) -> S3Object:
        """``s3://bucket/key`` on ``endpoint`` (``http(s)://host[:port]``)."""
        parts = urlsplit(uri)
        key = parts.path.lstrip("/")
        if parts.scheme != "s3" or not parts.netloc or not key:
            raise ValueError(f"{uri!r} is not s3://<bucket>/<key>")
        base = urlsplit(endpoint)
        if base.scheme not in ("http", "https") or not base.netloc or base.path.strip("/"):
            raise ValueError(f"S3 endpoint {endpoint!r} must be http(s)://host[:port], without a path")
        return cls(f"{base.scheme}://{base.netloc}", parts.netloc, key, region or DEFAULT_REGION)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def path(self) -> str:
        # S3 signs the path as sent, each segment encoded once (unlike other AWS services).
        return "/" + quote(self.bucket, safe="") + "/" + quote(self.key, safe="/-_.~")

    @property
    def url(self) -> str:
        return self.endpoint + self.path


def signed_headers(
    method: str,
    obj: S3Object,
    credentials: Credentials | None,
    *,
    payload_sha256: str = EMPTY_SHA256,
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers of a request for ``obj``: signed with SigV4, or plain ones for an anonymous
    request. ``payload_sha256`` is the body's digest (the store checks a PUT's body against it)."""
    headers = {"x-amz-content-sha256": payload_sha256}
    if credentials is None:
        return headers
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    headers["x-amz-date"] = stamp
    if credentials.session_token:
        headers["x-amz-security-token"] = credentials.session_token
    host = urlsplit(obj.endpoint).netloc
    signing = {"host": host, **headers}
    names = sorted(signing)
    canonical = "\n".join(
        [
            method,
            obj.path,
            "",  # no query string
            *(f"{name}:{' '.join(signing[name].split())}" for name in names),
            "",
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{stamp[:8]}/{obj.region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + credentials.secret_access_key).encode()
    for part in (stamp[:8], obj.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return headers


def error_code(body: bytes) -> str | None:
    """The ``<Code>`` of an S3 error document, if the body is one."""
    match = _ERROR_CODE.search(body[:4096])
    return match.group(1).decode() if match else None
