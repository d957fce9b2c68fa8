"""Models from storage, on the real node: pods of the unchanged shared image fetch a published
version (from a real S3 store, a real HTTP server, a real PVC), verify its digest before they
serve it, report which bytes answer, and refuse, saying why, whatever does not check out.

The stores run on this machine, on the node's bridge address (the only one pods reach):
versitygw (an S3 gateway that checks signatures, built from its Go module by
hack/build-versitygw.sh), Python's HTTP server in a thread, and a `local` PersistentVolume on
the real node bound to a PVC. Versions 1 and 2 are the quick models the server image is built
from, published with `mnist-train publish`'s code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from realnode.realnode_support import (
    Digits,
    OperatorInstall,
    apply,
    condition,
    get,
    mnist_model,
    pods_of,
    predict,
    routed_cluster_ip,
    wait_condition,
)
from storage_servers import ACCESS_KEY, SECRET_KEY, ArchiveServer, ObjectStore, versitygw_binary
from testkit import free_port, wait_for

from localcluster import LocalCluster, images, node
from mnist_server.publish import publish

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

BUCKET = "models"
SECRET = "store-credentials"


@dataclass(frozen=True)
class Published:
    digests: dict[str, str]  # version -> sha256 of its archive
    archives: dict[str, Path]  # version -> the archive file
    truncated: str  # digest of the web server's truncated.tar.gz (which matches it)
    not_a_model: str  # digest of notes.tar.gz


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    server = ObjectStore(tmp_path_factory.mktemp("s3"), host=node.NODE_IP).start(versitygw_binary())
    log.info("versitygw answered %.2f s after it was started", server.startup_seconds)
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    server = ArchiveServer(tmp_path_factory.mktemp("web"), host=node.NODE_IP).start()
    yield server
    server.stop()


@dataclass(frozen=True)
class Stores:
    store: ObjectStore
    web: ArchiveServer
    published: Published


@pytest.fixture(scope="module")
def stores(store: ObjectStore, web: ArchiveServer) -> Stores:
    return Stores(store, web, publish_versions(store, web))


def publish_versions(store: ObjectStore, web: ArchiveServer) -> Published:
    """Versions 1 and 2 to both stores, and two archives whose digests match but that are no model."""
    models = images.quick_models(Path(sys.executable).parent / "mnist-train") / "mnist"
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    digests, archives = {}, {}
    for version in images.QUICK_VERSIONS:
        to_s3 = publish(models / version, f"s3://{BUCKET}/", s3_endpoint=store.endpoint, env=env)
        over_http = publish(models / version, f"{web.url}/")  # a plain HTTP PUT
        assert to_s3.sha256 == over_http.sha256  # one version, one archive, one digest
        digests[version] = to_s3.sha256
        archives[version] = web.directory / f"mnist-{version}.tar.gz"
    whole = archives["1"].read_bytes()
    (web.directory / "truncated.tar.gz").write_bytes(whole[: len(whole) // 2])
    notes = io.BytesIO()
    with tarfile.open(fileobj=notes, mode="w:gz") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    (web.directory / "notes.tar.gz").write_bytes(notes.getvalue())
    return Published(
        digests,
        archives,
        truncated=hashlib.sha256(whole[: len(whole) // 2]).hexdigest(),
        not_a_model=hashlib.sha256(notes.getvalue()).hexdigest(),
    )


@dataclass(frozen=True)
class Setting:
    """One test's namespace on the real node (the operator in-cluster), the stores and what they hold."""

    cluster: LocalCluster
    namespace: str
    store: ObjectStore
    web: ArchiveServer
    published: Published
    digits: Digits

    def apply(self, name: str, version: str, source: dict[str, Any]) -> None:
        apply(self.cluster, self.namespace, mnist_model(name, version, source=source))

    def s3(self, key: str, digest: str, secret: str | None = SECRET) -> dict[str, Any]:
        where: dict[str, Any] = {"endpoint": self.store.endpoint, "bucket": BUCKET, "key": key}
        if secret:
            where["secretName"] = secret
        return {"sha256": digest, "s3": where}

    def http(self, path: str, digest: str) -> dict[str, Any]:
        return {"sha256": digest, "http": {"url": f"{self.web.url}/{path}"}}

    def ready(self, name: str, status: str = "True", reason: str | None = None) -> dict[str, Any]:
        return wait_condition(self.cluster, self.namespace, name, status, reason=reason, timeout=240)


@pytest.fixture
def setting(
    rn_cluster: LocalCluster,
    rn_operator: OperatorInstall,
    rn_namespace: str,
    rn_digits: Digits,
    stores: Stores,
) -> Setting:
    """And two Secrets in the namespace: the store's credentials, and wrong ones."""
    for name, secret in ((SECRET, SECRET_KEY), ("wrong-credentials", SECRET_KEY + "-not")):
        rn_cluster.kubectl("create", "secret", "generic", name, "-n", rn_namespace,
                           f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS_KEY}",
                           f"--from-literal=AWS_SECRET_ACCESS_KEY={secret}")  # fmt: skip
    return Setting(rn_cluster, rn_namespace, stores.store, stores.web, stores.published, rn_digits)


@pytest.fixture
def claim(setting: Setting) -> Iterator[str]:
    """A PVC bound to a `local` PersistentVolume on the real node holding the version 2 archive."""
    rn_cluster, rn_namespace = setting.cluster, setting.namespace
    directory = Path(tempfile.mkdtemp(prefix="mnist-pv-"))
    directory.chmod(0o755)
    (directory / "versions").mkdir(mode=0o755)
    shutil.copyfile(setting.published.archives["2"], directory / "versions" / "mnist-2.tar.gz")
    (directory / "versions" / "mnist-2.tar.gz").chmod(0o644)
    volume = f"{rn_namespace}-models"
    on_node = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node.NODE_NAME]}
    docs = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "mnist-local-test",
                "local": {"path": str(directory)},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [on_node]}]}},
                "claimRef": {"namespace": rn_namespace, "name": "models"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "models", "namespace": rn_namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "mnist-local-test",
                "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]
    rn_cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )
    yield "models"
    rn_cluster.kubectl("delete", "pvc", "models", "-n", rn_namespace, "--wait=false", check=False)
    rn_cluster.kubectl("delete", "pv", volume, "--wait=false", check=False)
    shutil.rmtree(directory, ignore_errors=True)


def wait_model(
    cluster: LocalCluster, namespace: str, name: str, check: Callable[[dict[str, Any]], bool], *, what: str
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        model = get(cluster, namespace, "mnistmodel", name)
        return model if check(model) else None

    return wait_for(probe, f"MnistModel {namespace}/{name}: {what}", timeout=240, interval=0.5)


def v2_metadata(ip: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{ip}/v2/models/mnist", timeout=10) as response:
        return dict(json.loads(response.read()))


def source_metric(ip: str) -> list[str]:
    with urllib.request.urlopen(f"http://{ip}/metrics", timeout=10) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith("mnist_server_model_source_info{")]


def fetch_seconds(pod: dict[str, Any]) -> float:
    """How long the init container took, from the kubelet's timestamps (1 s resolution)."""
    (fetch,) = pod["status"]["initContainerStatuses"]
    done = fetch["state"]["terminated"]
    assert done["exitCode"] == 0, done

    def at(key: str) -> datetime:
        return datetime.fromisoformat(done[key].replace("Z", "+00:00"))

    return (at("finishedAt") - at("startedAt")).total_seconds()


def test_a_model_from_s3_rolls_to_another_stored_version_with_the_digest_in_status(
    setting: Setting, record_property: pytest.RecordProperty
) -> None:
    cluster, namespace = setting.cluster, setting.namespace
    d1, d2 = setting.published.digests["1"], setting.published.digests["2"]
    started = time.monotonic()
    setting.apply("digits", "1", setting.s3("mnist-1.tar.gz", d1))
    model = setting.ready("digits")
    to_ready = time.monotonic() - started
    assert (model["status"]["modelVersion"], model["status"]["modelSHA256"]) == ("1", d1)
    (pod,) = pods_of(cluster, namespace, "digits")
    fetched_in = fetch_seconds(pod)
    # The credentials reach the fetch, never the server.
    (server,) = pod["spec"]["containers"]
    assert not any("valueFrom" in e for e in server.get("env", []))
    ip = routed_cluster_ip(cluster, namespace, "digits")
    assert v2_metadata(ip)["parameters"] == {"source": "s3", "sha256": d1}
    assert source_metric(ip) == [f'mnist_server_model_source_info{{sha256="{d1}",source="s3"}} 1.0']
    digits = setting.digits
    assert float(np.mean(predict(ip, digits.images[:100]) == digits.labels[:100])) > 0.9

    # Version 2 from the store: the digest in status moves once the rollout is done, never back.
    seen: list[str | None] = []

    def rolled(model: dict[str, Any]) -> bool:
        seen.append(model.get("status", {}).get("modelSHA256"))
        return seen[-1] == d2 and condition(model).get("status") == "True"

    started = time.monotonic()
    setting.apply("digits", "2", setting.s3("mnist-2.tar.gz", d2))
    model = wait_model(cluster, namespace, "digits", rolled, what=f"serving {d2[:12]}")
    rollout = time.monotonic() - started
    assert model["status"]["modelVersion"] == "2"
    switch = seen.index(d2)
    assert set(seen[:switch]) == {d1} and set(seen[switch:]) == {d2}
    assert all(v2_metadata(ip)["parameters"]["sha256"] == d2 for _ in range(5))  # no old pod answers

    # A digest that does not match: the new pod refuses, the old one keeps serving and the status
    # keeps telling the truth about it.
    setting.apply("digits", "3", setting.s3("mnist-2.tar.gz", d1))
    model = setting.ready("digits", "False", reason="DigestMismatch")
    ready = condition(model)
    assert f"not the pinned {d1}" in ready["message"] and d2 in ready["message"]
    assert condition(model, "Available")["status"] == "True"
    assert (model["status"]["modelVersion"], model["status"]["modelSHA256"]) == ("2", d2)
    assert v2_metadata(ip)["parameters"]["sha256"] == d2
    log.info(
        "s3: create -> Ready %.1f s (fetch %.0f s), rollout 1 -> 2 %.1f s", to_ready, fetched_in, rollout
    )
    record_property("s3_create_to_ready_seconds", round(to_ready, 1))
    record_property("s3_fetch_seconds", fetched_in)
    record_property("s3_rollout_seconds", round(rollout, 1))


def test_http_and_pvc_sources_serve_the_pinned_bytes(
    setting: Setting, claim: str, record_property: pytest.RecordProperty
) -> None:
    d1, d2 = setting.published.digests["1"], setting.published.digests["2"]
    setting.apply("web", "1", setting.http("mnist-1.tar.gz", d1))
    setting.apply(
        "volume", "2", {"sha256": d2, "pvc": {"claimName": claim, "path": "versions/mnist-2.tar.gz"}}
    )
    digits = setting.digits
    for name, kind, digest in (("web", "http", d1), ("volume", "pvc", d2)):
        model = setting.ready(name)
        assert model["status"]["modelSHA256"] == digest
        ip = routed_cluster_ip(setting.cluster, setting.namespace, name)
        assert v2_metadata(ip)["parameters"] == {"source": kind, "sha256": digest}
        assert float(np.mean(predict(ip, digits.images[:50]) == digits.labels[:50])) > 0.9
        (pod,) = pods_of(setting.cluster, setting.namespace, name)
        record_property(f"{kind}_fetch_seconds", fetch_seconds(pod))
    # The volume is the fetch's only: the server never mounts it.
    (pod,) = pods_of(setting.cluster, setting.namespace, "volume")
    assert all(m["name"] != "model-source" for m in pod["spec"]["containers"][0]["volumeMounts"])


def test_every_fetch_failure_is_reported_on_the_model_with_its_reason(
    setting: Setting, record_property: pytest.RecordProperty
) -> None:
    published = setting.published
    d1, d2 = published.digests["1"], published.digests["2"]
    closed = f"http://{node.NODE_IP}:{free_port(node.NODE_IP)}/mnist-1.tar.gz"
    cases: dict[str, tuple[dict[str, Any], str, str]] = {
        "wrong-digest": (setting.http("mnist-1.tar.gz", d2), "DigestMismatch", f"not the pinned {d2}"),
        "unreachable": ({"sha256": d1, "http": {"url": closed}}, "ModelFetchFailed", "could not download"),
        "cut-off": (setting.http("broken/mnist-1.tar.gz", d1), "ModelFetchFailed", "broke off after"),
        "truncated": (setting.http("truncated.tar.gz", published.truncated), "InvalidModelArchive",
                      "truncated"),
        "not-a-model": (setting.http("notes.tar.gz", published.not_a_model), "InvalidModelArchive",
                        "no saved_model.pb"),
        "bad-credentials": (setting.s3("mnist-1.tar.gz", d1, "wrong-credentials"), "ModelAccessDenied",
                            "SignatureDoesNotMatch"),
        "anonymous": (setting.s3("mnist-1.tar.gz", d1, None), "ModelAccessDenied", "anonymous request"),
        "missing-object": (setting.s3("mnist-9.tar.gz", d1), "ModelFetchFailed", "HTTP 404"),
        "missing-secret": (setting.s3("mnist-1.tar.gz", d1, "no-such-secret"), "CreateContainerConfigError",
                           'secret "no-such-secret" not found'),
    }  # fmt: skip
    started = time.monotonic()
    for name, (source, _, _) in cases.items():
        setting.apply(name, "1", source)
    reported: dict[str, float] = {}
    for name, (_, reason, fragment) in cases.items():
        model = setting.ready(name, "False", reason=reason)
        reported[name] = round(time.monotonic() - started, 1)
        assert fragment in condition(model)["message"], (name, condition(model))
        assert "modelSHA256" not in model["status"]
    for name, (_, reason, _) in cases.items():
        # Never a silent crash loop: the server never started on anything unverified...
        (pod,) = pods_of(setting.cluster, setting.namespace, name)
        (server,) = pod["status"]["containerStatuses"]
        assert server["restartCount"] == 0 and "running" not in server["state"], (name, server)
        # ... and the reason is also a Warning Event on the MnistModel.
        selector = f"--field-selector=involvedObject.name={name}"
        events = setting.cluster.kubectl("get", "events", "-n", setting.namespace, selector, "-o", "json")
        assert any(
            e["type"] == "Warning" and e["reason"] == reason for e in json.loads(events.stdout)["items"]
        )
    log.info("seconds from creation to the reason on the model: %s", reported)
    record_property("failure_reported_seconds", json.dumps(reported))


BAD_SOURCES = {
    "no location": ({"sha256": "ab" * 32}, "spec.source needs exactly one of http, s3 or pvc"),
    "upper-case digest": ({"sha256": "AB" * 32, "http": {"url": "http://h/m"}},
                          "spec.source.sha256 must be 64 lowercase hexadecimal digits"),
    "ftp": ({"sha256": "ab" * 32, "http": {"url": "ftp://h/m"}}, "spec.source.http.url must be an http://"),
    "user info": ({"sha256": "ab" * 32, "http": {"url": "http://u:p@h/m"}}, "spec.source.http.url must be an http://"),
    "endpoint path": ({"sha256": "ab" * 32, "s3": {"endpoint": "https://h/p", "bucket": "bkt", "key": "k"}},
                      "spec.source.s3.endpoint must be http(s)://host[:port], without a path"),
    "absolute key": ({"sha256": "ab" * 32, "s3": {"endpoint": "https://h", "bucket": "models", "key": "/k"}},
                     "spec.source.s3.key must not start with '/'"),
    "path out": ({"sha256": "ab" * 32, "pvc": {"claimName": "c", "path": "a/../../b"}},
                 "spec.source.pvc.path must be a relative path inside the volume"),
}  # fmt: skip


@pytest.mark.parametrize("case", [*BAD_SOURCES, "model root in env"])
def test_the_api_server_rejects_a_bad_source_with_a_message_a_user_understands(
    rn_cluster: LocalCluster, rn_operator: OperatorInstall, rn_namespace: str, case: str
) -> None:
    """The CRD's CEL rules, on the real API server (a server-side dry run: nothing is stored)."""
    if case in BAD_SOURCES:
        source, message = BAD_SOURCES[case]
        model = mnist_model("bad", "1", source=source)
    else:
        message = "with spec.source, spec.env must not set MNIST_SERVER_MODEL_ROOT"
        env = [{"name": "MNIST_SERVER_MODEL_ROOT", "value": "/models"}]
        model = mnist_model("bad", "1", source={"sha256": "ab" * 32, "http": {"url": "http://h/m"}}, env=env)

    def dry_run(doc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        body = json.dumps({**doc, "metadata": {**doc["metadata"], "namespace": rn_namespace}})
        return rn_cluster.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=body, check=False
        )

    done = dry_run(model)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    where = {"endpoint": "http://h:9000", "bucket": "models", "key": "team/mnist-1.tar.gz"}
    created = dry_run(mnist_model("good", "1", source={"sha256": "ab" * 32, "s3": where}))
    assert json.loads(created.stdout)["spec"]["source"]["s3"]["region"] == "us-east-1"  # the schema's default
