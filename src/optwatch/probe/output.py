"""The script's stdout and stderr under ``optwatch run``: into capped log files, and never an error for it.

Written straight to a file, the script's output would fail the script itself once the file system is full
(``print`` raises, often at step 0 with no message on a small tmpfs), and would grow without a cap. So the
probe puts a pipe under file descriptors 1 and 2, and a thread drains it into ``stdout.log`` / ``stderr.log``
(``.rank<N>.log`` on other ranks), rotated at ``MAX_LOG_BYTES`` (``wire.logs``). A write that fails (the
disk is full) drops that piece of output, counted, and the script never sees it. The thread spends its
time in ``os.read``/``os.write``, which let go of the GIL, and wakes at most a few dozen times a second.

The hub reads the files (for viewers, local or remote) and ``optwatch run --headless`` passes them through.
At exit a last drain runs after the interpreter has printed an uncaught exception's traceback. Under a plain
``optwatch run`` the pipes come from it (``wire.logs.OutputPipes``), which keeps their read ends: what a hard
end leaves in them (a segfault's traceback, the lines before a SIGKILL) it moves into the files itself.
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import threading
from pathlib import Path

from optwatch.wire.logs import MAX_LOG_BYTES, log_name, new_pipe, rotated_path, rotations_of, rotations_path
from optwatch.wire.runtime import append_private, write_private_file

log = logging.getLogger(__name__)

DRAIN_EVERY_S = 0.05


class _Stream:
    def __init__(self, fd: int, path: Path, pipe: tuple[int, int] | None = None):
        self.fd = fd
        self.path = path
        self.read_end, write_end = pipe or new_pipe()
        os.set_blocking(self.read_end, False)
        os.dup2(write_end, fd)  # the script's fd 1 (2) is now the pipe's write end
        os.close(write_end)
        self.file: int | None = None
        self.written = 0
        self.lost = 0
        self.rotations = rotations_of(path)

    def drain(self) -> bool:
        """Move what the pipe holds into the log file; False at the pipe's end."""
        while True:
            try:
                data = os.read(self.read_end, 1 << 16)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self._write(data)

    def _write(self, data: bytes) -> None:
        try:
            if self.file is None:
                self._rotate()
            assert self.file is not None
            if self.written + len(data) > MAX_LOG_BYTES:
                # A file ends at a line's end where it can: a reader that missed the file before the next one
                # starts that one at a line's start, not with the tail of a line whose start is gone.
                cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
                if cut or self.written >= MAX_LOG_BYTES:
                    os.write(self.file, data[:cut])
                    self._rotate()
                    data = data[cut:]
                # (else no line ends in it and there is room: this file takes it, a later write rotates)
            os.write(self.file, data)
            self.written += len(data)
        except OSError:
            self.lost += len(data)  # a full disk: the output is lost, the training is not

    def _rotate(self) -> None:
        if self.file is not None:
            os.close(self.file)
            self.file = None
            os.replace(self.path, rotated_path(self.path))
            self.rotations += 1
            write_private_file(rotations_path(self.path), str(self.rotations))  # (for a reader fallen behind)
        self.file = append_private(self.path)
        self.written = os.fstat(self.file).st_size


class OutputKeeper:
    """Owns fds 1 and 2 of the training process from ``start`` on (``optwatch run`` only)."""

    def __init__(self, run_dir: Path, rank: int = 0, pipes: dict[str, tuple[int, int]] | None = None):
        """``pipes``: each stream's (read end, write end), made by ``optwatch run`` (else made here)."""
        self.run_dir = run_dir
        self.rank = rank
        self._pipes = pipes or {}
        self._streams: list[_Stream] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()

    def start(self) -> OutputKeeper:
        import sys

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()  # what Python buffered goes where it was meant to go, before the switch
            except (OSError, ValueError):
                pass
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            self._streams.append(_Stream(fd, self.run_dir / log_name(stream, self.rank), self._pipes.get(stream)))
        self._thread = threading.Thread(target=self._run, name="optwatch-output", daemon=True)
        self._thread.start()
        atexit.register(self.finish)
        return self

    @property
    def lost_bytes(self) -> int:
        return sum(stream.lost for stream in self._streams)

    def _run(self) -> None:
        reads = [stream.read_end for stream in self._streams]
        while not self._stop.is_set():
            try:
                select.select(reads, [], [], 1.0)
                self._drain()
            except Exception:  # this thread must outlive anything: a dead drain would block the script
                log.exception("optwatch: draining the script's output failed; trying again")
            self._stop.wait(DRAIN_EVERY_S)  # a pause between drains: many small writes become few

    def _drain(self) -> None:
        with self._lock:
            for stream in self._streams:
                stream.drain()

    def finish(self) -> None:
        """At exit (after a traceback is printed): what the pipes still hold goes to the files. Not in a
        forked child, which shares the pipes with its parent (and whose copy of the lock may be held)."""
        import sys

        if os.getpid() != self._owner_pid:
            return

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        self._stop.set()
        self._drain()
