"""Runs that take turns on the machine, so that each sees the same machine: time-sliced A/B.

This VM's speed moves by up to 1.8x between half-second windows (another tenant's load), so two runs one
after the other see different machines, and their ratio moves by ±25% (2026-12-05). Here the runs of one
round start together, wait at a barrier until all are ready to train (imports, model, `optwatch run`'s
start-up), and then take turns: one runs for a slice (a few of its iterations) while the others are stopped
(SIGSTOP to each of its processes: the training process with optwatch's threads, `optwatch run`, the hub,
DataLoader workers), so every configuration's iterations sample the same moments' machine.

The loop's side (``wait_for_turns``) is one call before its first timed iteration; it records each
iteration's end on the system's monotonic clock, and the harness keeps only the iterations that ran whole
inside one slice (none that a stop cut through) and that ended while every run of the round was still
training (after the first run ends, the rest would run on a quieter machine).

A stopped process's threads stop too, so optwatch's background work is done in its own run's slices, and its
cost to the training (the GIL its threads hold) lands in its own iterations; its hub, stopped and continued
with it, runs beside its own run's training only, on the other core, as it does in a run of its own.
"""

from __future__ import annotations

import json
import os
import random
import runpy
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_ENV = "BENCH_READY_FILE"
GO_ENV = "BENCH_GO_FILE"


def wait_for_turns() -> None:
    """In the loop, before its first timed iteration: say it is ready and wait for the harness's go (a
    no-op when the loop runs on its own)."""
    ready, go = os.environ.get(READY_ENV), os.environ.get(GO_ENV)
    if not ready or not go:
        return
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.005)


class LoopTimes:
    """A benchmark loop's own clock: each iteration's wall time, the process's and the training thread's CPU
    time over it (the thread's alone: without optwatch's threads), and its end on the monotonic clock the
    harness's slices are timed on; printed as one ``LOOP_TIMES {json}`` line (``wall_clock.py`` reads it),
    with each of the process's threads' CPU time over the timed iterations (``threads_cpu_s``: optwatch's
    threads by their names, the training thread as ``MainThread``, threads of C libraries by the system's).
    ``start`` waits for the harness's go (``wait_for_turns``); ``lap`` ends an iteration; ``go`` starts the
    next (what the loop does between the two is no iteration's)."""

    def __init__(self) -> None:
        self.wall_s: list[float] = []
        self.cpu_s: list[float] = []
        self.thread_s: list[float] = []
        self.end_s: list[float] = []
        self._began = (0.0, 0.0, 0.0)
        self._threads_before: dict[str, float] = {}

    def start(self) -> None:
        wait_for_turns()
        self._threads_before = threads_cpu_s()
        self.go()

    def go(self) -> None:
        self._began = (time.perf_counter(), time.process_time(), time.thread_time())

    def lap(self) -> float:
        """End the iteration now; its wall time."""
        wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        self.wall_s.append(wall - self._began[0])
        self.cpu_s.append(cpu - self._began[1])
        self.thread_s.append(thread - self._began[2])
        self.end_s.append(time.monotonic())
        return self.wall_s[-1]

    def print(self) -> None:
        times = {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "thread_s": self.thread_s, "end_s": self.end_s}
        before = self._threads_before
        times["threads_cpu_s"] = {name: s - before.get(name, 0.0) for name, s in threads_cpu_s().items()}
        print("LOOP_TIMES " + json.dumps(times), flush=True)


@dataclass
class Turns:
    """One run: its process, output, and the times its slices began and ended (``time.monotonic``)."""

    ready_file: Path
    output: Path
    process: subprocess.Popen | None = None
    slices: list[tuple[float, float]] = field(default_factory=list)
    rusage: Any = None


def _children(pids: set[int]) -> set[int]:
    """Every live descendant of ``pids``, from /proc."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            parent_of[int(entry)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def run_in_turns(commands: list[list[str]], env: dict, workdir: Path, slice_s: float) -> list[Turns]:
    """Start ``commands`` together, wait until each is ready to train, then give each the machine for
    ``slice_s`` in turn until all have ended. Each run's output is in its ``output`` file; ``rusage`` is
    what the kernel counted for it and the children it reaped."""
    go = workdir / f"go-{time.monotonic_ns()}"
    runs: list[Turns] = []
    for index, argv in enumerate(commands):
        stamp = f"{index}-{time.monotonic_ns()}"
        run = Turns(workdir / f"ready-{stamp}", workdir / f"out-{stamp}")
        with run.output.open("w") as out:  # a file, not a pipe: a stopped reader must never block a run
            run.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.DEVNULL,
                env={**env, READY_ENV: str(run.ready_file), GO_ENV: str(go)},
                start_new_session=True,
            )
        runs.append(run)
    deadline = time.monotonic() + 600
    while not all(run.ready_file.exists() for run in runs):
        if time.monotonic() > deadline or any(run.process.poll() is not None for run in runs):
            for run in runs:
                run.process.kill()
            raise RuntimeError("a run ended or hung before it was ready to train")
        time.sleep(0.01)
    trees = {index: _tree(run) for index, run in enumerate(runs)}
    for tree in trees.values():
        _signal(tree, signal.SIGSTOP)
    go.touch()
    live = list(range(len(runs)))
    order = random.Random(0)
    while live:
        trees = {index: _tree(runs[index]) for index in live}  # processes come and go: workers, a hub
        # A new order each turn: whatever a run leaves behind (dirty caches, a hub's backlog) falls on a
        # different run each time (a fixed or rotated order would always hand it to the same next one).
        for index in order.sample(live, len(live)):
            run = runs[index]
            began = time.monotonic()
            _signal(trees[index], signal.SIGCONT)
            time.sleep(slice_s)
            ended = time.monotonic()
            run.slices.append((began, ended))
            pid, status, usage = os.wait4(run.process.pid, os.WNOHANG)
            if pid:
                run.rusage = usage
                run.process.returncode = os.waitstatus_to_exitcode(status)
                _signal(trees[index] - {pid}, signal.SIGCONT)  # what it left behind ends on its own
                live.remove(index)
            else:
                _signal(trees[index], signal.SIGSTOP)
    return runs


def _tree(run: Turns) -> set[int]:
    return {run.process.pid} | _children({run.process.pid})


def whole_iterations(
    ends: list[float], walls: list[float], slices: list[tuple[float, float]], until: float
) -> dict[int, int]:
    """The iterations measured, each with the number of the slice it ran in: those that ran inside one slice
    (began after its SIGCONT was sent, ended before its SIGSTOP was) and ended by ``until``, less the first
    of each slice, which runs 15-20% slower on caches the other runs have just used (60 ms slices, LLM loop,
    2026-12-05)."""
    kept: dict[int, int] = {}
    cursor, settled = 0, -1
    for index, (end, wall) in enumerate(zip(ends, walls)):
        if end > until:
            break
        while cursor < len(slices) and slices[cursor][1] < end:
            cursor += 1
        if cursor < len(slices) and slices[cursor][0] <= end - wall:
            if settled == cursor:
                kept[index] = cursor
            settled = cursor
    return kept


def run_script_as_main(usage: str) -> None:
    """Run ``sys.argv[1:]`` (SCRIPT [ARGS...]) as ``python SCRIPT ARGS`` runs it: the wrappers that
    ``wall_clock.py`` puts around a loop (``null_hooks.py``, ``ballast.py``) call this once set up."""
    if len(sys.argv) < 2:
        sys.exit(f"usage: {usage}")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


def threads_cpu_s() -> dict[str, float]:
    """The CPU time of each of this process's threads so far, by name: Python's name for a Python thread,
    the system's (``/proc``) for one a C library started (ZeroMQ's I/O thread); threads of one name summed.
    Read from each thread's CPU clock (Linux: the clock id of a thread id), at nanosecond resolution."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    seconds: dict[str, float] = {}
    try:
        tids = [int(entry) for entry in os.listdir("/proc/self/task")]
    except OSError:
        return seconds
    for tid in tids:
        try:
            cpu = time.clock_gettime((~tid << 3) | 6)  # the kernel's per-thread CPU clock (CPUCLOCK_SCHED)
            name = names.get(tid) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        seconds[name] = seconds.get(name, 0.0) + cpu
    return seconds
