"""What a job remembers for viewers that attach later: bounded, per rank and per kind, served in pages.

The newest of each bounded kind is kept; rare records (alerts, events) keep the first of each kind as
well as the newest, so the alert that started a run's trouble is never evicted by its repeats. A
history request is answered from a snapshot encoded at most once a second, cut into pages of at most
``PAGE_BYTES``: however often and however many viewers ask, the hub encodes the history once a second
and never holds more than one copy of it.
"""

from __future__ import annotations

import collections
import itertools
import time
from typing import Any

from optwatch import protocol
from optwatch.runhistory import RunHistory

RARE_HISTORY = 500
STEP_HISTORY = 4000
LOG_HISTORY = 500
LOG_HISTORY_CHARS = 4 * 1024 * 1024
"""The lines of output kept are fewer where they are long (one may be 64 KiB: ``hub.output_lines``)."""
LAYERS_HISTORY = 200
PAGE_BYTES = 2 * 1024 * 1024
SNAPSHOT_MAX_AGE_S = 1.0


class History:
    def __init__(self, steps: int = STEP_HISTORY, rare: int = RARE_HISTORY, logs: int = LOG_HISTORY):
        self.hello: dict[int, dict[str, Any]] = {}
        self.end: dict[int, dict[str, Any]] = {}
        self._step_capacity = steps
        self.steps_by_rank: dict[int, collections.deque[dict[str, Any]]] = {}
        # Per-layer records are large: a viewer that attaches needs the recent picture, not all of it.
        self.layers_by_rank: dict[int, collections.deque[dict[str, Any]]] = {}
        self.logs: collections.deque[dict[str, Any]] = collections.deque(maxlen=logs)
        self._log_chars = 0
        """The characters of the lines in ``logs``: at most ``LOG_HISTORY_CHARS`` but for the newest line."""
        self.rare: collections.deque[dict[str, Any]] = collections.deque(maxlen=rare)
        self.first_rare: dict[tuple[str, Any, int], dict[str, Any]] = {}
        """The first record of each rare kind (and alert type) per rank: kept whatever follows."""
        self.latest: dict[tuple[str, int], dict[str, Any]] = {}
        self.whole: dict[int, RunHistory] = {}
        """Each rank's whole run, downsampled: sent as a ``history`` record so a late viewer sees its shape."""
        self._snapshot: tuple[float, list[bytes]] | None = None

    def add(self, record: dict[str, Any]) -> None:
        kind = record["kind"]
        rank = record.get("rank", 0)
        if kind == protocol.HELLO:
            self.hello[rank] = record
            self.end.pop(rank, None)  # a rank that says hello again was restarted (elastic): not ended
        elif kind == protocol.END:
            self.end[rank] = record
        elif kind == protocol.STEP:
            ring = self.steps_by_rank.get(rank)
            if ring is None:
                ring = self.steps_by_rank[rank] = collections.deque(maxlen=self._step_capacity)
            ring.append(record)
            self._whole(rank).add_step(record)
        elif kind == protocol.LAYERS:
            ring = self.layers_by_rank.get(rank)
            if ring is None:
                ring = self.layers_by_rank[rank] = collections.deque(maxlen=LAYERS_HISTORY)
            ring.append(record)
        elif kind == protocol.LOG:
            self._add_log(record)
        elif kind in (protocol.SYSTEM, protocol.HOTSPOTS, protocol.VERDICT, protocol.HUB, protocol.WAITING):
            if kind == protocol.SYSTEM:
                self._whole(rank).add_system(record)
            # Only the newest matters to a viewer that attaches; older ones are in the record file.
            self.latest[(kind, rank)] = record
        else:
            self.rare.append(record)
            self.first_rare.setdefault((kind, record.get("type"), rank), record)

    def _add_log(self, record: dict[str, Any]) -> None:
        if len(self.logs) == self.logs.maxlen:
            self._log_chars -= _chars(self.logs.popleft())
        self.logs.append(record)
        self._log_chars += _chars(record)
        while self._log_chars > LOG_HISTORY_CHARS and len(self.logs) > 1:
            self._log_chars -= _chars(self.logs.popleft())

    def _whole(self, rank: int) -> RunHistory:
        whole = self.whole.get(rank)
        if whole is None:
            whole = self.whole[rank] = RunHistory()
        return whole

    def steps(self, last: int | None = None) -> dict[int, list[dict[str, Any]]]:
        """Recent step records per rank, oldest first: the ``last`` newest of each (all it keeps by default)."""
        if last is None:
            return {rank: list(ring) for rank, ring in self.steps_by_rank.items()}
        return {rank: list(itertools.islice(reversed(ring), last))[::-1] for rank, ring in self.steps_by_rank.items()}

    def records(self) -> list[dict[str, Any]]:
        """Everything kept, each record once, in each sender's order."""
        rare = {id(record): record for record in (*self.first_rare.values(), *self.rare)}
        records = [*self.hello.values(), *rare.values(), *self.logs, *self.latest.values()]
        records += [record for ring in self.steps_by_rank.values() for record in ring]
        records += [record for ring in self.layers_by_rank.values() for record in ring]
        records += self.end.values()
        # Before the recent steps of its rank: a viewer adopts the whole run, then adds the steps after it.
        records += [
            protocol.make_record(protocol.HISTORY, rank, seq=-1, **whole.to_record())
            for rank, whole in self.whole.items()
            if whole.last_step >= 0
        ]
        return sorted(records, key=lambda r: (r.get("origin", r.get("rank", 0)), r.get("seq", 0)))

    def pages(self, now: float | None = None) -> list[bytes]:
        """The history as encoded pages (each a ``records`` list as the wire carries it), made again at most
        once every ``SNAPSHOT_MAX_AGE_S``."""
        now = time.monotonic() if now is None else now
        if self._snapshot is not None and now - self._snapshot[0] < SNAPSHOT_MAX_AGE_S:
            return self._snapshot[1]
        pages: list[bytes] = []
        page: list[bytes] = []
        size = 0
        for record in self.records():
            encoded = protocol.encode_record(record)  # each record encoded once, pages joined from them
            if page and size + len(encoded) > PAGE_BYTES:
                pages.append(protocol.join_batch(page))
                page, size = [], 0
            page.append(encoded)
            size += len(encoded)
        pages.append(protocol.join_batch(page))
        self._snapshot = (now, pages)
        return pages


def _chars(record: dict[str, Any]) -> int:
    return len(record.get("line") or "")
