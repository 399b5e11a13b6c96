"""optwatch: live diagnostics for PyTorch training, in the terminal.

``import optwatch`` is light: torch is imported when ``watch`` is first called, textual never.

    import optwatch
    ow = optwatch.watch(model, optimizer, batch_size=128)
    ...
    ow.log(val_acc=acc)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["watch", "__version__"]

if TYPE_CHECKING:
    from optwatch.probe.probe import Probe


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
