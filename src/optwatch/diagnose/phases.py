"""Where a step's time goes: data wait, forward, backward, optimizer and the rest."""

from __future__ import annotations

from typing import Any

from optwatch.protocol import finite

# The measured phases of a step record, in the order they happen; "other" is what they leave over.
MEASURED = ("data_wait_s", "forward_s", "backward_s", "optimizer_s")
PHASES = (*MEASURED, "other_s")


def other_seconds(step: dict[str, Any]) -> float | None:
    """Step time not covered by the measured phases nor by optwatch's own code on the training thread (never
    negative); None without a step time. optwatch's work at a step boundary would otherwise be the loop's: on
    a detail step of a sub-millisecond step it is most of the time, and the verdict blamed the loop for it.

    On CUDA the forward, backward and optimizer times are device-timeline spans while the step time
    is the host's, so their sum can exceed the step time for a single step; the remainder is then 0.
    """
    total = step.get("step_time_s")
    if not finite(total):
        return None
    own = step.get("optwatch_s")
    return max(0.0, total - _covered(step) - (own if finite(own) else 0.0))


def training_seconds(step: dict[str, Any]) -> float:
    """The step's time less optwatch's own on the training thread: its measured phases and the rest."""
    return _covered(step) + (other_seconds(step) or 0.0)


def _covered(step: dict[str, Any]) -> float:
    """The seconds of the step's measured phases."""
    return sum(step[key] for key in MEASURED if finite(step.get(key)))
