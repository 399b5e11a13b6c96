"""What the Overview's charts draw at each zoom, read from the store: the one place these series are made.

Three zooms, cycled with ``z``: the recent steps at full resolution, following the live edge; the wider
window the viewer keeps at full resolution; and the whole run from its first step, downsampled (each point a
bucket's mean, drawn between its lowest and highest, so a spike never disappears).
"""

from __future__ import annotations

from dataclasses import dataclass

from optwatch.protocol import finite
from optwatch.store import STEP_CAPACITY, Store
from optwatch.summary import non_finite_text

RECENT_STEPS = 1000

Series = tuple[str, list[int], list, str]
"""(label, steps, values, colour), as SeriesChart.set_series takes them."""


@dataclass(frozen=True)
class Zoom:
    name: str
    steps: int | None
    """How many of the newest steps it shows; None for the whole run."""

    def title(self, figure: str, first: int | None = None, last: int | None = None) -> str:
        if self.steps is None:
            span = f" (steps {first:,}–{last:,})" if first is not None and last is not None else ""
            return f"{figure} · whole run{span}"
        return f"{figure} · last {self.steps:,} steps"


ZOOMS = (Zoom("recent", RECENT_STEPS), Zoom("wide", STEP_CAPACITY), Zoom("whole", None))


def next_zoom(zoom: Zoom) -> Zoom:
    return ZOOMS[(ZOOMS.index(zoom) + 1) % len(ZOOMS)]


@dataclass(frozen=True)
class Baseline:
    """A past run's loss, drawn faintly under the live curves (``B``)."""

    run_id: str
    steps: list[int]
    loss: list[float | None]

    def within(self, series: list[Series]) -> list[Series]:
        """The baseline over the steps the live lines cover, first (so they are drawn over it)."""
        shown = [xs for _, xs, _, _ in series if xs]
        if not shown or not self.steps:
            return series
        first, last = min(xs[0] for xs in shown), max(xs[-1] for xs in shown)
        points = [(x, y) for x, y in zip(self.steps, self.loss) if first <= x <= last]
        # Its run id is in the title: in the legend, 45 columns wide, it hid the curve's first steps.
        return [("baseline", [p[0] for p in points], [p[1] for p in points], "gray"), *series]


def loss_series(store: Store, zoom: Zoom, baseline: Baseline | None = None) -> tuple[list[Series], str]:
    """The loss chart's lines and title, under them the baseline's. Call with ``store.lock`` held."""
    series, title = _loss_series(store, zoom)
    if baseline is None:
        return series, title
    return baseline.within(series), f"{title} · baseline {baseline.run_id}"


def _loss_series(store: Store, zoom: Zoom) -> tuple[list[Series], str]:
    state = store.primary
    if state is None:
        return [], zoom.title("Loss")
    if zoom.steps is None:
        return _whole(state.whole.series, "loss", "Loss", zoom, extra_prefix="loss:")
    if len(store.ranks) > 1:
        # As torchtitan logs it: the mean over ranks, with the spread.
        steps, mean, low, high = store.loss_across_ranks(limit=zoom.steps)
        # The spread first, so the mean is drawn over it.
        return [("min", steps, low, "gray"), ("max", steps, high, "gray"), ("mean", steps, mean, "cyan")], zoom.title(
            "Loss · mean of ranks"
        )
    records = list(state.steps)[-zoom.steps :]
    ema = list(state.loss_ema)[-zoom.steps :]
    steps = [r["step"] for r in records]
    series: list[Series] = [("loss", steps, [r.get("loss") for r in records], "cyan"), ("ema", steps, ema, "orange")]
    # A script with several optimizers (a GAN): each one's loss on a line of its own.
    last = records[-1] if records else {}
    others = list(last.get("losses") or {})[1:4]
    for name, colour in zip(others, ("magenta", "yellow", "green")):
        series.append((name, steps, [(r.get("losses") or {}).get(name) for r in records], colour))
    return series, zoom.title(_diverged("Loss", records, "loss"))


def grad_series(store: Store, zoom: Zoom) -> tuple[list[Series], str]:
    """The gradient-norm chart's lines and title. Call with ``store.lock`` held."""
    state = store.primary
    if state is None:
        return [], zoom.title("Grad norm")
    if zoom.steps is None:
        return _whole(state.whole.series, "grad_norm", "Grad norm", zoom)
    records = list(state.steps)[-zoom.steps :]
    norms = [r.get("grad_norm") for r in records]
    series: list[Series] = [("global", [r["step"] for r in records], norms, "green")]
    figure = _diverged("Grad norm", records, "grad_norm")
    measured = sum(norm is not None for norm in norms)
    if records and measured < len(records):
        # Measured on detail steps only (unless the script clips): the line joins them, a spike between them
        # is not on it. Said, as the Overview's "Checks 1 step in N" says it.
        return series, f"{figure} · measured on {measured:,} of the last {len(records):,} steps"
    return series, zoom.title(figure)


def _diverged(figure: str, records: list[dict], name: str) -> str:
    """``figure``, with ``NaN since step N`` when the newest measured value is not finite: the chart draws
    no point for it, and a line that just stops reads as a gap."""
    since, newest = None, None
    for record in reversed(records):
        value = record.get(name)
        if value is None:
            continue
        if finite(value):
            break
        since, newest = record["step"], newest if newest is not None else value
    if since is None:
        return figure
    return f"{figure} · {non_finite_text(newest, 'NaN')} since step {since:,}"


def _whole(series: dict, name: str, figure: str, zoom: Zoom, extra_prefix: str | None = None):
    kept = series.get(name)
    if kept is None:
        return [], zoom.title(figure)
    steps, mean, low, high = kept.points()
    # Each point a bucket's mean, drawn over the bucket's lowest and highest.
    lines: list[Series] = [("min", steps, low, "gray"), ("max", steps, high, "gray"), ("mean", steps, mean, "cyan")]
    if extra_prefix:
        others = [key for key in series if key.startswith(extra_prefix)][1:4]
        for key, colour in zip(others, ("magenta", "yellow", "green")):
            other_steps, other_mean, _, _ = series[key].points()
            lines.append((key.removeprefix(extra_prefix), other_steps, other_mean, colour))
    return lines, zoom.title(figure, kept.first_step() if steps else None, kept.newest_step())


def markers(store: Store) -> tuple[list[int], list[int]]:
    """Steps to mark on the charts: controls that took effect, and alerts (with NaN steps), at any zoom.
    Call with ``store.lock`` held."""
    controls = [
        e["effective_step"]
        for e in store.rare.get("event", ())
        if e.get("status") == "accepted" and e.get("rank", 0) == 0 and isinstance(e.get("effective_step"), int)
    ]
    alerts = {a["step"] for a in store.rare.get("alert", ()) if isinstance(a.get("step"), int)}
    state = store.primary
    if state is not None and "loss" in state.whole.series:
        alerts.update(state.whole.series["loss"].nonfinite_steps())
    return controls, sorted(alerts)
