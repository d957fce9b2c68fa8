"""Train, publish to a real S3 store, fetch and serve: the console scripts, no cluster.

The store is versitygw (an S3 gateway over a directory, which checks every request's signature),
started by the test on a free 127.0.0.1 port. `mnist-train publish` uploads a version there,
`mnist-server fetch` brings it back verified, and `mnist-server` serves it and says which bytes
answer. The store's refusals are real: a wrong secret, an unknown key, no credentials, a missing
object, and an object changed behind the publisher's back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from storage_servers import ACCESS_KEY, SECRET_KEY, ObjectStore, free_port, versitygw_binary
from testkit import tiny_keras_model, wait_for

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    server = ObjectStore(tmp_path_factory.mktemp("s3")).start(versitygw_binary())
    server.create_bucket("models")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mnist_server.export import export_model

    root = tmp_path_factory.mktemp("trained")
    export_model(tiny_keras_model(seed=7), root, "mnist", "5", {"purpose": "storage e2e"})
    return root / "mnist" / "5"


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(argv, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def fetch(store: ObjectStore, key: str, digest: str, root: Path, env: dict[str, str]) -> tuple[int, str]:
    log = root.parent / f"{root.name}.termination-log"
    done = run([str(BIN / "mnist-server"), "fetch", "--source", f"s3://models/{key}", "--s3-endpoint",
                store.endpoint, "--sha256", digest, "--model-root", str(root), "--model-version", "5",
                "--termination-log", str(log), "--backoff", "0.05"], env)  # fmt: skip
    return done.returncode, log.read_text() if log.exists() else ""


def test_publish_fetch_and_serve_through_a_real_s3_store(
    store: ObjectStore, version_dir: Path, tmp_path: Path, record_property: pytest.RecordProperty
) -> None:
    record_property("versitygw_startup_seconds", round(store.startup_seconds, 2))
    done = run([str(BIN / "mnist-train"), "publish", str(version_dir), "--to", "s3://models/team/",
                "--s3-endpoint", store.endpoint, "--secret-name", "store-credentials", "--json"],
               CREDENTIALS)  # fmt: skip
    assert done.returncode == 0, done.stderr
    published = json.loads(done.stdout)
    digest = published["sha256"]
    assert published["spec"] == {
        "modelVersion": "5",
        "source": {
            "sha256": digest,
            "s3": {"endpoint": store.endpoint, "bucket": "models", "key": "team/mnist-5.tar.gz",
                   "secretName": "store-credentials"},
        },
    }  # fmt: skip
    # The human form prints the same digest and a spec to paste.
    again = run([str(BIN / "mnist-train"), "publish", str(version_dir), "--to", "s3://models/team/",
                 "--s3-endpoint", store.endpoint], CREDENTIALS)  # fmt: skip
    assert f"sha256 {digest}" in again.stdout and "  source:\n" in again.stdout

    root = tmp_path / "repo"
    started = time.monotonic()
    code, message = fetch(store, "team/mnist-5.tar.gz", digest, root, CREDENTIALS)
    fetched_in = time.monotonic() - started
    assert (code, message) == (0, "")
    record_property("fetch_seconds", round(fetched_in, 2))

    port = free_port("127.0.0.1")
    env = {"MNIST_SERVER_MODEL_ROOT": str(root), "MNIST_SERVER_HOST": "127.0.0.1",
           "MNIST_SERVER_PORT": str(port), "MNIST_SERVER_MODEL_VERSION": "5"}  # fmt: skip
    with (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen([str(BIN / "mnist-server")], env={**os.environ, **env}, stdout=log,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return requests.get(f"{url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, "mnist-server ready on the fetched version", timeout=180, interval=0.5)
        assert requests.get(f"{url}/v2/models/mnist", timeout=5).json()["parameters"] == {
            "source": "s3",
            "sha256": digest,
        }
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        assert f'mnist_server_model_source_info{{sha256="{digest}",source="s3"}} 1.0' in metrics
        assert f"archive sha256 {digest}" in (tmp_path / "server.log").read_text()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def test_the_stores_refusals_are_reported_with_their_reason(
    store: ObjectStore, version_dir: Path, tmp_path: Path
) -> None:
    done = run([str(BIN / "mnist-train"), "publish", str(version_dir), "--to", "s3://models/mnist-5.tar.gz",
                "--s3-endpoint", store.endpoint, "--json"], CREDENTIALS)  # fmt: skip
    digest = json.loads(done.stdout)["sha256"]
    wrong_secret = {**CREDENTIALS, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    unknown_key = {**CREDENTIALS, "AWS_ACCESS_KEY_ID": "nobody"}
    cases = {
        "wrong-secret": (
            "mnist-5.tar.gz",
            wrong_secret,
            "ModelAccessDenied",
            "HTTP 403 SignatureDoesNotMatch",
        ),
        "unknown-key": (
            "mnist-5.tar.gz",
            unknown_key,
            "ModelAccessDenied",
            "XAdminUserNotFound",
        ),  # AWS: 403 InvalidAccessKeyId
        "anonymous": ("mnist-5.tar.gz", {}, "ModelAccessDenied", "an anonymous request was refused"),
        "missing": ("mnist-6.tar.gz", CREDENTIALS, "ModelFetchFailed", "HTTP 404 NoSuchKey: no such object"),
    }
    for name, (key, env, reason, fragment) in cases.items():
        code, message = fetch(store, key, digest, tmp_path / name, env)
        assert code == 1 and message.startswith(f"{reason}: ") and fragment in message, (name, message)
        assert not (tmp_path / name / "mnist" / "5").exists()
    # Someone replaces the object behind the publisher's back: the pinned digest refuses it.
    (store.root / "models" / "mnist-5.tar.gz").write_bytes(b"\x1f\x8b" + b"not the model" * 100)
    code, message = fetch(store, "mnist-5.tar.gz", digest, tmp_path / "tampered", CREDENTIALS)
    assert code == 1 and message.startswith("DigestMismatch: ") and f"not the pinned {digest}" in message
    assert not (tmp_path / "tampered" / "mnist" / "5").exists()
