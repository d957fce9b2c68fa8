"""Root conftest: the real local control plane, shared by the whole test session.

Only cluster options and fixtures live here; each test directory keeps its own fixtures in
its own conftest.py.

- `cluster` (session): one LocalCluster (hack/localcluster/) for the run, in a pytest tmp
  dir, stopped at the end; its processes die with pytest even if pytest is killed. With
  MNIST_TEST_KUBECONFIG=<state dir>/kubeconfig (e.g. `.cluster/kubeconfig` after
  `make cluster-up`) the tests reuse that running cluster instead and leave it up.
- `namespace` (function): a fresh namespace per test, deleted afterwards without waiting.
- `cluster_env` (function): KUBECONFIG and PATH (the cluster's kubectl first) set for the test.
- `--no-cluster` or MNIST_NO_CLUSTER=1 skips every test marked `cluster`; any test that uses
  the `cluster` fixture (directly or through another fixture) is marked automatically.
- Tests on the real node (tests/realnode) need the images built from the shipped Dockerfiles:
  they are built (or found in buildah's store) before the first test, like the binaries.
- Tests marked `host_node` start clusters of their own that take the host's one real node:
  they run first, before the session cluster claims it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import ClusterError, LocalCluster, find_bin_dir, images, node

log = logging.getLogger(__name__)

_STARTUP_KEY = pytest.StashKey[str]()
_BIN_DIR_KEY = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-cluster",
        action="store_true",
        default=os.environ.get("MNIST_NO_CLUSTER", "") == "1",
        help="skip tests that need the local control plane (also: MNIST_NO_CLUSTER=1)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs the local control plane (--no-cluster / MNIST_NO_CLUSTER=1)")
    # Stable sort: host_node tests first, the rest in their usual order.
    items.sort(key=lambda item: item.get_closest_marker("host_node") is None)
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("host_node"):
            item.add_marker(pytest.mark.cluster)
        if config.getoption("--no-cluster") and item.get_closest_marker("cluster"):
            item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Find (or build) the binaries before any test runs, outside every test's timeout.

    A cold build takes ~25 min on 2 cores; inside the fixture, pytest-timeout would cut it.
    """
    config = session.config
    wanted = any(item.get_closest_marker("cluster") for item in session.items)
    if wanted and not config.getoption("--no-cluster") and not os.environ.get("MNIST_TEST_KUBECONFIG"):
        started = time.monotonic()
        config.stash[_BIN_DIR_KEY] = find_bin_dir()
        log.info("control plane binaries found/built in %.1f s", time.monotonic() - started)
    needs_images = any("rn_images" in getattr(item, "fixturenames", ()) for item in session.items)
    if wanted and needs_images and not config.getoption("--no-cluster") and node.unsupported_reason() is None:
        from realnode.realnode_support import IMAGE_ERROR_KEY, IMAGES_KEY

        started = time.monotonic()
        log_file = Path(os.environ.get("MNIST_IMAGE_LOG", images.CACHE_DIR / "build.log"))
        trainer = Path(sys.executable).parent / "mnist-train"
        try:
            prebuilt = os.environ.get("MNIST_TEST_IMAGES")  # "base,server,operator": reuse, for iterating
            if prebuilt:
                config.stash[IMAGES_KEY] = images.Images(*prebuilt.split(","))
            else:
                models = images.quick_models(trainer)
                config.stash[IMAGES_KEY] = images.build_all(log_file, models=models)
        except ClusterError as e:
            # Each test that needs the images fails with this, rather than the whole session.
            log.error("building the images failed: %s", e)
            config.stash[IMAGE_ERROR_KEY] = str(e)
        log.info("images found/built in %.1f s (log: %s)", time.monotonic() - started, log_file)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    line = config.stash.get(_STARTUP_KEY, None)
    if line:
        terminalreporter.write_sep("-", line)


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    reuse = os.environ.get("MNIST_TEST_KUBECONFIG")
    if reuse:
        attached = LocalCluster.attach(Path(reuse))
        broken = [h for h in attached.health() if not h.ok]
        if broken:
            raise ClusterError(broken[0].component, f"MNIST_TEST_KUBECONFIG={reuse}: {broken[0].detail}")
        request.config.stash[_STARTUP_KEY] = f"local cluster: reused {attached.api_url} ({reuse})"
        yield attached
        return

    bin_dir = request.config.stash.get(_BIN_DIR_KEY, None)
    local = LocalCluster(tmp_path_factory.mktemp("cluster"), bin_dir=bin_dir, bound_to_parent=True)
    local.start()
    summary = f"local cluster: started in {local.startup_seconds:.1f} s; state in {local.state_dir}"
    log.info(summary)
    request.config.stash[_STARTUP_KEY] = summary
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    # A readable, unique, DNS-1123 name: test name prefix plus a random suffix.
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def cluster_env(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KUBECONFIG and PATH for code under test that finds the cluster itself (kopf, kubectl).

    Note for kopf: with the `kubernetes` client installed, kopf's default login reads the
    kubeconfig path that the client captured at import time; add
    `@kopf.on.login() def login(**kw): return kopf.login_with_kubeconfig(**kw)` so it reads
    KUBECONFIG when it logs in.
    """
    for key, value in cluster.env().items():
        monkeypatch.setenv(key, value)
    return cluster.kubeconfig
