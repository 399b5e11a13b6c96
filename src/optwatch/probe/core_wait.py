"""How long the training thread waited for a core during each step: ready to run while other processes (or
threads) held every core. Linux keeps it per thread (the run delay in ``/proc/<pid>/task/<tid>/schedstat``,
its second field, in nanoseconds); the step's end reads it with one ``pread`` on a file kept open (under a
microsecond), and the step record says it as ``core_wait_s``.

The verdict takes it out of a step's work: on a machine with more busy threads than cores, the scheduler
hands the training thread's core away for a slice of a few milliseconds at a time, and a loop of 0.2 ms
steps read as '1 step in 16 takes 27x the median step: 51% of the time is work between training steps'.
"""

from __future__ import annotations

import os
import threading


class CoreWait:
    """The calling thread's wait for a core since its last call; None on a first call from a thread, or
    where the kernel does not say (another OS, a kernel without schedstat)."""

    def __init__(self) -> None:
        self._thread: int | None = None
        self._fd: int | None = None
        self._last_ns: int | None = None

    def since_last(self) -> float | None:
        if threading.get_ident() != self._thread:
            self._open()
        if self._fd is None:
            return None
        try:
            waited_ns = int(os.pread(self._fd, 64, 0).split()[1])
        except (OSError, ValueError, IndexError):
            self.close()
            return None
        last, self._last_ns = self._last_ns, waited_ns
        return (waited_ns - last) / 1e9 if last is not None else None

    def _open(self) -> None:
        self.close()
        self._thread = threading.get_ident()
        try:
            self._fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None  # (asked again only when the thread changes)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._last_ns = self._fd, None, None
            try:
                os.close(fd)
            except OSError:
                pass
