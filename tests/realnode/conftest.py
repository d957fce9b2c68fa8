"""Fixtures for the tests on the local cluster's real node (all named `rn_*`).

- `rn_cluster` (session): the session cluster, which must have its real node; skipped with the
  exact reason where the host cannot run one (not root, a missing package or kernel feature),
  and a failure where it could but the node is missing.
- `rn_images` (session): the base, operator and server images built from the shipped
  Dockerfiles by buildah (tests/conftest.py builds them before any test, outside the timeouts)
  and imported into the node's containerd. The server image carries two quick model versions.
- `rn_operator` (module): the operator installed in-cluster from its image with the shipped
  kustomize (kustomize/overlays/local, with the built images' tags set on top), under its own
  ServiceAccount and RBAC; removed at the end of the module, unless the cluster is one the
  session attached to.
- `rn_namespace`: a namespace that enforces Pod Security `restricted`, per test.
- `rn_digits`: a few hundred real MNIST test images and their labels.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from realnode.realnode_support import (
    IMAGE_ERROR_KEY,
    IMAGES_KEY,
    Digits,
    OperatorInstall,
    install_operator,
    uninstall_operator,
)

from localcluster import LocalCluster, node
from localcluster.images import Images


@pytest.fixture(scope="session")
def rn_cluster(cluster: LocalCluster) -> LocalCluster:
    if not cluster.real_node:
        reason = node.unsupported_reason()
        if reason is not None:
            pytest.skip(f"this host cannot run a real node: {reason}")
        pytest.fail(f"the host can run a real node but the cluster has none: {cluster.real_node_reason}")
    return cluster


@pytest.fixture(scope="session")
def rn_images(rn_cluster: LocalCluster, request: pytest.FixtureRequest) -> Images:
    built = request.config.stash.get(IMAGES_KEY, None)
    if built is None:
        why = request.config.stash.get(
            IMAGE_ERROR_KEY, "they were not built before the session (tests/conftest.py)"
        )
        pytest.fail(f"no images for the real node: {why}")
    for ref in (built.operator, built.server):
        rn_cluster.import_image(ref)
    return built


@pytest.fixture(scope="module")
def rn_operator(
    rn_cluster: LocalCluster, rn_images: Images, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorInstall]:
    install = install_operator(rn_cluster, rn_images, tmp_path_factory.mktemp("operator-install"))
    try:
        yield install
    finally:
        # On a cluster the session attached to (MNIST_TEST_KUBECONFIG), others may be using the
        # operator: it stays, as the cluster does.
        if rn_cluster.owned:
            uninstall_operator(rn_cluster, install)


@pytest.fixture
def rn_namespace(rn_cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    doc = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }
    rn_cluster.kubectl("create", "-f", "-", input=json.dumps(doc))
    yield name
    rn_cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def rn_digits() -> Digits:
    from mnist_server.data import load_mnist

    test = load_mnist(None).test
    # Real test images the quick models never trained on, spread over the set.
    picks = np.linspace(0, len(test) - 1, 300).astype(int)
    return Digits(images=test.images[picks], labels=test.labels[picks])
