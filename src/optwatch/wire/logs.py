"""The script's output as the training process leaves it: capped log files in the run directory.

The probe's output keeper (``probe.output``) writes each stream to ``<stream>.log`` (rank 0) or
``<stream>.rank<N>.log``, and when one grows past its cap renames it to ``.1`` and starts it again, so a
run's output takes at most twice the cap on disk. ``LogTail`` follows such a file the way ``tail -F``
does: to the end of the renamed file, then from the start of the new one.

Under a plain ``optwatch run`` the pipes under the script's stdout and stderr are made by ``optwatch run``
itself, which keeps a read end of each (``OutputPipes``): what the script wrote just before a hard end (a
segfault's traceback, the last lines before the OOM killer's SIGKILL, an ``os._exit``) is still in the pipe
when the training process is gone, and ``optwatch run`` moves it into the log files.
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import threading
from pathlib import Path

from optwatch.wire.runtime import append_private

MAX_LOG_BYTES = 16 * 1024 * 1024
"""A log file is rotated once it is this large (each stream of each rank keeps at most two)."""
ROTATED_SUFFIX = ".1"
"""The rotated file: ``stdout.log.1``, replaced at the next rotation."""
ROTATIONS_SUFFIX = ".rotations"
"""A file beside the log holding how many times it was rotated: a reader that fell behind by more than a
rotated file learns how many it missed."""


PIPE_BYTES = 1 << 20
"""A pipe this large (where the system allows) lets a burst of output wait while the drain is asleep."""
STREAMS = ("stdout", "stderr")
LEFTOVER_MAX_BYTES = 4 * 1024 * 1024
"""At most this much is moved into a log file at each look after the training's end (a child of the script
that writes on after it is bounded too)."""


def rotated_path(path: Path) -> Path:
    """The log at ``path`` as it was before its last rotation."""
    return path.with_name(path.name + ROTATED_SUFFIX)


def rotations_path(path: Path) -> Path:
    """The file that counts the rotations of the log at ``path``."""
    return path.with_name(path.name + ROTATIONS_SUFFIX)


def rotations_of(path: Path) -> int:
    """How many times the log at ``path`` was rotated (0 before the first, or when the count cannot be read)."""
    try:
        return int(rotations_path(path).read_text() or 0)
    except (OSError, ValueError):
        return 0


_LOG_NAME = re.compile(r"^(stdout|stderr)(?:\.rank(\d+))?\.log$")


def log_name(stream: str, rank: int) -> str:
    return f"{stream}.log" if rank == 0 else f"{stream}.rank{rank}.log"


def parse_log_name(name: str) -> tuple[str, int] | None:
    """``"stderr.rank3.log"`` -> ``("stderr", 3)``; None for any other file name."""
    match = _LOG_NAME.match(name)
    if match is None:
        return None
    return match.group(1), int(match.group(2) or 0)


class LogTail:
    """New bytes of a log file that another process appends to and may rotate."""

    def __init__(self, path: Path, stream: str, tail_bytes: int | None = None):
        self.path = path
        self.stream = stream
        self._tail_bytes = tail_bytes
        self._handle = None
        self._inode: int | None = None
        self._finished = 0
        """Rotated files read to their end, or given up (the count the writer's rotations are held against)."""
        self.missed_files = 0
        """Rotated files gone before this reader got to them (it fell behind by more than two files)."""

    def read(self, limit: int = 1 << 20) -> bytes:
        """At most ``limit`` new bytes (the rest comes with the next calls)."""
        if self._handle is None and not self._open(self.path):
            return b""
        assert self._handle is not None
        data = self._handle.read(limit)
        if data:
            return data
        # At the end: a rotation put a new file at the path; once the old one is read out, follow it.
        try:
            inode = os.stat(self.path).st_ino
        except OSError:
            return b""
        if inode != self._inode:
            self._handle.close()
            self._handle = None
            self._finished += 1
            self._tail_bytes = None  # a new file is read whole
            if self._next_rotated() or self._open(self.path):
                return self._handle.read(limit)  # type: ignore[union-attr]
        return b""

    def _next_rotated(self) -> bool:
        """Fallen behind (the writer rotated again while this reader read the file before): open the rotated
        file it has not read, if it is still there, and count those gone before it."""
        behind = rotations_of(self.path) - self._finished
        if behind <= 0:
            return False
        self.missed_files += behind - 1
        self._finished += behind - 1
        return self._open(rotated_path(self.path))

    def _open(self, path: Path) -> bool:
        try:
            self._handle = open(path, "rb")  # noqa: SIM115 (kept open between reads)
        except OSError:
            return False
        self._inode = os.fstat(self._handle.fileno()).st_ino
        if self._tail_bytes is not None:
            # Joining late: the rotations before are no loss (read after the open, so none is counted twice).
            self._finished = rotations_of(self.path)
            # Joining late: start at a line boundary near the end, not at the top of a long log.
            size = self._handle.seek(0, os.SEEK_END)
            self._handle.seek(max(0, size - self._tail_bytes))
            if size > self._tail_bytes:
                self._handle.readline()
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def new_pipe() -> tuple[int, int]:
    """A pipe for a stream of the script's output: (read end, non-blocking; write end, blocking as a
    terminal's)."""
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, 1031, PIPE_BYTES)  # F_SETPIPE_SZ
    except OSError:
        pass
    os.set_blocking(read_end, False)
    return read_end, write_end


class OutputPipes:
    """``optwatch run``'s side of the pipes it makes for the training's stdout and stderr (rank 0's).

    The training process gets both ends of each (``pass_fds``, and their numbers in its environment: ``env``)
    and drains them itself; this process keeps the read ends and reads nothing from them until the training
    has ended (``take_leftovers``), so the two never read the same pipe at once."""

    def __init__(self, run_dir: Path):
        self.pipes = {stream: new_pipe() for stream in STREAMS}
        self._paths = {stream: run_dir / log_name(stream, 0) for stream in STREAMS}
        self._lock = threading.Lock()

    def env(self) -> str:
        """``stdout=5:6,stderr=7:8``: each stream's read and write ends, for the training process."""
        return ",".join(f"{stream}={read_end}:{write_end}" for stream, (read_end, write_end) in self.pipes.items())

    def fds(self) -> tuple[int, ...]:
        return tuple(fd for pipe in self.pipes.values() for fd in pipe)

    def started(self) -> None:
        """The training process has its copies: the write ends here go (the read ends stay)."""
        for stream, (read_end, write_end) in self.pipes.items():
            _close(write_end)
            self.pipes[stream] = (read_end, -1)

    def take_leftovers(self) -> None:
        """After the training's end: what its pipes still hold goes to the end of its log files. Safe to call
        again (a child of the script may write on) and from several threads."""
        with self._lock:
            for stream, (read_end, _) in self.pipes.items():
                if read_end < 0:
                    continue
                data = _read_available(read_end, LEFTOVER_MAX_BYTES)
                if not data:
                    continue
                try:
                    file = append_private(self._paths[stream])
                    try:
                        os.write(file, data)
                    finally:
                        os.close(file)
                except OSError:
                    pass  # a full disk or a run directory gone: the training is over either way

    def close(self) -> None:
        with self._lock:
            for stream, (read_end, write_end) in self.pipes.items():
                _close(read_end)
                _close(write_end)
                self.pipes[stream] = (-1, -1)


def pipes_from_env(value: str) -> dict[str, tuple[int, int]]:
    """The training process's side of ``OutputPipes.env``: each stream's (read end, write end), where both
    are open pipes, kept from the script's own children (not inheritable). Empty for anything else."""
    pipes: dict[str, tuple[int, int]] = {}
    for item in filter(None, value.split(",")):
        stream, _, ends = item.partition("=")
        try:
            read_end, write_end = (int(end) for end in ends.split(":"))
            if stream not in STREAMS or not all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (read_end, write_end)):
                continue
            os.set_inheritable(read_end, False)
            os.set_inheritable(write_end, False)
        except (ValueError, OSError):
            continue
        pipes[stream] = (read_end, write_end)
    return pipes


def _read_available(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            data = os.read(fd, min(1 << 16, limit - size))
        except OSError:  # (nothing more for now: BlockingIOError)
            break
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
