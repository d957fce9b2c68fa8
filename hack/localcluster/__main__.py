"""The local cluster's command line (see docs/local-cluster.md).

    PYTHONPATH=hack python -m localcluster up|down|status|env|kubeconfig [--state-dir DIR]

`make cluster-up`, `make cluster-down` and `make cluster-status` run it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from localcluster import components, node
from localcluster.cluster import DEFAULT_STATE_DIR, REAL_NODE_MODES, LocalCluster
from localcluster.errors import ClusterError


def _print_env(cluster: LocalCluster, out: IO[str]) -> None:
    out.write(f"export KUBECONFIG={cluster.kubeconfig}\n")
    out.write(f'export PATH="{cluster.bin_dir}:$PATH"\n')


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description="A local Kubernetes cluster.")
    parser.add_argument("command", choices=["up", "down", "status", "env", "kubeconfig"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("--timeout", type=float, default=180.0, help="start-up deadline in seconds")
    parser.add_argument(
        "--real-node",
        choices=REAL_NODE_MODES,
        default=None,
        help="a real node beside kwok's: auto (where the host can), on (or fail), off "
        "(default: $MNIST_REAL_NODE or auto)",
    )
    args = parser.parse_args(argv)
    try:
        cluster = LocalCluster(args.state_dir, ready_timeout=args.timeout, real_node=args.real_node)
    except ClusterError as e:
        print(e, file=sys.stderr)
        return 2

    if args.command == "up":
        return _up(cluster)
    if not cluster.is_running():
        if args.command == "down":
            # A crashed `up` can leave the node's traces on the host with no process running.
            removed = node.cleanup_host(None, components.SERVICE_CIDR, components.KWOK_POD_CIDR)
            cleaned = f"; removed {', '.join(removed)}" if removed else ""
            print(f"not running (state dir {cluster.state_dir}){cleaned}", file=sys.stderr)
            return 0
        print(f"no cluster running from {cluster.state_dir}; run `up` first", file=sys.stderr)
        return 1
    cluster = LocalCluster.attach(cluster.state_dir)

    if args.command == "down":
        cluster.stop()
        shutil.rmtree(cluster.state_dir, ignore_errors=True)
        print(f"stopped; removed {cluster.state_dir}", file=sys.stderr)
    elif args.command == "status":
        report = cluster.health()
        for h in report:
            print(f"{h.component:<26} {'ok  ' if h.ok else 'FAIL'} {h.detail}")
        print(f"{'api':<26} {cluster.api_url}\n{'kubeconfig':<26} {cluster.kubeconfig}")
        if not cluster.real_node:
            print(f"{'real node':<26} none: {cluster.real_node_reason}")
        return 0 if all(h.ok for h in report) else 1
    elif args.command == "env":
        _print_env(cluster, sys.stdout)
    else:
        print(cluster.kubeconfig)
    return 0


def _up(cluster: LocalCluster) -> int:
    if cluster.is_running():
        broken = [h for h in LocalCluster.attach(cluster.state_dir).health() if not h.ok]
        if broken:
            problems = ", ".join(f"{h.component}: {h.detail}" for h in broken)
            print(f"a cluster in {cluster.state_dir} is unhealthy ({problems}); run `down`, then `up`",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"already running (state in {cluster.state_dir})", file=sys.stderr)
    else:
        try:
            cluster.start()
        except ClusterError as e:
            print(f"cluster start failed: {e}\nlogs: {cluster.logs_dir}", file=sys.stderr)
            return 1
        print(f"cluster up in {cluster.startup_seconds:.1f} s at {cluster.api_url}", file=sys.stderr)
        if cluster.real_node:
            needs = f"toleration {node.TAINT['key']}, nodeSelector {node.LABEL[0]}={node.LABEL[1]}"
            print(f"real node {node.NODE_NAME} Ready in {cluster.node_startup_seconds:.1f} s "
                  f"(its pods need the {needs})", file=sys.stderr)  # fmt: skip
        else:
            print(f"no real node (kwok only): {cluster.real_node_reason}", file=sys.stderr)
    _print_env(cluster, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
