"""Before and after a control took effect: did AMP or cudnn.benchmark help on this run?"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from optwatch.store import finite

WINDOW = 50


@dataclass
class Side:
    steps: int
    step_time_s: float | None
    samples_per_s: float | None
    loss_mean: float | None
    loss_slope_per_100: float | None  # negative: the loss is falling


def _slope(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 3:
        return None
    xs, ys = zip(*points)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return 100 * sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _side(steps: list[dict[str, Any]]) -> Side:
    def median(key: str) -> float | None:
        values = [s[key] for s in steps if finite(s.get(key))]
        return statistics.median(values) if values else None

    losses = [(s["step"], s["loss"]) for s in steps if finite(s.get("loss"))]
    return Side(
        steps=len(steps),
        step_time_s=median("step_time_s"),
        samples_per_s=median("samples_per_s"),
        loss_mean=statistics.fmean(v for _, v in losses) if losses else None,
        loss_slope_per_100=_slope(losses),
    )


def compare(steps: list[dict[str, Any]], effective_step: int, window: int = WINDOW) -> tuple[Side, Side]:
    """The ``window`` steps before ``effective_step`` against the ones from it on (as many as there are)."""
    before = [s for s in steps if effective_step - window <= s["step"] < effective_step]
    after = [s for s in steps if effective_step <= s["step"] < effective_step + window]
    return _side(before), _side(after)


def change(before: float | None, after: float | None) -> str:
    if before is None or after is None or before == 0:
        return ""
    return f"{100 * (after - before) / abs(before):+.0f}%"
