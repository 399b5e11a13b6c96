"""Layers x time on a log colour scale: where the gradient dies (dark) or blows up (red), at a glance.

Two bands per text row (the upper half block takes one colour, the lower half the next). A few layers
get several bands each; more layers than bands are pooled, in model order, by their median. The newest
step is at the right; the number on the left is the layer's index in the layer table.
"""

from __future__ import annotations

import math
import statistics

from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from optwatch.app.layer_history import LayerHistory

# Dark blue (tiny) to red (huge), then magenta for NaN/Inf.
PALETTE = (
    "#1d1f4f",
    "#253494",
    "#2c7fb8",
    "#41b6c4",
    "#7fcdbb",
    "#c7e9b4",
    "#ffffb2",
    "#fecc5c",
    "#fd8d3c",
    "#f03b20",
    "#bd0026",
)
NONFINITE = "#ff00ff"
EMPTY = "#000000"
DECADES = 16  # the colour scale spans at most this many orders of magnitude below the largest value
MAX_BANDS_PER_LAYER = 4  # with few layers, each takes up to this many half rows
GUTTER = 5


def _colour(value: float | None, low: float, high: float) -> str:
    if value is None:
        return EMPTY
    if not math.isfinite(value):
        return NONFINITE
    if value <= 0:
        return PALETTE[0]
    position = (math.log10(value) - low) / (high - low) if high > low else 1.0
    return PALETTE[min(len(PALETTE) - 1, max(0, int(position * len(PALETTE))))]


def _pool(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if any(not math.isfinite(v) for v in present):
        return math.nan
    return statistics.median(present)


class HeatStrip(Widget):
    DEFAULT_CSS = """
    HeatStrip { height: 8; }
    """

    def __init__(self, metric: str = "grad_rms", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.metric = metric
        self.history: LayerHistory | None = None
        self.scale: tuple[float, float] | None = None
        """(low, high) log10 bounds of the colours drawn last, for the legend and for tests."""

    def show(self, history: LayerHistory) -> None:
        self.history = history
        self.refresh()

    def render(self) -> Text:
        history = self.history
        width, height = self.size.width, self.size.height
        if history is None or not history.modules or width <= GUTTER + 2 or height < 2:
            return Text("waiting for gradient statistics", style="dim")
        columns = min(len(history.steps), width - GUTTER)
        rows = 2 * (height - 1)
        names = history.modules
        count = min(rows, len(names))
        groups = [names[i * len(names) // count : (i + 1) * len(names) // count] for i in range(count)]
        repeat = max(1, min(MAX_BANDS_PER_LAYER, rows // len(groups)))
        pooled: list[list[float | None]] = []
        for group in groups:
            series = [history.column(name, self.metric)[-columns:] for name in group]
            pooled.append([_pool([s[t] for s in series]) for t in range(columns)])
        logs = [math.log10(v) for row in pooled for v in row if v is not None and math.isfinite(v) and v > 0]
        high = max(logs) if logs else 0.0
        low = max(min(logs), high - DECADES) if logs else -1.0
        self.scale = (low, high)
        bands = [(index, group) for index, group in enumerate(groups) for _ in range(repeat)]
        text = Text(no_wrap=True, overflow="crop")
        labelled = -1
        for pair in range(0, len(bands), 2):
            upper = bands[pair]
            lower = bands[pair + 1] if pair + 1 < len(bands) else None
            flagged = any(n in history.alerting for n in upper[1] + (lower[1] if lower else []))
            first = upper if upper[0] != labelled else lower
            if first is not None and first[0] != labelled:
                text.append(f"{names.index(first[1][0]):>3}", "bold red" if flagged else "dim")
                labelled = first[0]
            else:
                text.append("   ")
            text.append("! " if flagged else "  ", "bold red")
            for t in range(columns):
                top = _colour(pooled[upper[0]][t], low, high)
                bottom = _colour(pooled[lower[0]][t], low, high) if lower is not None else EMPTY
                text.append("▀", Style(color=top, bgcolor=bottom))
            text.append("\n")
        text.append(f"{'':>{GUTTER}}1e{low:.0f} ", "dim")
        for colour in PALETTE:
            text.append("█", Style(color=colour))
        text.append(f" 1e{high:.0f}", "dim")
        text.append("  ", "dim")
        text.append("█", Style(color=NONFINITE))
        text.append(" NaN/Inf", "dim")
        return text
