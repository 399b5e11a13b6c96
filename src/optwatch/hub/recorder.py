"""The job's record, written by its hub into the run's directory (``optwatch.runs``), compressed and bounded.

Every record the hub takes goes in, except per-layer records, which are thinned as the run grows (all of the
first ``LAYERS_KEPT_AT_FULL_RATE`` of a rank, then one in 2, one in 4...: a long run's file grows with its
steps, not with its model). The compressed stream is flushed to the file once a second, so a crash, a kill
-9 or a full disk loses at most the last second; the first write that fails ends the recording (the hub and
the job go on) and run.json says why. The training never waits on any of it: this is the hub's process.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

from optwatch import protocol, runs

FLUSH_EVERY_S = 1.0
SUMMARY_EVERY_S = 5.0
LAYERS_KEPT_AT_FULL_RATE = 500
COMPRESSION_LEVEL = 6

log = logging.getLogger("optwatch.hub")


def _read_summary(directory: Path) -> dict[str, Any]:
    try:
        summary = json.loads((directory / runs.SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


class RunRecorder:
    def __init__(self, directory: Path, summary: dict[str, Any]):
        self.directory = directory
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a shared root is never chmod-ed
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.path = runs.next_record_path(directory)
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        self._deflate = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, 31)
        self._pending: list[bytes] = []
        self._layers_seen: dict[int, int] = {}
        self.failure: str | None = None
        self.written_bytes = 0
        self.summary = {**summary, "status": "running", "steps": 0, "last_loss": None, "record": self.path.name}
        earlier = _read_summary(directory)
        if earlier:  # a hub started again for the same run (the last one died): the run began then, not now
            self.summary.update({k: earlier[k] for k in ("start", "steps", "last_loss") if k in earlier})
        self._last_flush = time.monotonic()
        self._last_summary = 0.0
        self._write_summary()

    def add(self, records: list[dict[str, Any]]) -> None:
        if self._fd is None:
            return
        for record in records:
            kind = record.get("kind")
            if kind == protocol.LAYERS and not self._keep_layers(record.get("rank", 0)):
                continue
            if kind == protocol.STEP and record.get("rank", 0) == 0:
                step = record.get("step")
                if isinstance(step, int):
                    self.summary["steps"] = max(self.summary["steps"], step + 1)
                loss = record.get("loss")
                if protocol.finite(loss):
                    self.summary["last_loss"] = loss
                    self.summary.pop("loss_nonfinite_from", None)
                elif isinstance(loss, float) and isinstance(step, int):  # NaN or inf: the run diverged
                    self.summary.setdefault("loss_nonfinite_from", step)
            try:
                self._pending.append(protocol.record_to_json_line(record).encode())
            except (ValueError, TypeError, RecursionError):
                continue  # a record JSON cannot hold: left out of the file, as a viewer would refuse it

    def _keep_layers(self, rank: int) -> bool:
        seen = self._layers_seen.get(rank, 0)
        self._layers_seen[rank] = seen + 1
        stride = 1 << max(0, seen // LAYERS_KEPT_AT_FULL_RATE)  # 1 for the first 500, then 2, 4, 8...
        return seen % stride == 0

    def tick(self, now: float | None = None) -> None:
        """Called from the hub's loop: the flush due once a second, the summary every few seconds."""
        now = time.monotonic() if now is None else now
        if now - self._last_flush >= FLUSH_EVERY_S:
            self.flush(now)
        if now - self._last_summary >= SUMMARY_EVERY_S:
            self._write_summary(now)

    def flush(self, now: float | None = None) -> None:
        self._last_flush = time.monotonic() if now is None else now
        if self._fd is None:
            return
        data = b"".join(self._deflate.compress(line) for line in self._pending)
        self._pending.clear()
        self._write(data + self._deflate.flush(zlib.Z_SYNC_FLUSH))

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.failure = f"recording to {self.path} stopped: {exc.strerror or exc}; the run goes on"
            log.warning("optwatch hub: %s", self.failure)
            self._close_fd()
            self.summary["record_error"] = self.failure
            return
        self.written_bytes += len(data)

    def _write_summary(self, now: float | None = None) -> None:
        self._last_summary = time.monotonic() if now is None else now
        try:
            runs.write_summary(self.directory, {**self.summary, "size_bytes": self.written_bytes})
        except OSError as exc:  # a full disk: the record says what it can
            log.warning("optwatch hub: cannot write %s: %s", runs.SUMMARY_NAME, exc)

    def mark_ended(self, status: str, exit_code: int | None = None) -> None:
        """Say how the run ended, with what it recorded so far (the stream stays open for what follows)."""
        self.flush()
        self.summary.update(status=status, exit_code=exit_code, ended=time.time())
        self._write_summary()

    def mark_running(self) -> None:
        self.summary["status"] = "running"
        for key in ("exit_code", "ended"):
            self.summary.pop(key, None)
        self._write_summary()

    def close(self, status: str, exit_code: int | None = None) -> None:
        """End the stream (a complete gzip file) and say how the run ended."""
        if self._fd is not None:
            self.flush()
            if self._fd is not None:
                self._write(self._deflate.flush(zlib.Z_FINISH))
            self._close_fd()
        self.summary.update(status=status, exit_code=exit_code)
        self.summary.setdefault("ended", time.time())
        self._write_summary()

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
