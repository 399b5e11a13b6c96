"""The key figures of the run, one per line, readable at a glance in 30 columns."""

from __future__ import annotations

from textual.content import Content
from textual.geometry import Region, Size
from textual.markup import escape
from textual.strip import Strip
from textual.widget import Widget

from optwatch.app import format as fmt
from optwatch.store import Store
from optwatch.summary import shown_metrics

RUN_THROUGHPUT_FROM = 20
"""Steps into the run before its whole throughput is shown beside the median step's."""
METRIC_LABEL_WIDTH = 11
"""As wide as the panel's own longest labels: a metric's name is shortened to it, not the values' room."""


class StatsPanel(Widget):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: dict[str, str] = {}
        """What is on screen, by label (markup stripped), for tests and screen readers alike."""
        self._lines: list[Content] = []
        self._strips: dict[int, Strip] = {}

    def show(self, store: Store) -> None:
        summary = store.summary()
        if summary is None:
            self._draw({"Step": "waiting…"})
            return
        with store.lock:
            state = store.primary
            system = (state.last_system if state is not None else None) or {}
            precision = state.last_step.get("precision") if state is not None and state.last_step else None
            metrics = shown_metrics(store.metrics, width=METRIC_LABEL_WIDTH)
        recent = summary.recent
        rows: dict[str, str] = {}
        rows["Step"] = f"[bold]{summary.step}[/]"
        rows["Loss"] = f"[bold]{fmt.number(summary.loss)}[/]  ema {fmt.number(summary.loss_ema)}"
        for name, loss in list(summary.losses.items())[:3]:  # each optimizer's (a GAN's D and G)
            rows[f" {name[:9]}"] = fmt.number(loss)
        # The training's own figures first, then its speed, then optwatch's cost: at 80x24 the panel shows
        # a dozen rows, and the learning rate and the evaluation's metrics were the ones cut off.
        rows["Grad norm"] = fmt.number(summary.grad_norm, ".3g") + summary.grad_norm_when
        if summary.clipped_share is not None:  # (two rows: one was cut off in the panel's column)
            of = summary.clipped_of
            # (of the finite norms alone, where some were NaN: the clip cut none of those)
            steps = f"last {of}" if of == summary.clipped_among else f"{of} finite"
            rows["Clipped"] = f"{100 * summary.clipped_share:.0f}% of {steps}"
            rows["  at norm"] = f"{summary.clip_max_norm:g}"
        rows["LR"] = fmt.number(summary.lr, ".3g")
        if precision:
            rows["Precision"] = escape(str(precision))
        for metric in metrics:
            rows[metric.label] = f"{fmt.number(metric.value)} @{metric.step}"
        rows["Step time"] = f"{fmt.seconds(recent.step_time_s)} p50"
        rows["Throughput"] = f"{fmt.number(recent.samples_per_s, '.0f')} samples/s" if recent.samples_per_s else "–"
        if summary.run_samples_per_s is not None and summary.steps_in >= RUN_THROUGHPUT_FROM:
            # Evaluations and checkpoints between steps included: the figure a script prints at its end.
            rows["  whole run"] = f"{fmt.number(summary.run_samples_per_s, '.0f')} samples/s"
        rows["Data wait"] = f"{100 * recent.data_wait_share:.0f}%" if recent.data_wait_share is not None else "–"
        cost = summary.cost
        if cost.recent is not None:  # what optwatch itself costs the run: its code and its threads
            rows["optwatch"] = f"{fmt.milliseconds(cost.per_step_s)}/step, {100 * cost.recent:.1f}%"
            if summary.start_cost is not None:
                rows["  first/run"] = f"{100 * summary.start_cost:.1f}% / " + (
                    f"{100 * summary.run_cost:.1f}%" if summary.run_cost is not None else "–"
                )
            if cost.checks_every > 1:  # its --budget spaces out the checks
                rows["Checks"] = f"1 step in {cost.checks_every}"
            if cost.hub_cpu_share is not None:
                rows["Hub"] = f"{100 * cost.hub_cpu_share:.1f}% of a core"
        if "mem_allocated_bytes" in system:
            allocated, total_mem = system["mem_allocated_bytes"], system.get("mem_total_bytes")
            rows["GPU mem"] = f"{fmt.nbytes(allocated)} / {fmt.nbytes(total_mem)}"
        rows["Host RSS"] = fmt.nbytes(system.get("rss_bytes"))
        if system.get("cpu_percent") is not None:
            rows["CPU"] = f"{system['cpu_percent']:.0f}%"
        if summary.ranks > 1:
            rows["Ranks"] = f"{summary.ranks} (figures: rank 0's)"
        self._draw(rows)

    def _draw(self, rows: dict[str, str]) -> None:
        """``rows``: label -> value markup. Repaints only the lines whose text changed."""
        values = {label: Content.from_markup(value) for label, value in rows.items()}
        plain = {label: value.plain for label, value in values.items()}
        if plain == self.rows:
            return
        width = max(len(label) for label in rows)
        lines = [Content.assemble((f"{label:<{width}} ", "dim"), value) for label, value in values.items()]
        changed = [y for y, line in enumerate(lines) if y >= len(self._lines) or line.plain != self._lines[y].plain]
        # The panel is as tall as its rows: only a row coming or going changes the screen's layout.
        relayout = len(plain) != len(self.rows)
        self.rows, self._lines = plain, lines
        self._strips.clear()
        if relayout:
            self.refresh(layout=True)
        else:
            self.refresh(*(Region(0, y, self.size.width, 1) for y in changed))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()  # a new theme: the lines are made again in its colours

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines)

    def render_line(self, y: int) -> Strip:
        # A line at a time, each made once per change: a fast run changes a few figures several times a
        # second, and repainting the whole panel as text (a Static) cost a millisecond and a half each time.
        width = self.size.width
        if y >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        strip = self._strips.get(y)
        if strip is None or strip.cell_length != width:
            segments = self._lines[y].truncate(width, ellipsis=True).render_segments(self.visual_style)
            strip = self._strips[y] = Strip(segments).crop_extend(0, width, self.rich_style)
        return strip
