"""Peak memory of a Spark driver's process tree, from the kernel's own accounting.

A background thread polls /proc every 0.2 s. The process tree of one PySpark run
in local mode is: the Python driver -> the JVM (driver and executor in one) ->
the pyspark daemon -> forked Python workers. The Python driver's and the JVM's
peaks are their VmHWM (the kernel's high-water mark, so no peak falls between
two polls); the workers come and go, so their peak is the largest sum of VmRSS
(and of Pss, which splits pages shared between workers, such as a memory-mapped
index, instead of counting them once per worker) seen at one poll.
"""

from __future__ import annotations

import os
import threading


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited between listdir and open
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(name))
    return tree


def descendants(pid: int, tree: dict[int, list[int]] | None = None) -> list[int]:
    """pid's descendants (not pid itself), parents before children."""
    tree, out, todo = tree if tree is not None else _children(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _status_kb(pid: int, *fields: str) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


class TreeMemory:
    """Polls the tree under `root` (the Python driver) until stop(); peaks in bytes."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.driver_hwm = self.jvm_hwm = self.workers_rss = self.workers_pss = self.worker_hwm = 0
        self.pids: set[int] = set()
        self.loads: list[float] = []  # the 1-minute load average at each poll (the CPU is shared)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeMemory:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        self.loads.append(os.getloadavg()[0])
        hwm = _status_kb(self.root, "VmHWM").get("VmHWM", 0)
        self.driver_hwm = max(self.driver_hwm, hwm * 1024)
        rss = pss = 0
        tree = _children()
        for pid in descendants(self.root, tree):
            self.pids.add(pid)
            if _comm(pid) != "java":
                continue
            hwm = _status_kb(pid, "VmHWM").get("VmHWM", 0)
            self.jvm_hwm = max(self.jvm_hwm, hwm * 1024)
            for worker in descendants(pid, tree):  # the pyspark daemon and its forked workers
                self.pids.add(worker)
                status = _status_kb(worker, "VmRSS", "VmHWM")
                rss += status.get("VmRSS", 0)
                self.worker_hwm = max(self.worker_hwm, status.get("VmHWM", 0) * 1024)  # one process's peak
                pss += _pss_kb(worker)
        self.workers_rss = max(self.workers_rss, rss * 1024)
        self.workers_pss = max(self.workers_pss, pss * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)
        self._poll()
