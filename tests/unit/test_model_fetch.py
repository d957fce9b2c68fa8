"""Models from storage, on the server's side: the published archive, the fetcher that verifies
before it unpacks, and what the server then reports (v2 metadata, a metric).

The fetcher is driven against a real HTTP server on 127.0.0.1 (Python's, in a thread) and real
files; S3 against a real object store is in tests/e2e/test_model_storage.py, and pods fetching
for real in tests/realnode/test_storage.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from server_support import FakeModel
from storage_servers import ArchiveServer

from mnist_operator.conditions import FETCH_REASONS
from mnist_server import fetch as fetcher
from mnist_server.app import create_app
from mnist_server.archive import ArchiveError, pack, unpack
from mnist_server.fetch import FetchError, FetchReason, Limits, Source
from mnist_server.publish import publish, snippet
from mnist_server.repository import ModelSource, ModelVersion, RepositoryError, resolve
from mnist_server.s3 import Credentials, S3Object, error_code, signed_headers
from mnist_server.settings import Settings

FAST = Limits(attempts=3, backoff=0.01, io_timeout=2, timeout=20)


def make_version(root: Path, version: str = "1") -> Path:
    """A version directory as the trainer writes one (the fetcher only needs saved_model.pb)."""
    path = root / "mnist" / version
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"graph " * 100)
    (path / "variables" / "variables.index").write_bytes(b"index")
    (path / "metadata.json").write_text(json.dumps({"version": version}))
    return path


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[ArchiveServer]:
    server = ArchiveServer(tmp_path / "web").start()
    yield server
    server.stop()


# ----- the archive --------------------------------------------------------------------------


def test_the_same_version_always_packs_to_the_same_bytes(tmp_path: Path) -> None:
    version = make_version(tmp_path / "repo")
    first = pack(version, tmp_path / "a.tar.gz")
    (version / "metadata.json").touch()  # a new mtime changes nothing
    second = pack(version, tmp_path / "b.tar.gz")
    assert first.sha256 == second.sha256 == sha((tmp_path / "a.tar.gz").read_bytes())
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = tar.getnames()
        assert {m.uid for m in tar.getmembers()} == {0}
    assert names == sorted(names) and "saved_model.pb" in names  # the files at the top


def test_pack_refuses_what_is_not_a_version(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"no saved_model\.pb"):
        pack(tmp_path, tmp_path / "x.tar.gz")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([(member("../escape"), b"x")], "outside its directory"),
        ([(member("/etc/passwd"), b"x")], "outside its directory"),
        ([(member("a/../../b"), b"x")], "outside its directory"),
        ([(member("link", tarfile.SYMTYPE, linkname="/etc"), None)], "links are refused"),
        ([(member("hard", tarfile.LNKTYPE, linkname="saved_model.pb"), None)], "links are refused"),
        ([(member("fifo", tarfile.FIFOTYPE), None)], "neither a file nor a directory"),
        ([(member("dev", tarfile.CHRTYPE), None)], "neither a file nor a directory"),
        ([(member("saved_model.pb"), b"a"), (member("saved_model.pb"), b"b")], "same path twice"),
        ([(member("big"), b"x" * 2000)], "more than 1000 bytes"),
        ([(member("notes.txt"), b"hello")], "no saved_model.pb at its top level .it holds notes.txt"),
        ([(member("1/saved_model.pb"), b"x")], "no saved_model.pb at its top level"),
    ],
)
def test_unpack_refuses_anything_unsafe_or_not_a_model_and_leaves_nothing(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], message: str
) -> None:
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(tar_gz(members))
    with pytest.raises(ArchiveError, match=message):
        unpack(archive, tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path.parent / "escape").exists()


def test_unpack_bounds_the_member_count(tmp_path: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(tar_gz([(member(f"f{i}"), b"") for i in range(20)]))
    with pytest.raises(ArchiveError, match="more than 10 members"):
        unpack(archive, tmp_path / "out", max_bytes=1000, max_members=10)


def test_unpack_refuses_a_truncated_or_foreign_archive(tmp_path: Path) -> None:
    good = pack(make_version(tmp_path / "repo"), tmp_path / "good.tar.gz")
    for name, data in {
        "truncated": good.path.read_bytes()[: good.size // 2],
        "zip": b"PK\x03\x04" + b"\0" * 100,
    }.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ArchiveError, match=r"not a readable tar\.gz"):
            unpack(tmp_path / name, tmp_path / f"out-{name}", max_bytes=10**6)


def test_unpacked_files_get_fresh_permissions(tmp_path: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(
        tar_gz(
            [(member("saved_model.pb", mode=0o4777), b"x"), (member("d", tarfile.DIRTYPE, mode=0o777), None)]
        )
    )
    unpack(archive, tmp_path / "out", max_bytes=1000)
    assert (tmp_path / "out" / "saved_model.pb").stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "out" / "d").stat().st_mode & 0o7777 == 0o755


# ----- fetching -----------------------------------------------------------------------------


def test_a_fetched_version_is_verified_unpacked_and_recorded(tmp_path: Path, web: ArchiveServer) -> None:
    packed = pack(make_version(tmp_path / "trained"), web.directory / "m.tar.gz")
    root = tmp_path / "repo"
    got = fetcher.fetch(Source(f"{web.url}/m.tar.gz"), packed.sha256, root, "mnist", "7", limits=FAST)
    assert got == resolve(root, "mnist", "7")
    assert got.source() == ModelSource("http", packed.sha256)
    assert (got.path / "metadata.json").read_text() == json.dumps({"version": "1"})
    assert sorted(p.name for p in root.iterdir()) == ["mnist"]  # no download or staging left behind
    # Again (the init container runs again in the same pod): nothing is downloaded.
    before = len(web.requests)
    fetcher.fetch(Source(f"{web.url}/m.tar.gz"), packed.sha256, root, "mnist", "7", limits=FAST)
    assert len(web.requests) == before


def test_a_wrong_digest_is_refused_before_anything_is_unpacked(tmp_path: Path, web: ArchiveServer) -> None:
    pack(make_version(tmp_path / "trained"), web.directory / "m.tar.gz")
    root = tmp_path / "repo"
    with pytest.raises(FetchError) as caught:
        fetcher.fetch(Source(f"{web.url}/m.tar.gz"), "0" * 64, root, "mnist", "1", limits=FAST)
    assert caught.value.reason is FetchReason.DIGEST_MISMATCH
    assert f"not the pinned {'0' * 64}" in str(caught.value)
    assert list((root / "mnist").iterdir()) == [] and [p.name for p in root.iterdir()] == ["mnist"]


@pytest.mark.parametrize(
    ("path", "reason", "message", "attempts"),
    [
        ("/missing.tar.gz", FetchReason.MODEL_FETCH_FAILED, "HTTP 404: no such object", 1),
        ("/broken/m.tar.gz", FetchReason.MODEL_FETCH_FAILED, "broke off after .* bytes .gave up after 3", 3),
    ],
)
def test_http_failures_have_their_reason_and_only_transient_ones_are_retried(  # noqa: PLR0917
    tmp_path: Path, web: ArchiveServer, path: str, reason: FetchReason, message: str, attempts: int
) -> None:
    packed = pack(make_version(tmp_path / "trained"), web.directory / "m.tar.gz")
    with pytest.raises(FetchError, match=message) as caught:
        fetcher.fetch(Source(web.url + path), packed.sha256, tmp_path / "repo", "mnist", "1", limits=FAST)
    assert caught.value.reason is reason
    assert len(web.requests) == attempts


def test_an_unreachable_server_is_retried_with_backoff_then_reported(tmp_path: Path) -> None:
    pauses: list[float] = []
    limits = Limits(attempts=4, backoff=1.0, io_timeout=2, timeout=60)
    with pytest.raises(FetchError, match=r"connection refused \(gave up after 4 attempts\)") as caught:
        fetcher.fetch(Source("http://127.0.0.1:9/m.tar.gz"), "0" * 64, tmp_path, "mnist", "1",
                      limits=limits, sleep=pauses.append)  # fmt: skip
    assert caught.value.reason is FetchReason.MODEL_FETCH_FAILED
    assert len(pauses) == 3 and 0.5 <= pauses[0] <= 1.5 and 2.0 <= pauses[2] <= 6.0  # doubling, jittered


def test_downloads_are_bounded_in_size(tmp_path: Path, web: ArchiveServer) -> None:
    packed = pack(make_version(tmp_path / "trained"), web.directory / "m.tar.gz")
    small = Limits(max_bytes=packed.size - 1, attempts=1)
    with pytest.raises(FetchError, match="more than the limit") as caught:
        fetcher.fetch(
            Source(f"{web.url}/m.tar.gz"), packed.sha256, tmp_path / "r", "mnist", "1", limits=small
        )
    assert caught.value.reason is FetchReason.MODEL_FETCH_FAILED
    local = Source(f"file://{packed.path}")  # no Content-Length to check first: counted as it streams
    with pytest.raises(FetchError, match="larger than the limit"):
        fetcher.fetch(local, packed.sha256, tmp_path / "r", "mnist", "1", limits=small)


def test_a_file_source_and_its_failures(tmp_path: Path) -> None:
    packed = pack(make_version(tmp_path / "trained"), tmp_path / "volume" / "m.tar.gz")
    got = fetcher.fetch(Source(f"file://{packed.path}"), packed.sha256, tmp_path / "repo", "mnist", "2")
    assert got.source() == ModelSource("pvc", packed.sha256)
    with pytest.raises(FetchError, match=r"no file .* on the volume"):
        fetcher.fetch(
            Source(f"file://{tmp_path}/volume/x.tar.gz"), packed.sha256, tmp_path / "r2", "mnist", "2"
        )


def test_messages_never_show_a_query_string_or_user_info() -> None:
    source = Source("https://user:pw@store.example:8443/m.tar.gz?X-Amz-Signature=secret")
    assert source.shown == "https://store.example:8443/m.tar.gz"


def test_the_command_writes_its_reason_to_the_termination_log(tmp_path: Path, web: ArchiveServer) -> None:
    packed = pack(make_version(tmp_path / "trained"), web.directory / "m.tar.gz")
    log = tmp_path / "termination-log"
    argv = ["--source", f"{web.url}/m.tar.gz", "--model-root", str(tmp_path / "repo"), "--model-version", "1",
            "--termination-log", str(log), "--backoff", "0.01"]  # fmt: skip
    assert fetcher.main([*argv, "--sha256", "f" * 64]) == 1
    reason, message = log.read_text().split(": ", 1)
    assert reason == "DigestMismatch" and message.count("\n") == 1 and len(message) < 400
    assert fetcher.main([*argv, "--sha256", packed.sha256]) == 0
    with pytest.raises(SystemExit):
        fetcher.main([*argv, "--sha256", "F" * 64])  # a usage error, not a fetch failure


def test_the_fetchers_reasons_are_the_operators() -> None:
    assert [str(r) for r in FetchReason] == [str(r) for r in FETCH_REASONS]


# ----- provenance, and what the server reports ----------------------------------------------


def test_a_provenance_record_is_checked(tmp_path: Path) -> None:
    version = ModelVersion("mnist", "1", make_version(tmp_path))
    assert version.source() is None  # baked into the image
    version.source_path.write_text(json.dumps({"kind": "ftp", "sha256": "0" * 64}))
    with pytest.raises(RepositoryError, match="not a provenance record"):
        version.source()


class SourcedModel(FakeModel):
    source = ModelSource("s3", "ab" * 32)


def test_the_server_reports_the_digest_it_serves(server_settings: Settings) -> None:
    model = SourcedModel()
    model.load()
    registry = CollectorRegistry()
    client = create_app(server_settings, model, registry).test_client()
    metadata = client.get("/v2/models/mnist").get_json()
    assert metadata["parameters"] == {"source": "s3", "sha256": "ab" * 32}
    labels = {"source": "s3", "sha256": "ab" * 32}
    assert registry.get_sample_value("mnist_server_model_source_info", labels) == 1
    # A version baked into the image: no parameters, and the metric says so.
    plain, registry = FakeModel(), CollectorRegistry()
    plain.load()
    client = create_app(server_settings, plain, registry).test_client()
    assert "parameters" not in client.get("/v2/models/mnist").get_json()
    assert registry.get_sample_value("mnist_server_model_source_info", {"source": "image", "sha256": ""}) == 1


# ----- publishing ---------------------------------------------------------------------------


def test_publishing_to_a_directory_and_over_http_prints_the_spec_that_serves_it(
    tmp_path: Path, web: ArchiveServer
) -> None:
    version = make_version(tmp_path / "trained", "3")
    on_volume = publish(version, str(tmp_path / "volume") + "/", pvc_claim="models")
    assert on_volume.spec == {
        "modelVersion": "3",
        "source": {"sha256": on_volume.sha256, "pvc": {"claimName": "models", "path": "mnist-3.tar.gz"}},
    }
    assert sha((tmp_path / "volume" / "mnist-3.tar.gz").read_bytes()) == on_volume.sha256
    over_http = publish(version, f"{web.url}/models/")
    assert over_http.sha256 == on_volume.sha256  # the same version, the same bytes
    assert over_http.spec["source"]["http"] == {"url": f"{web.url}/models/mnist-3.tar.gz"}
    assert sha((web.directory / "models" / "mnist-3.tar.gz").read_bytes()) == over_http.sha256
    text = snippet(over_http)
    assert text.startswith('spec:\n  modelVersion: "3"\n  source:\n') and over_http.sha256 in text


# ----- S3 signing ---------------------------------------------------------------------------


def test_s3_objects_and_signatures() -> None:
    obj = S3Object.parse("s3://models/a b/mnist-3.tar.gz", "https://store.example:9000/")
    assert obj.url == "https://store.example:9000/models/a%20b/mnist-3.tar.gz"
    with pytest.raises(ValueError, match="without a path"):
        S3Object.parse("s3://models/k", "https://store.example/prefix")
    from datetime import UTC, datetime

    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    headers = signed_headers("GET", obj, Credentials("AKID", "secret"), now=at)
    assert headers["x-amz-date"] == "20260102T030405Z"
    assert headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKID/20260102/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
    )
    assert headers == signed_headers("GET", obj, Credentials("AKID", "secret"), now=at)  # deterministic
    assert "Authorization" not in signed_headers("GET", obj, None)
    assert error_code(b"<Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error>") == (
        "SignatureDoesNotMatch"
    )
    assert error_code(b"<html>nope</html>") is None
    with pytest.raises(ValueError, match="both"):
        Credentials.from_env({"AWS_ACCESS_KEY_ID": "x"})
