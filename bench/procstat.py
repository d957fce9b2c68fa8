"""CPU time and memory of a process tree, read from /proc (Linux only).

A server is a tree (Granian's master and workers, KServe's uvicorn), so figures are per tree:
CPU seconds summed over every process seen, the largest single process's RSS (what one worker
costs) and the tree's total RSS and PSS (PSS splits pages shared after a fork fairly).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (2nd field) may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are the 14th and 15th fields of stat; fields[0] here is the 3rd.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * PAGE_KB


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True)
class TreeUsage:
    cpu_seconds: float
    wall_seconds: float
    max_process_rss_mb: float
    total_rss_mb: float
    total_pss_mb: float
    processes: int

    @property
    def cores(self) -> float:
        """Average cores busy (CPU seconds per wall second)."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


class TreeSampler:
    """Samples a process tree in a background thread between ``start()`` and ``stop()``."""

    def __init__(self, root: int, interval_s: float = 0.25) -> None:
        self.root = root
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procstat", daemon=True)
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._max_rss_kb = 0
        self._max_total_kb = 0
        self._max_pss_kb = 0
        self._processes = 0
        self._started = 0.0
        self._wall = 0.0

    def start(self) -> TreeSampler:
        import time

        for pid in tree_pids(self.root):
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self._cpu_start[pid] = self._cpu_last[pid] = cpu
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> TreeUsage:
        import time

        self._sample(with_pss=True)
        self._wall = time.monotonic() - self._started
        self._stop.set()
        self._thread.join()
        used = sum(last - self._cpu_start.get(pid, 0.0) for pid, last in self._cpu_last.items())
        return TreeUsage(
            cpu_seconds=used,
            wall_seconds=self._wall,
            max_process_rss_mb=self._max_rss_kb / 1024,
            total_rss_mb=self._max_total_kb / 1024,
            total_pss_mb=self._max_pss_kb / 1024,
            processes=self._processes,
        )

    def _run(self) -> None:
        ticks = 0
        while not self._stop.wait(self.interval_s):
            ticks += 1
            self._sample(with_pss=ticks % 8 == 0)  # smaps_rollup is costlier: every 2 s

    def _sample(self, with_pss: bool) -> None:
        pids = tree_pids(self.root)
        total = pss = 0
        for pid in pids:
            cpu = cpu_seconds(pid)
            if cpu is None:
                continue
            self._cpu_start.setdefault(pid, 0.0)  # a process born during the run: all its CPU counts
            self._cpu_last[pid] = cpu
            rss = rss_kb(pid)
            total += rss
            self._max_rss_kb = max(self._max_rss_kb, rss)
            if with_pss:
                pss += pss_kb(pid)
        self._max_total_kb = max(self._max_total_kb, total)
        self._max_pss_kb = max(self._max_pss_kb, pss)
        self._processes = max(self._processes, len(pids))
