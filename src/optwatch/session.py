"""A viewer's connection to one job: the feed, the store, the record file and the script's output.

The headless viewer calls ``pump`` in its loop; the dashboard calls it from a worker thread.
"""

from __future__ import annotations

import collections
import gc
import time
from dataclasses import dataclass, field
from typing import Any

from optwatch import protocol
from optwatch.store import RecordWriter, Store
from optwatch.supervisor import LogTail, TrainingProcess
from optwatch.wire.subscriber import Feed, RequestError


@dataclass
class Output:
    """What the script printed since the last pump, per stream, as raw bytes."""

    chunks: list[tuple[str, bytes]] = field(default_factory=list)


# A viewer keeps tens of thousands of small records alive for minutes and allocates thousands more a
# second: with Python's default thresholds (700, 10, 10) the collector rescans them all several times
# a second, about a sixth of the dashboard's CPU under a fast job. Records hold no reference cycles;
# reference counting frees them, so the cycle collector can run far less often.
VIEWER_GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc_for_a_viewer() -> None:
    if gc.get_threshold()[0] < VIEWER_GC_THRESHOLDS[0]:
        gc.set_threshold(*VIEWER_GC_THRESHOLDS)


class ViewerSession:
    def __init__(
        self,
        feed: Feed,
        store: Store | None = None,
        writer: RecordWriter | None = None,
        process: TrainingProcess | None = None,
        tails: list[LogTail] | None = None,
    ):
        tune_gc_for_a_viewer()
        self.feed = feed
        self.store = store or Store()
        self.writer = writer
        self.process = process
        self.tails = tails if tails is not None else (process.tails if process else [])
        self._partial: dict[str, bytes] = {}
        self._exit_seen_at: float | None = None
        # Commands go through the thread that owns the sockets (ZeroMQ sockets are single-threaded).
        self._outbox: collections.deque[str] = collections.deque(maxlen=64)
        self.answers: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=64)
        self._recording_failure_told = False

    def send_command(self, text: str) -> None:
        """Queue a control command (any thread); its answer appears in ``answers`` after a pump."""
        self._outbox.append(text)

    def _send_queued_commands(self) -> None:
        while self._outbox:
            text = self._outbox.popleft()
            try:
                reply = self.feed.request("control", command=text, source="dashboard")
            except RequestError as exc:
                reply = {"ok": False, "error": str(exc)}
            self.answers.append((text, reply))

    @classmethod
    def for_process(cls, process: TrainingProcess, writer: RecordWriter | None = None) -> ViewerSession:
        return cls(Feed(process.pub_endpoint, process.ctl_endpoint), writer=writer, process=process)

    def pump(self, timeout_s: float = 0.1) -> tuple[list[dict[str, Any]], Output]:
        self._send_queued_commands()
        records = self.feed.poll(timeout_s)
        output = Output()
        for tail in self.tails:
            data = tail.read()
            if data:
                output.chunks.append((tail.stream, data))
                records.extend(self._log_records(tail.stream, data))
        if records:
            self.store.ingest(records)
            if self.writer is not None:
                self.writer.write(records)
        return records, output

    def _log_records(self, stream: str, data: bytes) -> list[dict[str, Any]]:
        text = self._partial.pop(stream, b"") + data
        *lines, rest = text.split(b"\n")
        if rest:
            self._partial[stream] = rest
        return [
            protocol.make_record(protocol.LOG, -1, stream=stream, line=line.decode("utf-8", "replace").rstrip("\r"))
            for line in lines
        ]

    def flush_partial_lines(self) -> None:
        records = [
            protocol.make_record(protocol.LOG, -1, stream=stream, line=rest.decode("utf-8", "replace"))
            for stream, rest in self._partial.items()
        ]
        self._partial.clear()
        if records:
            self.store.ingest(records)
            if self.writer is not None:
                self.writer.write(records)

    def recording_stopped(self) -> str | None:
        """Why the record file stopped, the first time this is asked after it did (the viewer says so once);
        None otherwise. The run and the viewer go on either way."""
        if self.writer is None or self.writer.failure is None or self._recording_failure_told:
            return None
        self._recording_failure_told = True
        return self.writer.failure

    def done(self, linger_s: float = 3.0) -> bool:
        """The process exited and everything it published has arrived (or ``linger_s`` passed)."""
        if self.process is None or self.process.poll() is None:
            return False
        if self._exit_seen_at is None:
            self._exit_seen_at = time.monotonic()
        return self.store.finished() or time.monotonic() - self._exit_seen_at > linger_s

    def close(self) -> None:
        self.flush_partial_lines()
        self.feed.close()
        if self.writer is not None:
            self.writer.close()
