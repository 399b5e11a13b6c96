"""A line chart of one or more series against the step, drawn with plotext."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from textual.geometry import Region
from textual.strip import Strip
from textual_plotext import PlotextPlot

FALLBACK_WIDTH = 100
# plotext's arithmetic overflows near the ends of the float range (a loss of 1e308, a norm of 1e-320):
# magnitudes beyond these bounds are left out of the picture, as NaN and Inf are.
PLOTTABLE = 1e100


def plottable(value: object) -> bool:
    return isinstance(value, (int, float)) and (value == 0 or 1 / PLOTTABLE <= abs(value) <= PLOTTABLE)


def envelope(xs: Sequence[float], ys: Sequence[float | None], buckets: int) -> tuple[list[float], list[float]]:
    """The plottable points, thinned to the lowest and highest of each of ``buckets`` runs, in step order.

    A braille chart has two dots per column: more points than that only cost plotext time (it draws
    every segment), while keeping each run's extremes keeps the spikes a person looks for.
    """
    pairs = [(x, y) for x, y in zip(xs, ys) if plottable(y)]
    if len(pairs) <= 2 * buckets:
        return [p[0] for p in pairs], [p[1] for p in pairs]
    size = len(pairs) / buckets
    kept: list[tuple[float, float]] = []
    for bucket in range(buckets):
        run = pairs[int(bucket * size) : int((bucket + 1) * size)]
        if run:
            low = min(run, key=lambda p: p[1])
            high = max(run, key=lambda p: p[1])
            kept.extend(sorted({low, high}))
    if kept[-1] != pairs[-1]:
        kept.append(pairs[-1])  # the newest value is always on screen
    return [p[0] for p in kept], [p[1] for p in kept]


def step_ticks(first: float, last: float, most: int) -> list[int]:
    """Whole steps for the x axis: a round stride (1, 2 or 5 times a power of ten), at most ``most`` ticks."""
    low, high = math.ceil(first), math.floor(last)
    if high <= low:
        return [low]
    span = high - low
    stride = 1
    for power in range(0, 16):
        for factor in (1, 2, 5):
            stride = factor * 10**power
            if span / stride <= most - 1:
                start = -(-low // stride) * stride
                return list(range(start, high + 1, stride)) or [low]
    return [low, high]


def step_label(step: int) -> str:
    """A step as a tick label: 950, 12k, 1.5M; never 295002.0."""
    if abs(step) < 10_000:
        return str(step)
    if abs(step) < 1_000_000:
        return f"{step / 1000:g}k"
    return f"{step / 1_000_000:g}M"


class SeriesChart(PlotextPlot):
    def __init__(self, title: str, *, log_y: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.log_y = log_y
        self.series: list[tuple[str, list[float], list[float], str]] = []
        self.markers: list[int] = []
        """Steps at which a control took effect: drawn as vertical lines."""
        self.alert_markers: list[int] = []
        """Steps of alerts (and non-finite values): drawn as vertical lines of their own colour."""
        self._version = 0
        self._cache: tuple[tuple, object] | None = None
        self.draw_cost_s = 0.0
        """How long the last new picture took, plotext and Textual's rendering of it to lines together:
        the dashboard spaces chart redraws by it."""
        self._rebuilt = False
        self.integer_steps = True
        """The x axis counts steps (whole-number ticks); False for another axis (minutes)."""

    def set_series(self, series: list[tuple[str, Sequence[float], Sequence[float | None], str]]) -> None:
        """``series``: (label, steps, values, colour); values that are not ``plottable`` are left out of the picture."""
        self.series = []
        columns = self.size.width or FALLBACK_WIDTH
        for label, xs, ys, colour in series:
            thin_xs, thin_ys = envelope(xs, ys, buckets=columns)
            if self.log_y:
                kept = [(x, y) for x, y in zip(thin_xs, thin_ys) if y > 0]
                thin_xs, thin_ys = [k[0] for k in kept], [k[1] for k in kept]
            self.series.append((label, thin_xs, thin_ys, colour))
        self._version += 1
        self.refresh()

    def render(self):
        # Textual repaints a widget for many reasons (a sibling's layout, a tab switch); plotext is
        # costly, so a picture is only rebuilt when the data, the size or the theme changed.
        markers = (tuple(self.markers), tuple(self.alert_markers))
        key = (self._version, self.title, markers, self.size.width, self.size.height, self.app.theme)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        picture = self._draw()
        self._rebuilt = True
        self._cache = (key, picture)
        return picture

    def render_lines(self, crop: Region) -> list[Strip]:
        # Turning plotext's picture (ANSI text) into lines costs about a third as much again as drawing it.
        started = time.perf_counter()
        lines = super().render_lines(crop)
        if self._rebuilt:
            self._rebuilt = False
            self.draw_cost_s = time.perf_counter() - started
        return lines

    def _draw(self):
        plt = self.plt
        plt.clear_figure()
        # plotext leaves out a title wider than the chart: a baseline's run id made the whole run's title blank.
        room = max((self.size.width or FALLBACK_WIDTH) - 4, 8)
        plt.title(self.title if len(self.title) <= room else self.title[: room - 1] + "…")
        if self.log_y:
            plt.yscale("log")
        drawn = False
        low, high = float("inf"), float("-inf")
        for label, xs, ys, colour in self.series:
            if xs:
                plt.plot(xs, ys, label=label, color=colour, marker="braille")
                low, high = min(low, *ys), max(high, *ys)
                drawn = True
        if drawn:
            first = min(xs[0] for _, xs, _, _ in self.series if xs)
            last = max(xs[-1] for _, xs, _, _ in self.series if xs)
            for steps, colour in ((self.alert_markers, "red"), (self.markers, "magenta")):
                for step in steps:
                    if first <= step <= last:
                        plt.vline(step, colour)
            if self.integer_steps:
                ticks = step_ticks(first, last, max(2, (self.size.width or FALLBACK_WIDTH) // 12))
                plt.xticks(ticks, [step_label(t) for t in ticks])
        if drawn and not self.log_y and high > low:
            # Headroom above the data so the legend never hides the first points.
            plt.ylim(low, high + 0.25 * (high - low))
        if drawn and self.log_y and high >= 100 * low:
            # Over orders of magnitude plotext labels ticks with every digit: label decades instead.
            first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
            stride = max(1, math.ceil((last - first) / 5))
            decades = range(first, last + 1, stride)
            plt.yticks([10.0**k for k in decades], [f"1e{k}" for k in decades])
        if not drawn:
            plt.text("waiting for data", 0.5, 0.5, alignment="center")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        return super().render()
