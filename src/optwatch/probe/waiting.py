"""Where the training is while no step ends: an evaluation, a checkpoint being written, a DataLoader that
stalls, a rank stuck in a collective, a first step that has not come. The dashboard's figures stand still
then, as they do for a run that hangs; this says which it is, with the training thread's own stack.

On the sampler thread, a few times a second, it compares the time since the last step boundary with the
run's typical step; past ``WAITING_AFTER_S`` and ``TYPICAL_STEPS`` of them it reads the training thread's
frames (``sys._current_frames``, the way ``faulthandler`` and ``traceback.print_stack`` do: a few tens of
microseconds under the GIL, never a signal, nothing on the training thread) and sends a ``waiting`` record,
again as the wait goes on, less often the longer it lasts. A run that steps costs it one comparison a sample.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import time
from types import FrameType
from typing import Any

from optwatch import protocol
from optwatch.probe.plugin import ProbeContext, ProbePlugin

WAITING_AFTER_S = 3.0
"""No step boundary for this long (and ``TYPICAL_STEPS`` steps' time) before the training's place is said."""
TYPICAL_STEPS = 5
SAY_AGAIN_S = 2.0
"""While the wait lasts, its place is said again after this long, or a tenth of the wait if longer (an
hour's evaluation sends about eighty records, not eighteen hundred)."""
STACK_FRAMES = 16
"""The innermost frames sent (the script's innermost frame goes with them wherever it is)."""

_OPTWATCH_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")
_LIBRARY_DIRS = tuple(
    os.path.join(os.path.abspath(path), "")
    for path in {
        *(sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")),
        *site.getsitepackages(),
        site.getusersitepackages(),
    }
    if path
)
_INSTALLED = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")
"""Where installed libraries live wherever the path came from (PYTHONPATH, an HPC module's prefix)."""


def _is_scripts(path: str) -> bool:
    """A file of the script's own (not Python's, not an installed library's, not optwatch's)."""
    if path.startswith("<"):  # <frozen runpy>, <string>
        return False
    path = os.path.abspath(path)
    if path.startswith(_LIBRARY_DIRS) or path.startswith(_OPTWATCH_DIR):
        return False
    return not any(part in path for part in _INSTALLED)


def importing(frame: FrameType | None) -> str | None:
    """The module the training thread is importing, where it is (the outermost one whose top level runs,
    called by Python's import machinery): an import of seconds before the first step is no hang. Not the
    program's own entry (a ``python -m`` module, optwatch's launcher), whose top level runs all along."""
    name = None
    while frame is not None:
        caller = frame.f_back
        if (
            frame.f_code.co_name == "<module>"
            and caller is not None
            and caller.f_code.co_filename.startswith("<frozen importlib")
        ):
            found = frame.f_globals.get("__name__")
            name = found if isinstance(found, str) else name
        frame = caller
    return name


def frames_of(frame: FrameType | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The stack from ``frame`` outwards, optwatch's own frames left out: its ``STACK_FRAMES`` innermost
    (outermost first), and the innermost frame of the script's own code (None if none is on the stack)."""
    innermost: list[dict[str, Any]] = []
    own: dict[str, Any] | None = None
    while frame is not None and (own is None or len(innermost) < STACK_FRAMES):
        code = frame.f_code
        path = code.co_filename
        if not path.startswith(_OPTWATCH_DIR):
            scripts = _is_scripts(path)
            entry = {"file": path, "line": frame.f_lineno, "function": code.co_name, "own": scripts}
            if len(innermost) < STACK_FRAMES:
                innermost.append(entry)
            if scripts and own is None:
                own = entry
        frame = frame.f_back
    innermost.reverse()
    return innermost, own


class WaitingPlugin(ProbePlugin):
    name = "waiting"
    between_detail_steps = frozenset()  # (no per-step callback: it only samples)

    def __init__(self) -> None:
        self._said_at = 0.0
        self._said_for: float | None = None
        """The wait last said: its start (``ProbeContext.waiting_since``)."""

    def sample(self, context: ProbeContext, system: dict[str, Any]) -> list[dict[str, Any]]:
        since = context.waiting_since
        if since is None:
            return []
        now = time.perf_counter()
        waited = now - since
        if waited < WAITING_AFTER_S:
            return []  # (what a sample costs a run that steps)
        try:
            typical = context.median_step_s or 0.0
        except RuntimeError:  # (its steps changed as they were read: the next sample reads them)
            return []
        if waited < max(WAITING_AFTER_S, TYPICAL_STEPS * typical):
            return []
        if since == self._said_for and now - self._said_at < max(SAY_AGAIN_S, waited / 10):
            return []
        thread = context.training_thread or context.started_in
        frame = sys._current_frames().get(thread) if thread is not None else None
        if frame is None:
            return []  # (the thread has ended: the process is ending, or trains no more)
        stack, own = frames_of(frame)
        module = importing(frame)
        del frame
        if context.waiting_since != since:
            return []  # a step ended meanwhile: these frames may be the next step's
        self._said_at, self._said_for = now, since
        return [
            protocol.make_record(
                protocol.WAITING,
                context.rank,
                step=context.step,
                first=context.step == context.first_step,
                waited_s=round(waited, 1),
                typical_step_s=typical or None,
                stack=stack,
                where=own,
                importing=module,
            )
        ]
