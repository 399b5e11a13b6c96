"""The viewer's memory of a run: bounded ring buffers per rank and per kind, plus record files.

No torch and no textual: the headless viewer, the dashboard and the tests all read this.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optwatch import protocol
from optwatch.protocol import finite
from optwatch.runhistory import RunHistory
from optwatch.summary import CostTotals, RunSummary, Waiting, remember_metrics, summarise

STEP_CAPACITY = 5000
LOG_CAPACITY = 2000
RARE_CAPACITY = 500
SYSTEM_CAPACITY = 600
EMA_ALPHA = 0.1
HUB_SILENT_S = 12.0
"""The hub sends its own figures every 5 s: this long without them, a live viewer says the hub is not answering."""


def newest_with(steps: Sequence[dict[str, Any]] | collections.deque[dict[str, Any]], key: str, count: int) -> list:
    """The newest ``count`` of ``steps`` with a finite ``key``, oldest first: when optwatch spaces its detail
    steps out, the timed ones among the last few hundred steps are a handful, so this reaches further back."""
    found = []
    for step in reversed(steps):
        if finite(step.get(key)):
            found.append(step)
            if len(found) == count:
                break
    found.reverse()
    return found


@dataclass
class RankState:
    """What one rank has told us, newest last."""

    rank: int
    hello: dict[str, Any] = field(default_factory=dict)
    steps: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=STEP_CAPACITY))
    loss_ema: collections.deque[float | None] = field(default_factory=lambda: collections.deque(maxlen=STEP_CAPACITY))
    system: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=SYSTEM_CAPACITY))
    end: dict[str, Any] | None = None
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The newest record of each other kind from this rank (layers, hotspots, verdict...)."""
    cost: CostTotals = field(default_factory=CostTotals)
    whole: RunHistory = field(default_factory=RunHistory)
    """The whole run, downsampled (``optwatch.runhistory``): what the charts show zoomed out."""
    waiting: tuple[dict[str, Any], float] | None = None
    """The newest ``waiting`` record (no step for a while: where the training is), and when it came in (this
    process's clock)."""
    _ema: float | None = None

    @property
    def last_step(self) -> dict[str, Any] | None:
        return self.steps[-1] if self.steps else None

    @property
    def last_system(self) -> dict[str, Any] | None:
        return self.system[-1] if self.system else None

    def add_step(self, record: dict[str, Any]) -> None:
        loss = record.get("loss")
        if finite(loss):
            self._ema = loss if self._ema is None else self._ema + EMA_ALPHA * (loss - self._ema)
        self.steps.append(record)
        self.loss_ema.append(self._ema)
        self.cost.add(record)
        self.whole.add_step(record)


class Store:
    """Thread-safe: a feed thread ingests while the UI thread reads under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.ranks: dict[int, RankState] = {}
        self.logs: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_CAPACITY)
        self.rare: dict[str, collections.deque[dict[str, Any]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=RARE_CAPACITY)
        )
        self.latest: dict[str, dict[str, Any]] = {}
        self.metrics: dict[str, tuple[Any, Any]] = {}
        """Each metric name's latest (value, step), whichever record brought it."""
        self.hub_figures: collections.deque[dict[str, Any]] = collections.deque(maxlen=2)
        """The hub's two newest ``hub`` records (its CPU time between them is its load)."""
        self.hub_heard_at: float | None = None
        """When the hub's own figures last came in (this process's clock)."""
        self.hub_gone_since: float | None = None
        """When the viewer's connection to the hub dropped (the feed sees it at once); None while it is up."""
        self.version = 0
        self.records_seen = 0
        self.logs_total = 0
        # Loss over ranks per step, kept as records arrive: [sum, count, min, max], oldest steps evicted.
        self._loss_by_step: collections.OrderedDict[int, list[float]] = collections.OrderedDict()

    def rank(self, rank: int) -> RankState:
        state = self.ranks.get(rank)
        if state is None:
            state = self.ranks[rank] = RankState(rank)
        return state

    def ingest(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        with self.lock:
            for record in records:
                self._ingest_one(record)
            self.records_seen += len(records)
            self.version += 1

    def _ingest_one(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        rank = record.get("rank", 0)
        if kind == protocol.STEP:
            self.rank(rank).add_step(record)
            self._add_loss(record.get("step"), record.get("loss"))
        elif kind == protocol.SYSTEM:
            state = self.rank(rank)
            state.system.append(record)
            state.whole.add_system(record)
        elif kind == protocol.HISTORY:
            state = self.rank(rank)
            state.whole.adopt(record, state.steps, state.system)
        elif kind == protocol.LOG:
            self.logs.append(record)
            self.logs_total += 1
        elif kind == protocol.HELLO:
            state = self.rank(rank)
            state.hello = record
            state.cost.first_step = protocol.first_step(record)
        elif kind == protocol.END:
            self.rank(rank).end = record
        elif kind == protocol.HUB:
            self.hub_figures.append(record)
            self.hub_heard_at = time.monotonic()
        elif kind == protocol.WAITING:
            self.rank(rank).waiting = (record, time.monotonic())
        else:
            if kind == "metric":
                remember_metrics(self.metrics, record)
            self.rare[str(kind)].append(record)
            self.latest[str(kind)] = record
            if rank >= 0:
                self.rank(rank).latest[str(kind)] = record

    # --- questions the views ask ------------------------------------------------------------------
    @property
    def primary(self) -> RankState | None:
        if not self.ranks:
            return None
        return self.ranks.get(0) or self.ranks[min(self.ranks)]

    def new_logs(self, seen: int) -> tuple[list[dict[str, Any]], int]:
        """Log records after the first ``seen`` ever ingested (as many as the ring still holds)."""
        with self.lock:
            fresh = min(self.logs_total - seen, len(self.logs))
            return (list(self.logs)[len(self.logs) - fresh :] if fresh > 0 else []), self.logs_total

    def _add_loss(self, step: Any, loss: Any) -> None:
        if not isinstance(step, int) or not finite(loss):
            return
        entry = self._loss_by_step.get(step)
        if entry is None:
            self._loss_by_step[step] = [loss, 1, loss, loss]
            if len(self._loss_by_step) > STEP_CAPACITY:
                self._loss_by_step.popitem(last=False)  # the first step to arrive
        else:
            entry[0] += loss
            entry[1] += 1
            entry[2] = min(entry[2], loss)
            entry[3] = max(entry[3], loss)

    def loss_across_ranks(self, limit: int = 2000) -> tuple[list[int], list[float], list[float], list[float]]:
        """Per step: (steps, mean, min, max) of the loss over the ranks that reported that step."""
        with self.lock:
            steps = sorted(self._loss_by_step)[-limit:]
            entries = [self._loss_by_step[s] for s in steps]
        return (
            steps,
            [entry[0] / entry[1] for entry in entries],
            [entry[2] for entry in entries],
            [entry[3] for entry in entries],
        )

    def summary(self) -> RunSummary | None:
        """The run's figures as every view shows them (``optwatch.summary``): the primary rank's."""
        with self.lock:
            state = self.primary
            if state is None or not state.steps:
                return None
            # Enough steps for the recent window and for the last measured gradient norm (measured on detail
            # steps only, at most 128 steps apart), without copying the whole buffer at every redraw.
            steps = list(itertools.islice(reversed(state.steps), 200))[::-1]
            return summarise(
                steps,
                state.loss_ema[-1] if state.loss_ema else None,
                state.cost,
                ranks=len(self.ranks),
                hub_cpu_share=self._hub_cpu_share(),
            )

    def _hub_cpu_share(self) -> float | None:
        if len(self.hub_figures) < 2:
            return None
        before, after = self.hub_figures
        elapsed = after.get("time", 0.0) - before.get("time", 0.0)
        cpu = after.get("cpu_s"), before.get("cpu_s")
        if elapsed <= 0 or not all(finite(value) for value in cpu):
            return None
        return (cpu[0] - cpu[1]) / elapsed

    def hub_silence(self, now: float | None = None) -> float | None:
        """Seconds the hub has been gone (its connection dropped) or silent (past ``HUB_SILENT_S`` without its
        figures), on a live run that has not ended; else None. Its ranks train on meanwhile: the hub is a
        process of its own, and rank 0 starts a new one."""
        if self.finished():
            return None
        now = time.monotonic() if now is None else now
        if self.hub_gone_since is not None:
            return now - self.hub_gone_since
        if self.hub_heard_at is None:
            return None
        silent = now - self.hub_heard_at
        return silent if silent > HUB_SILENT_S else None

    def waiting(self, rank: int | None = None, now: float | None = None) -> Waiting | None:
        """Where the primary rank (or ``rank``) is while no step ends, with the seconds it has waited by ``now``;
        None while it steps, once it ended, or when it never said."""
        with self.lock:
            state = self.primary if rank is None else self.ranks.get(rank)
            if state is None or state.end is not None or state.waiting is None:
                return None
            record, heard_at = state.waiting
            last = state.last_step
            if last is not None and last["step"] >= record["step"]:
                return None  # a step has ended since
            now = time.monotonic() if now is None else now
            first = record.get("first")
            waited_s = record["waited_s"] + max(0.0, now - heard_at)
            return Waiting(record, waited_s, first_step=last is None if first is None else first)

    def waiting_ranks(self, now: float | None = None) -> dict[int, Waiting]:
        """``waiting`` of each rank that waits, by rank."""
        with self.lock:
            found = {rank: self.waiting(rank, now) for rank in self.ranks}
        return {rank: waiting for rank, waiting in found.items() if waiting is not None}

    def finished(self) -> bool:
        return bool(self.ranks) and all(state.end is not None for state in self.ranks.values())


class RecordWriter:
    """Appends records as JSON lines to a file only the user can read.

    Recording never stops the viewer, let alone the run: the first write that fails (a full disk, an I/O
    error) ends the recording, cut back to its last whole record, and ``failure`` says why.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise FileNotFoundError(errno.ENOENT, f"directory {self.path.parent} does not exist")
        try:
            # Not truncated yet: a file we may not make private is refused untouched.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP and self.path.is_symlink():
                raise OSError(
                    errno.ELOOP, f"it is a symbolic link (to {os.readlink(self.path)}); give the file itself"
                ) from None
            raise
        try:
            # A file that was there keeps its mode through O_CREAT: close it to others. A FIFO or a device
            # (/dev/null) is the user's own plumbing and stays as it is.
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):
                if info.st_uid != os.getuid():
                    raise PermissionError(errno.EPERM, f"it belongs to uid {info.st_uid}; give a file of your own")
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, 0)
        except OSError:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._size = 0
        self.written = 0
        self.failure: str | None = None
        """Why recording stopped, in a line for the user (``recording to PATH stopped: ...``); None while it goes on."""

    def write(self, records: list[dict[str, Any]]) -> None:
        if self._fd is None:
            return
        try:
            data = "".join(protocol.record_to_json_line(record) for record in records).encode()
        except (ValueError, TypeError, RecursionError) as exc:  # a record JSON cannot hold
            self._stop(str(exc))
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:  # a full disk: the records that went out whole stay (a batch can be large)
            whole = data.rfind(b"\n", 0, len(data) - len(view)) + 1
            self._size += whole
            self.written += data.count(b"\n", 0, whole)
            self._stop(exc.strerror or str(exc))
            return
        self._size += len(data)
        self.written += len(records)

    def _stop(self, reason: str) -> None:
        assert self._fd is not None
        with contextlib.suppress(OSError):  # a pipe or a device has no length
            os.ftruncate(self._fd, self._size)  # no half line at the end: the file replays up to here
        self.close()
        self.failure = f"recording to {self.path} stopped: {reason}; the run goes on"

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):  # the viewer is leaving: nothing to stop, nobody to tell
                os.close(fd)


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records from a JSONL file written by ``--record``; a bad line raises ProtocolError naming it."""
    with open(path, "rb") as handle:
        yield from protocol.read_record_file(handle, source=str(path))
