"""The real node's lifecycle on this host: everything it starts dies with the process that
started it, a crash leaves nothing behind (no processes, iptables rules, mounts, bridge, routes
or cgroups), a second start after it works, and a clean stop leaves nothing either.

These clusters take the host's one real node for themselves, so the tests are marked `host_node`
and run before every other test (tests/conftest.py), ahead of the session cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from testkit import wait_for

from localcluster import REPO_ROOT, LocalCluster, component_alive, components, find_bin_dir, node

pytestmark = [pytest.mark.host_node, pytest.mark.slow]

CIDRS = (components.SERVICE_CIDR, components.KWOK_POD_CIDR)

# A cluster with its real node and one running pod, in a child process that then waits to be
# killed. The pod's image is the sandbox's own pause image: already in containerd, nothing to pull.
CHILD = textwrap.dedent("""\
    import json, sys, time
    from pathlib import Path
    from localcluster import LocalCluster, images, node
    cluster = LocalCluster(Path(sys.argv[1]), bin_dir=Path(sys.argv[2]), bound_to_parent=True,
                           real_node="on").start()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
           "spec": {"nodeSelector": node.NODE_SELECTOR, "tolerations": [node.TOLERATION],
                    "containers": [{"name": "pause", "image": images.pause_reference(),
                                    "imagePullPolicy": "Never"}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
    print(json.dumps(cluster.state.pids), flush=True)
    time.sleep(600)
""")


def _skip_unless_capable() -> None:
    reason = node.unsupported_reason()
    if reason is not None:
        pytest.skip(f"this host cannot run a real node: {reason}")


def test_a_killed_parent_leaves_nothing_of_the_node_behind_and_up_works_again(tmp_path: Path) -> None:
    _skip_unless_capable()
    bin_dir = find_bin_dir()
    assert node.leftovers(*CIDRS) == [], "the host was not clean before the test"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "crashed"), str(bin_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "hack")},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, (
            f"the child cluster did not start (exit {child.poll()}); logs in {tmp_path / 'crashed' / 'logs'}"
        )
        pids: dict[str, int] = json.loads(line)
        assert {"containerd", "kubelet", "kube-proxy"} <= set(pids)
        assert node.leftovers(*CIDRS), "a running node should show on the host"
        child.kill()  # SIGKILL: no atexit, no finalizer runs in the child
        child.wait()
    finally:
        child.kill()
    # PDEATHSIG ends the components; the reaper removes the pod and the host changes.
    wait_for(lambda: not any(component_alive(pid, name) for name, pid in pids.items()),
             "every component to die with its parent", timeout=20)  # fmt: skip
    wait_for(lambda: node.leftovers(*CIDRS) == [], "the reaper to leave the host clean", timeout=60)
    reaper_log = (tmp_path / "crashed" / "logs" / "reaper.log").read_text()
    assert "pod cgroups" in reaper_log or "sandbox" in reaper_log, reaper_log

    # A second start after the crash works, and a clean stop leaves nothing either.
    again = LocalCluster(tmp_path / "again", bin_dir=bin_dir, bound_to_parent=True, real_node="on")
    again.start()
    try:
        assert again.real_node and again.api.node_ready(node.NODE_NAME)
        assert all(h.ok for h in again.health()), again.health()
        # While it runs, no other cluster may take the host's node (it would tear this one's
        # bridge and rules down): a second one runs kwok-only and says why.
        assert "already runs the real node" in (node.unsupported_reason() or ""), node.host_owner()
    finally:
        again.stop()
    assert node.leftovers(*CIDRS) == []


def test_without_root_the_cluster_says_why_and_runs_kwok_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = node.unsupported_reason()
    assert reason is not None and reason.startswith("not root")
    cluster = LocalCluster(tmp_path / "kwok-only", bin_dir=find_bin_dir(), bound_to_parent=True)
    cluster.start()
    try:
        assert not cluster.real_node
        assert cluster.real_node_reason == reason
        assert cluster.api_url.startswith("https://127.0.0.1:")
        assert [h.component for h in cluster.health()][-1] == f"node/{components.KWOK_NODE_NAME}"
    finally:
        cluster.stop()
    with pytest.raises(Exception, match="MNIST_REAL_NODE=on, but this host cannot run a real node: not root"):
        LocalCluster(tmp_path / "insisted", bin_dir=find_bin_dir(), real_node="on").start()
