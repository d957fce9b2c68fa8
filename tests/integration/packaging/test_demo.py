"""`make demo` from a fresh clone: hack/demo.py with no model repository and no cluster yet.

It starts its own control plane (the binaries are found or built like everywhere else), trains
a quick model on a small subset of real MNIST into an empty model repository, runs the operator
as its ServiceAccount, gets the sample MnistModel Ready and classifies a real test digit with
the real server; then it tears everything down. (The Makefile target only adds `make install`
and `make k8s` in front.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from localcluster import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def test_demo_runs_end_to_end_and_cleans_up(tmp_path: Path) -> None:
    models, state = tmp_path / "models", tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "hack" / "demo.py"),
            f"--models={models}",
            f"--state-dir={state}",
            # Small enough for a test; the default (6,000 images, 2 epochs) gets ~97 %.
            "--subset=1500",
            "--epochs=1",
            "--digit-index=3",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out[-6000:]}\n{done.stderr[-4000:]}"
    steps = re.findall(r"^== (\d+)\. ", out, re.MULTILINE)
    # With the host's real node (free when this test runs alone) the operator runs in-cluster
    # and a pod answers; without it (the session's cluster holds the node) a local process does.
    on_real_node = "no real node" not in out
    assert steps == [str(n) for n in range(1, 7 if on_real_node else 8)], out
    assert "$ mnist-train" in out and (models / "mnist" / "1").is_dir()  # trained: nothing was there
    assert re.search(r"^\s+Ready\s+True\s+Serving\s", out, re.MULTILINE), out
    assert "mnistmodel.aidevsecops.dev/mnist-minimal" in out
    answer = re.search(r'\{"prediction": (\d), "probability": ([0-9.e-]+), "latency": ', out)
    assert answer is not None, out
    assert 0 <= int(answer.group(1)) <= 9 and 0 < float(answer.group(2)) <= 1
    assert re.search(r"prediction \d with probability [0-9.]+: (correct|wrong)", out)
    if on_real_node:
        assert re.search(r"answered by pod mnist-minimal-\S+ \(\S+\) on node real-node-0", out), out
    else:
        assert 'mnist_operator_reconciles_total{result="success"}' in out
    assert "Demo finished" in out
    # Torn down: no cluster state left, and no process of the demo's still running.
    assert not (state / "cluster").exists()
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(state).encode() in cmdline.read_bytes():
                leftovers.append(cmdline.parent.name)
        except OSError:  # exited meanwhile
            continue
    assert leftovers == []
