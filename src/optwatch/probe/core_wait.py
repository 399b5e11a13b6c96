"""How long the training thread waited for a core during each step: ready to run while other processes (or
threads) held every core. Linux keeps it per thread (the run delay in ``/proc/<pid>/task/<tid>/schedstat``,
its second field, in nanoseconds), and the step record says it as ``core_wait_s``. A thread that was on its
core the whole step waited for none: the step's end reads the thread's CPU clock, and the file (one ``pread``
on a file kept open) only where the step's wall time ran ahead of it. After a step's work the read took
10-20 µs on the LLM-shaped CPU loop (about a microsecond in a loop that does nothing else), and 95% of its
steps had under 5 µs off their core.

The verdict takes it out of a step's work: on a machine with more busy threads than cores, the scheduler
hands the training thread's core away for a slice of a few milliseconds at a time, and a loop of 0.2 ms
steps read as '1 step in 16 takes 27x the median step: 51% of the time is work between training steps'.
"""

from __future__ import annotations

import os
import threading
import time

ON_CORE_SLACK_S = 5e-6
"""Time off its core under this since the last call is no wait worth a read of the file: the step says 0 (the
kernel counts it on; a step that reads says no more than its own time off its core, and what is left goes to the
next steps off theirs)."""


class CoreWait:
    """The calling thread's wait for a core since its last call; None on a first call from a thread, or
    where the kernel does not say (another OS, a kernel without schedstat)."""

    def __init__(self) -> None:
        self._thread: int | None = None
        self._fd: int | None = None
        self._last_ns: int | None = None
        self._last_clocks = (0.0, 0.0)
        """The wall and the thread's CPU clock at the last call."""
        self._owed_s = 0.0
        """Waits the file counted beyond the time off its core of the steps that read them: a wait for a core
        inside the read itself (the kernel may hand the core away in the middle of it) is in the file before
        the clocks see it, and the next steps' time off their core has it."""

    def since_last(self) -> float | None:
        if threading.get_ident() != self._thread:
            self._open()
        if self._fd is None:
            return None
        # The CPU clock first: reading it brings the kernel's account of the thread up to date, and where its
        # slice is spent the thread gives up its core as the call returns; the wall clock read after it has that
        # wait in it, as the file does. (A wait inside the read of the file is owed: below.)
        cpu_now = time.thread_time()
        clocks = (time.perf_counter(), cpu_now)
        (wall, cpu), self._last_clocks = self._last_clocks, clocks
        off_core = (clocks[0] - wall) - (clocks[1] - cpu)
        if self._last_ns is not None and off_core < ON_CORE_SLACK_S:
            return 0.0
        try:
            waited_ns = int(os.pread(self._fd, 64, 0).split()[1])
        except (OSError, ValueError, IndexError):
            self.close()
            return None
        last, self._last_ns = self._last_ns, waited_ns
        if last is None:
            return None
        # No more than the time off its core (the small waits of steps that said 0 come in the count too); what
        # it leaves goes to the next steps that were off their core.
        waited = (waited_ns - last) / 1e9 + self._owed_s
        counted = min(waited, max(off_core, 0.0))
        self._owed_s = waited - counted
        return counted

    def _open(self) -> None:
        self.close()
        self._thread = threading.get_ident()
        try:
            self._fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None  # (asked again only when the thread changes)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._last_ns, self._owed_s = self._fd, None, None, 0.0
            try:
                os.close(fd)
            except OSError:
                pass
