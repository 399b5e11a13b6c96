"""The host through psutil: the training process, its DataLoader workers, the machine's CPU and RAM.

CPU percentages are measured between two calls (psutil's ``cpu_percent(None)``), so the collector
keeps its process objects from one sample to the next; a worker's first sample has no CPU figure yet.
Torch-free.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import psutil

# Child processes that are not DataLoader workers (torch.compile's compile pool, multiprocessing's helpers,
# optwatch's own profiler-trace summary, which ran at 98% CPU as "1 worker" of a loop without workers).
_NOT_WORKERS = (
    "compile_worker",
    "multiprocessing.resource_tracker",
    "multiprocessing.forkserver",
    "optwatch.probe.traces",
)


class HostCollector:
    """Samples one process (the training process by default) and its worker children."""

    def __init__(self, pid: int | None = None) -> None:
        self._process = psutil.Process(pid if pid is not None else os.getpid())
        self._workers: dict[int, psutil.Process] = {}
        self._ignored: set[int] = set()
        self._held: dict[int, psutil.Process] = {}
        """Children first seen with the training process's own command line: a fork that has not yet run its
        ``exec`` reads as its parent (multiprocessing starting its forkserver read as "1 worker"), so they are
        told apart at their next sample."""
        self._process.cpu_percent(None)
        self._run_waits: dict[int, tuple[float, int]] = {}
        """Per native thread id: (when, the nanoseconds it had waited for a core) at the last sample."""
        self._host_thread: int | None = None
        """The thread the machine's CPU is measured from: psutil keeps ``cpu_percent(None)``'s last
        reading per thread, so a first call on another thread reads 0.0 (the sampler's first sample read an
        idle machine, and a starved process on a busy one read as a loop that waits)."""

    def sample(self, worker_pids: list[int] | None = None, thread: int | None = None) -> dict[str, Any]:
        """``worker_pids``: the DataLoader's worker processes where the caller knows them (else the children
        that are not multiprocessing's helpers). ``thread``: the native id of the thread whose wait for a
        core is measured (``run_wait_percent``; the process's main thread without it)."""
        with self._process.oneshot():
            cpu_percent = self._process.cpu_percent(None)
            rss = self._process.memory_info().rss
            threads = self._process.num_threads()
        memory = psutil.virtual_memory()
        host_cpu_percent: float | None = psutil.cpu_percent(None)
        if self._host_thread != threading.get_ident():
            self._host_thread = threading.get_ident()
            host_cpu_percent = None  # (this thread's first reading starts its measurement)
        return {
            "cpu_percent": cpu_percent,
            "rss_bytes": rss,
            "threads": threads,
            "host_cpu_percent": host_cpu_percent,
            "run_wait_percent": self._run_wait_percent(thread),
            "cpu_count": self._usable_cpus(),
            "load_avg": list(os.getloadavg()),
            "host_mem_used_bytes": memory.total - memory.available,
            "host_mem_total_bytes": memory.total,
            "workers": self._sample_workers(worker_pids),
        }

    def _run_wait_percent(self, thread: int | None) -> float | None:
        """How much of the time since the last sample ``thread`` was ready to run but waited for a core (the
        kernel's run-queue delay, Linux's schedstat), in percent; None on a first sample or without schedstat.
        What tells a process starved by others on a busy machine from one that sleeps or blocks (in an
        all-reduce, on a full pipe): both use little CPU there."""
        tid = thread if thread is not None else self._process.pid
        try:
            with open(f"/proc/{self._process.pid}/task/{tid}/schedstat", "rb") as handle:
                waited_ns = int(handle.read().split()[1])
        except (OSError, ValueError, IndexError):
            return None
        now = time.monotonic()
        before = self._run_waits.get(tid)
        if len(self._run_waits) > 64:
            self._run_waits.clear()  # (threads come and go; a few are sampled)
        self._run_waits[tid] = (now, waited_ns)
        if before is None or now <= before[0]:
            return None
        return round(100.0 * (waited_ns - before[1]) / 1e9 / (now - before[0]), 1)

    def _usable_cpus(self) -> int | None:
        try:
            return len(self._process.cpu_affinity())  # what a cpuset or taskset leaves us
        except (AttributeError, psutil.Error):
            return psutil.cpu_count()

    def _processes(self, pids: Iterable[int]) -> list[psutil.Process]:
        """``pids``' processes, those already sampled as they were (their CPU measurement goes on)."""
        processes = []
        for pid in pids:
            known = self._workers.get(pid) or self._held.get(pid)
            try:
                processes.append(known if known is not None else psutil.Process(pid))
            except psutil.Error:
                continue  # exited since
        return processes

    def _command(self) -> list[str]:
        try:
            return self._process.cmdline()
        except psutil.Error:
            return []

    def _children(self) -> list[psutil.Process]:
        """The process's children, from the kernel's list of them where it keeps one (Linux).

        psutil finds children by reading every process's /proc entry: ~2 ms a sample here, and tens of
        milliseconds on a server running thousands of processes, twice a second in the training process.
        """
        pids: set[int] = set()
        try:
            for task in os.scandir(f"/proc/{self._process.pid}/task"):
                with open(f"{task.path}/children") as listing:
                    pids.update(int(pid) for pid in listing.read().split())
        except (OSError, ValueError):  # not Linux, or a kernel without the list
            return self._process.children(recursive=False)
        return self._processes(pids)

    def _sample_workers(self, worker_pids: list[int] | None = None) -> list[dict[str, Any]]:
        try:
            children = self._children() if worker_pids is None else self._processes(worker_pids)
        except psutil.Error:
            return []
        alive = {child.pid for child in children}
        for pid in [pid for pid in self._workers if pid not in alive]:
            del self._workers[pid]
        self._ignored &= alive
        for pid in [pid for pid in self._held if pid not in alive]:
            del self._held[pid]
        workers = []
        for child in children:
            if child.pid in self._ignored:
                continue
            known = self._workers.get(child.pid)
            try:
                if known is not None:
                    cpu_percent = known.cpu_percent(None)
                else:
                    # (Workers a forkserver made run its command line: the DataLoader's own are workers.)
                    command = child.cmdline()
                    if worker_pids is None and any(marker in " ".join(command) for marker in _NOT_WORKERS):
                        self._ignored.add(child.pid)
                        self._held.pop(child.pid, None)
                        continue
                    held = self._held.pop(child.pid, None)
                    if held is None and worker_pids is None and command == self._command():
                        self._held[child.pid] = child
                        child.cpu_percent(None)  # (a fork-context worker has its figure at its next sample)
                        continue
                    self._workers[child.pid] = child
                    figure = child.cpu_percent(None)  # (a new child's measurement starts here: a figure next time)
                    cpu_percent = figure if held is not None else None
                rss = child.memory_info().rss
            except psutil.Error:  # it exited between the listing and the question
                self._workers.pop(child.pid, None)
                self._held.pop(child.pid, None)
                continue
            workers.append({"pid": child.pid, "cpu_percent": cpu_percent, "rss_bytes": rss})
        return workers
