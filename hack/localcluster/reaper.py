"""Cleans the host after a test run that died without stopping its cluster.

Started by LocalCluster (for the pytest fixture) with the read end of a pipe as stdin. A
normal stop writes "done"; if instead the pipe closes (the parent was killed, even by
SIGKILL), the reaper kills what is left of the cluster and undoes the real node's changes to
the host: pod processes, mounts, iptables rules, the bridge, routes, cgroups, sysctls.

    python -m localcluster.reaper STATE_DIR BIN_DIR
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from localcluster import components, node
from localcluster.cluster import ClusterState
from localcluster.process import component_alive


def main(argv: list[str]) -> int:
    state_dir, bin_dir = Path(argv[0]), Path(argv[1])
    if sys.stdin.buffer.readline().strip() == b"done":
        return 0
    print(f"the process that started the cluster in {state_dir} died: cleaning up", flush=True)
    state_file = state_dir / "state.json"
    if state_file.exists():
        state = ClusterState.load(state_file)
        for component, pid in state.pids.items():
            if component_alive(pid, component):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    removed = node.cleanup_host(bin_dir, components.SERVICE_CIDR, components.KWOK_POD_CIDR)
    print("removed: " + ("; ".join(removed) or "nothing"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
