"""The Gradients tab (key ``g``): alerts, a layers x time heat strip, the global norm, the layer table."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical

from optwatch.app.layer_history import LayerHistory
from optwatch.app.widgets.grad_alerts import GradAlerts
from optwatch.app.widgets.heat_strip import HeatStrip
from optwatch.app.widgets.layer_table import LayerTable
from optwatch.app.widgets.series_chart import SeriesChart
from optwatch.store import Store

CHART_REDRAW_S = 0.5  # plotext is costly; the app may call ``show`` several times a second


class GradientsView(Vertical):
    def __init__(self) -> None:
        super().__init__()
        self.history: LayerHistory | None = None
        self._chart_key: tuple[int, int | None] | None = None
        self._chart_drawn = 0.0

    def compose(self) -> ComposeResult:
        yield GradAlerts(id="grad-alerts")
        with Horizontal(id="grad-top"):
            yield HeatStrip(id="grad-heat")
            yield SeriesChart("Global grad norm", log_y=True, id="grad-global")
        yield LayerTable(id="grad-table")

    def on_show(self) -> None:
        # The tab's keys (t: sort) act on the table: give it the focus whenever the tab comes up.
        self.query_one(LayerTable).focus()

    def show(self, store: Store) -> None:
        with store.lock:
            state = store.primary
            if state is None:
                return
            rank = state.rank
            records = list(store.rare.get("layers", ()))
            last = state.last_step
            chart_key = (len(state.steps), last.get("step") if last else None)
            now = time.monotonic()
            chart_due = chart_key != self._chart_key and now - self._chart_drawn >= CHART_REDRAW_S
            if chart_due:
                steps = [r["step"] for r in state.steps]
                norms = [r.get("grad_norm") for r in state.steps]
                clip = [r.get("clip_max_norm") for r in state.steps]
        if self.history is None or self.history.rank != rank:
            self.history = LayerHistory(rank=rank)
        changed = self.history.update(records)
        with self.app.batch_update():
            self.query_one(GradAlerts).show(store, rank)
            if chart_due:
                self._chart_key, self._chart_drawn = chart_key, now
                series = [("global", steps, norms, "green")]
                if any(value is not None for value in clip):  # the norm is before clipping: where it is cut
                    series.append(("clipped at", steps, clip, "orange"))
                self.query_one("#grad-global", SeriesChart).set_series(series)
            if changed:
                history = self.history
                heat = self.query_one(HeatStrip)
                if history.steps:
                    first, newest = history.steps[0], history.steps[-1]
                    heat.border_title = f"RMS gradient per layer, log scale · steps {first}–{newest}"
                heat.show(history)
                self.query_one(LayerTable).show(history)
