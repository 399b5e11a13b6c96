"""Where a step's time goes: data wait, forward, backward, optimizer and the rest."""

from __future__ import annotations

from typing import Any

from optwatch.protocol import finite

# The measured phases of a step record, in the order they happen; "other" is what they leave over.
MEASURED = ("data_wait_s", "forward_s", "backward_s", "optimizer_s")
PHASES = (*MEASURED, "other_s")


def other_seconds(step: dict[str, Any]) -> float | None:
    """Step time not covered by the measured phases (never negative); None without a step time.

    On CUDA the forward, backward and optimizer times are device-timeline spans while the step time
    is the host's, so their sum can exceed the step time for a single step; the remainder is then 0.
    """
    total = step.get("step_time_s")
    if not finite(total):
        return None
    covered = sum(step[key] for key in MEASURED if finite(step.get(key)))
    return max(0.0, total - covered)
