"""One-row history charts in text (▁▂▃▅▇), for panels too small for a plot."""

from __future__ import annotations

from collections.abc import Sequence

from optwatch.protocol import finite

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[object], width: int, low: float | None = 0.0, high: float | None = None) -> str:
    """The newest ``width`` values as bars between ``low`` and ``high`` (the data's own range when None).

    Missing values are blanks, so a gap in the telemetry shows as a gap.
    """
    recent = list(values)[-width:]
    numbers = [float(v) for v in recent if finite(v)]  # type: ignore[arg-type]
    if not numbers:
        return ""
    bottom = min(numbers) if low is None else low
    top = max(numbers) if high is None else high
    span = top - bottom
    out = []
    for value in recent:
        if not finite(value):
            out.append(" ")
            continue
        level = (float(value) - bottom) / span if span > 0 else 0.5  # type: ignore[arg-type]
        level = min(1.0, max(0.0, level))  # also when the scale overflows: inf is a full bar, NaN an empty one
        out.append(_BARS[int(level * (len(_BARS) - 1) + 0.5)])
    return "".join(out)
