"""One line in a framework's trainer makes a run watchable when optwatch does not launch it.

    trainer = Trainer(..., callbacks=[optwatch.integrations.transformers.OptwatchCallback()])
    trainer = lightning.Trainer(..., callbacks=[optwatch.integrations.lightning.OptwatchCallback()])

Each callback starts this process's probe (and its hub) when training starts, names the model, the
optimizer and the batch size from the framework's own objects, and publishes what the framework logs
(evaluation loss, accuracy...) as ``metric`` records. ``import optwatch`` imports neither framework: each
module here is imported only by a script that names it.
"""

from __future__ import annotations

from typing import Any


def numbers_of(logged: dict[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The logged values that are one number (a float, an int, a one-element tensor), by name."""
    numbers: dict[str, Any] = {}
    for name, value in logged.items():
        if name in skip or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            numbers[name] = float(value)
        elif getattr(value, "numel", None) is not None and value.numel() == 1:
            numbers[name] = value.reshape(())  # a tensor: read back with the next batch, never here
    return numbers
