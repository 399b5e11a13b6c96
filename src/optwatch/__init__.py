"""optwatch: live diagnostics for PyTorch training, in the terminal.

``import optwatch`` is light: torch is imported when ``watch`` is first called, textual never.

    import optwatch
    ow = optwatch.watch(model, optimizer, batch_size=128)
    ...
    ow.log(val_acc=acc)
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["watch", "__version__"]

if TYPE_CHECKING:
    from optwatch.probe.probe import Probe


def _drop_start_directory() -> None:
    """``python -m optwatch`` (and ``-m optwatch.probe.launch``) put the directory it is started in first on
    sys.path, where the `optwatch` command and ``python script.py`` put none of it: a user's ``hmac.py`` or
    ``queue.py`` there must not stand in for the standard library's in optwatch's imports. Called before
    them. (Not ``python -P``: a script would see ``sys.flags.safe_path``, and its subprocesses the flag.)"""
    try:
        started_in = os.getcwd()
    except OSError:  # (a directory since removed)
        started_in = None
    if sys.path and sys.path[0] in ("", started_in):
        del sys.path[0]


def watch(
    model: Any = None, optimizer: Any = None, *, batch_size: int | None = None, start_step: int | None = None
) -> Probe:
    """Instrument this process and return its probe.

    Under ``optwatch run`` this names the model, optimizer and batch size for the probe that is
    already running. In a script started with plain ``python``, it starts the probe so that
    ``optwatch attach`` can watch the run. Calling it twice is harmless.

    ``start_step``: the number of the first step this process makes, for a run resumed from a checkpoint
    (its global step), so that optwatch's steps are the ones the script logs; given before the first step.
    """
    from optwatch.probe.start import start_probe

    return start_probe().attach(model=model, optimizer=optimizer, batch_size=batch_size, start_step=start_step)
