"""hack/localcluster/node.py: finding what a node left on the host while it is being removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localcluster import node


def test_a_pod_cgroup_removed_while_the_host_is_searched_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cpu" / node.CGROUP_ROOT.lstrip("/")
    gone = root / "kubepods" / "besteffort"
    (gone / "pod-a").mkdir(parents=True)
    (root / "kubepods" / "burstable").mkdir()
    (root / "cpu.shares").write_text("1024")  # a knob, not a cgroup
    (tmp_path / "memory").mkdir()  # a hierarchy the node never used
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str]) -> object:
        # The reaper removes besteffort after its parent was listed and before it is read.
        if Path(path) == gone:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found = node._cgroup_dirs(tmp_path)
    assert found[-1] == root  # deepest first: the tree is removed leaves up
    assert set(found) == {root, root / "kubepods", root / "kubepods" / "burstable"}
