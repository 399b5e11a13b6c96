"""A viewer's connection to one job: the feed, the store, the record file and the script's output.

The headless viewer calls ``pump`` in its loop; the dashboard calls it from a worker thread. The script's
output reaches the store as ``log`` records from the hub; a headless ``optwatch run`` also passes the raw
bytes through from the log files (``tails``), byte for byte: with several ranks, whole lines at a time.
"""

from __future__ import annotations

import collections
import gc
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from optwatch import protocol
from optwatch.store import RecordWriter, Store
from optwatch.supervisor import TrainingProcess
from optwatch.wire import runtime
from optwatch.wire.logs import MAX_LOG_BYTES, LogTail
from optwatch.wire.subscriber import HUB_ANSWER_S, Feed, NoAnswer, RequestError


@dataclass
class Output:
    """What the script printed since the last pump, per stream, as raw bytes."""

    chunks: list[tuple[str, bytes]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    """What optwatch has to say about the output itself: a stretch of it gone before it could be passed on."""


# A viewer keeps tens of thousands of small records alive for minutes and allocates thousands more a
# second: with Python's default thresholds (700, 10, 10) the collector rescans them all several times
# a second, about a sixth of the dashboard's CPU under a fast job. Records hold no reference cycles;
# reference counting frees them, so the cycle collector can run far less often.
VIEWER_GC_THRESHOLDS = (50_000, 20, 20)

PARTIAL_LINE_WAIT_S = 1.0
"""With several ranks' output on one terminal, how long a rank's unfinished line waits for its end before it
goes out as it is (a progress bar redrawn with carriage returns never ends its line)."""
PARTIAL_LINE_MAX = 64 * 1024


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
        output_captured: bool | None = None,
    ):
        tune_gc_for_a_viewer()
        self.output_captured = output_captured
        """Whether the job's hub has the script's output to send (only `optwatch run` captures it); None: unknown."""
        self.attached_over_tcp: str | None = None
        """The ``host:port`` attached to over TCP, which attaches again from this machine (a run id does not)."""
        self.feed = feed
        self.store = store or Store()
        self.writer = writer
        self.process = process
        self.tails = tails or []
        self._exit_seen_at: float | None = None
        self._last_records_at = time.monotonic()
        # Commands go through the thread that owns the sockets (ZeroMQ sockets are single-threaded).
        self._outbox: collections.deque[str] = collections.deque(maxlen=64)
        self.answers: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=64)
        self._recording_failure_told = False
        self._partial_lines: dict[int, tuple[bytes, float]] = {}
        """Per tail, with several: the bytes after its last newline, and since when they wait."""
        self._open_lines: dict[str, int | None] = {}
        """Per stream, with several tails: the tail whose line was let out unfinished, if any."""
        self._missed_said: dict[int, int] = {}
        """Per tail, the rotated files it missed that a notice has said."""

    def send_command(self, text: str) -> None:
        """Queue a control command (any thread); its answer appears in ``answers`` after a pump."""
        self._outbox.append(text)

    def _send_queued_commands(self) -> None:
        while self._outbox:
            text = self._outbox.popleft()
            try:
                reply = self.feed.request("control", timeout_s=HUB_ANSWER_S, command=text, source="dashboard")
            except NoAnswer as exc:
                reply = {"ok": False, "unknown": True, "error": str(exc)}  # the job may still apply it
            except RequestError as exc:
                reply = {"ok": False, "error": str(exc)}
            self.answers.append((text, reply))

    def _script_output(self, final: bool) -> Output:
        output = Output()
        now = time.monotonic()
        several_ranks = len(self.tails) > len({tail.stream for tail in self.tails})  # (a tail per rank and stream)
        for index, tail in enumerate(self.tails):
            data = tail.read()
            while final and data and (more := tail.read()):  # the last pump: all that is left, not 1 MiB of it
                data += more
            if several_ranks:
                data = self._whole_lines(index, data, now)
                if final and index in self._partial_lines:  # a rank's last line, unfinished: ended here
                    data += self._partial_lines.pop(index)[0] + b"\n"
                open_tail = self._open_lines.get(tail.stream)
                if data and open_tail is not None and open_tail != index:
                    data = b"\n" + data  # another rank's line, let out unfinished (a progress bar), ends here
                if data:
                    self._open_lines[tail.stream] = None if data.endswith(b"\n") else index
            if data:
                output.chunks.append((tail.stream, data))
            if tail.missed_files > self._missed_said.get(index, 0):
                gone = tail.missed_files - self._missed_said.get(index, 0)
                self._missed_said[index] = tail.missed_files
                output.notices.append(
                    f"about {gone * MAX_LOG_BYTES >> 20} MiB of the script's {tail.stream} went unshown here: it "
                    "wrote faster than this output was read, and its log keeps the last two files of "
                    f"{MAX_LOG_BYTES >> 20} MiB (the training was not held back for it)"
                )
        return output

    def _whole_lines(self, index: int, data: bytes, now: float) -> bytes:
        """Tail ``index``'s output up to its last newline; the rest waits for its end (``PARTIAL_LINE_WAIT_S``).
        A rank's print comes in pieces (its text, then its newline): passed on as they come, two ranks' lines
        ran into each other."""
        held, since = self._partial_lines.pop(index, (b"", now))
        data = held + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if rest:
            started = since if cut == 0 else now  # an unfinished line from before, or a new one
            if now - started < PARTIAL_LINE_WAIT_S and len(rest) < PARTIAL_LINE_MAX:
                self._partial_lines[index] = (rest, started)
                return data[:cut]
        return data

    @classmethod
    def for_process(
        cls, process: TrainingProcess, writer: RecordWriter | None = None, pass_output: bool = False
    ) -> ViewerSession:
        """A viewer of a job ``optwatch run`` started (``pass_output``: with its raw output, for headless)."""
        tails = process.output_tails() if pass_output else []
        feed = Feed(process.pub_endpoint, process.ctl_endpoint)
        return cls(feed, writer=writer, process=process, tails=tails, output_captured=True)

    def pump(self, timeout_s: float = 0.1, final: bool = False) -> tuple[list[dict[str, Any]], Output]:
        """New records (into the store and the record file) and the script's new output (``final``: the last
        pump, which lets out any unfinished lines too)."""
        self._send_queued_commands()
        records = self.feed.poll(timeout_s)
        self.store.hub_gone_since = self.feed.hub_gone_since
        output = self._script_output(final)
        if records:
            self._last_records_at = time.monotonic()
            self.store.ingest(records)
            if self.writer is not None:
                self.writer.write(records)
        return records, output

    def recording_stopped(self) -> str | None:
        """Why the record file stopped, the first time this is asked after it did (the viewer says so once);
        None otherwise. The run and the viewer go on either way."""
        if self.writer is None or self.writer.failure is None or self._recording_failure_told:
            return None
        self._recording_failure_told = True
        return self.writer.failure

    def done(self, linger_s: float = 3.0, quiet_s: float = 0.3) -> bool:
        """The process exited and everything it published has arrived: every rank's end record, and then
        nothing more for ``quiet_s`` (the script's last lines, which follow it); or ``linger_s`` passed."""
        if self.process is None or self.process.poll() is None:
            return False
        now = time.monotonic()
        if self._exit_seen_at is None:
            self._exit_seen_at = now
        if now - self._exit_seen_at > linger_s:
            return True
        return self.store.finished() and now - self._last_records_at >= quiet_s

    def exit_code(self) -> int | None:
        """The job's exit code once it ended: its process's, but 130 where every rank ended on a stop or a
        Ctrl-C: a launch (``--nproc-per-node``), where torchrun says 1 (a rank "failed") or 0 (after
        optwatch's ``stop``, which each rank ends as a finished worker: ``probe.launch.run_as_rank``), and a
        script whose own handling of the stop exits otherwise (Lightning's graceful shutdown exits 1)."""
        if self.process is None:
            return None
        code = self.process.exit_code()
        if code is None or not self._every_rank_interrupted():
            return code
        if code or getattr(self.process, "nproc_per_node", None):
            return protocol.INTERRUPTED
        return code

    def ending_line(self) -> str | None:
        """How the job ended, in one line, where that is news: killed by a signal, or stopped; else None."""
        if self.process is None or self.process.poll() is None:
            return None
        summary = self.store.summary()
        at = f" at step {summary.step}" if summary is not None else ""
        code = self.exit_code()
        killed_by = self.process.killed_by()
        if code == protocol.INTERRUPTED or self.process.stop_requested:
            # (SIGTERM or SIGKILL here: the script did not end on the Ctrl-C within ``STOP_GRACE_S``)
            how = f" with {killed_by}" if killed_by in ("SIGTERM", "SIGKILL") else ""
            return f"optwatch: the run was stopped{how}{at}, exit {code}"
        if killed_by == "SIGKILL":
            return (
                f"optwatch: the run was killed by SIGKILL{at}, exit {code} (out of memory? the kernel's OOM killer "
                "sends SIGKILL; so does kill -9)"
            )
        if killed_by:
            return f"optwatch: the run was killed by {killed_by}{at}, exit {code}"
        return None

    def _every_rank_interrupted(self) -> bool:
        with self.store.lock:
            ends = [state.end for state in self.store.ranks.values() if state.hello is not None]
        return bool(ends) and all(end is not None and end.get("exit_code") == protocol.INTERRUPTED for end in ends)

    def close(self) -> None:
        self.feed.close()
        for tail in self.tails:
            tail.close()
        if self.writer is not None:
            self.writer.close()


def job_gone(store: Store) -> bool:
    """Every rank that runs on this machine (by its hello) has exited without its end record: a job whose
    hub went silent because the job is gone (torchrun ended it after a rank was killed), not a hub alone."""
    host = socket.gethostname()
    with store.lock:
        pids = [
            state.hello["pid"]
            for state in store.ranks.values()
            if state.hello.get("host") == host and isinstance(state.hello.get("pid"), int)
        ]
    return bool(pids) and not any(runtime.pid_alive(pid) for pid in pids)
