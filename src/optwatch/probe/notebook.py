"""A notebook's kernel (IPython under ipykernel, VS Code's, a terminal IPython): its cells' starts and ends,
which no module call or step tells the probe of, its name, and a requested stop said in one line.

Only where IPython is already imported and runs a shell: this module never imports IPython.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from optwatch.protocol import STOPPED_BY_REQUEST


def running_shell() -> Any | None:
    """The IPython shell this process runs cells in, or None (plain python; IPython imported by a library
    without a shell)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return None
    try:
        shell = get_ipython()
    except Exception:
        return None
    return shell if shell is not None and hasattr(shell, "events") else None


def notebook_name() -> str | None:
    """The notebook the kernel runs, where it is known: jupyter-server sets ``JPY_SESSION_NAME`` to its path,
    VS Code puts ``__vsc_ipynb_file__`` in the user namespace. The run is named after it, not after
    ``ipykernel_launcher``."""
    shell = running_shell()
    if shell is None:
        return None
    named = os.environ.get("JPY_SESSION_NAME") or getattr(shell, "user_ns", {}).get("__vsc_ipynb_file__")
    return named if isinstance(named, str) and named.strip() else None


def say_a_requested_stop_in_one_line(shell: Any) -> None:
    """A ``stop`` raises a KeyboardInterrupt in optwatch's hooks: IPython printed ~40 lines of traceback through
    them (it never calls ``sys.excepthook``). One line instead; any other interrupt is shown as IPython shows
    it. A handler the user set is kept."""
    if getattr(shell, "custom_exceptions", ()):
        return

    def one_line(shell: Any, kind: type, value: BaseException, traceback: Any, tb_offset: int | None = None) -> None:
        if not str(value).startswith(STOPPED_BY_REQUEST):
            shell.showtraceback((kind, value, traceback), tb_offset=tb_offset)
            return
        line = f"{value}: the steps before it are complete"
        show = getattr(shell, "_showtraceback", None)
        if show is not None:
            show(kind, value, [line])  # (ipykernel's sends it as the cell's error)
        else:
            print(line, file=sys.stderr, flush=True)

    shell.set_custom_exc((KeyboardInterrupt,), one_line)


def follow_cells(shell: Any, cell_started: Callable[[], None], cell_ended: Callable[[], None]) -> Callable[[], None]:
    """Calls ``cell_started`` before each cell runs and ``cell_ended`` after it (IPython's ``pre_run_cell`` and
    ``post_run_cell`` events); returns what takes them away again."""

    def started(info: Any = None) -> None:
        cell_started()

    def ended(result: Any = None) -> None:
        cell_ended()

    shell.events.register("pre_run_cell", started)
    shell.events.register("post_run_cell", ended)

    def unfollow() -> None:
        for event, callback in (("pre_run_cell", started), ("post_run_cell", ended)):
            try:
                shell.events.unregister(event, callback)
            except ValueError:
                pass  # (taken away already)

    return unfollow
