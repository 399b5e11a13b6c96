"""Where each step's time goes: one stacked column per timed step (or group of them), newest on the right.
When optwatch spaces its detail steps out (``--budget``), only those are timed, and the title says so.

Drawn with half-block cells (two colours per cell: the lower half in the foreground, the upper half
in the background), which keeps the stack exact at the 8-12 rows an 80x24 terminal leaves; plotext's
bar charts round each bar to whole rows at that size.
"""

from __future__ import annotations

from typing import Any

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from optwatch.app import format as fmt
from optwatch.protocol import finite

PHASES = [
    ("data_wait_s", "data", (230, 180, 40)),
    ("forward_s", "fwd", (80, 160, 245)),
    ("backward_s", "bwd", (60, 200, 150)),
    ("optimizer_s", "opt", (205, 110, 225)),
    ("other_s", "other", (140, 140, 140)),
]
AXIS = 8


def _rgb(colour: tuple[int, int, int]) -> str:
    return f"rgb({colour[0]},{colour[1]},{colour[2]})"


def group(columns: list[list[float]], labels: list[int], width: int) -> tuple[list[list[float]], list[int]]:
    """At most ``width`` columns: consecutive steps averaged, each group named by its last step."""
    size = max(1, -(-len(columns) // max(1, width)))
    grouped, names = [], []
    for start in range(0, len(columns), size):
        chunk = columns[start : start + size]
        grouped.append([sum(values) / len(chunk) for values in zip(*chunk)])
        names.append(labels[min(start + size, len(labels)) - 1])
    return grouped, names


class PhaseChart(Widget):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns: list[list[float]] = []
        """Seconds per phase (in ``PHASES`` order) of each step shown, oldest first."""
        self.labels: list[int] = []
        self.shares: dict[str, float] = {}
        """Each phase's share of the shown steps' time, by label."""

    def set_steps(self, steps: list[dict[str, Any]]) -> None:
        timed = [s for s in steps if finite(s.get("step_time_s")) and finite(s.get("other_s"))]
        self.columns = [[s[key] if finite(s.get(key)) else 0.0 for key, _, _ in PHASES] for s in timed]
        self.labels = [s.get("step", 0) for s in timed]
        totals = [sum(values) for values in zip(*self.columns)] if self.columns else []
        whole = sum(totals)
        self.shares = {label: t / whole for (_, label, _), t in zip(PHASES, totals)} if whole > 0 else {}
        legend = "  ".join(
            f"[{_rgb(colour)}]■[/] {label}" + (f" {100 * self.shares[label]:.0f}%" if self.shares else "")
            for _, label, colour in PHASES
        )
        every = timed[-1].get("detail_every") if timed else None
        spaced = f" (timed 1 in {every})" if isinstance(every, int) and every > 1 else ""
        self.border_title = f"Phases, {len(self.columns)} steps{spaced}  {legend}"
        self.refresh()

    def render(self) -> Text:
        width, height = self.size
        rows = max(1, height - 1)  # the last line names the steps
        columns, labels = group(self.columns, self.labels, width - AXIS)
        if not columns:
            return Text("waiting for steps with phase times", "dim")
        top = max(sum(column) for column in columns) or 1.0
        cell = max(1, min(3, (width - AXIS) // len(columns)))  # few steps: wider columns, with a gap
        bar, gap = (cell - 1, " ") if cell > 1 else (1, "")
        lines = []
        for row in range(rows):
            label = fmt.seconds(top) if row == 0 else "0" if row == rows - 1 else ""
            if len(label) > AXIS - 1:  # ("0.412 ms" is wider than the axis: "0.412ms")
                label = label.replace(" ", "")[: AXIS - 1]
            line = Text(label.rjust(AXIS - 1) + "│")
            line.stylize("dim")
            base = rows - 1 - row  # cells counted from the bottom
            for column in columns:
                lower = _colour_at(column, (2 * base + 0.5) / (2 * rows) * top)
                upper = _colour_at(column, (2 * base + 1.5) / (2 * rows) * top)
                if lower is None:
                    line.append(" " * bar)
                elif upper is None or upper == lower:
                    line.append(("█" if upper else "▄") * bar, Style(color=_rgb(lower)))
                else:
                    line.append("▄" * bar, Style(color=_rgb(lower), bgcolor=_rgb(upper)))
                line.append(gap)
            lines.append(line)
        first, last = f"step {labels[0]}", str(labels[-1])
        span = len(columns) * cell
        axis = " " * AXIS + first + " " * max(1, span - len(first) - len(last)) + last
        lines.append(Text(axis, "dim"))
        return Text("\n").join(lines)


def _colour_at(column: list[float], level: float) -> tuple[int, int, int] | None:
    """The colour of the phase stacked across ``level`` seconds, or None above the column."""
    reached = 0.0
    for (_, _, colour), seconds in zip(PHASES, column):
        reached += seconds
        if level < reached:
            return colour
    return None
