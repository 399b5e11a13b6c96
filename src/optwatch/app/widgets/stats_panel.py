"""The key figures of the run, one per line, readable at a glance in 30 columns."""

from __future__ import annotations

from textual.content import Content
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widget import Widget

from optwatch.app import format as fmt
from optwatch.store import Store, last_known, share_of_step_time


class StatsPanel(Widget):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: dict[str, str] = {}
        """What is on screen, by label (markup stripped), for tests and screen readers alike."""
        self._lines: list[Content] = []
        self._strips: dict[int, Strip] = {}

    def show(self, store: Store) -> None:
        with store.lock:
            state = store.primary
            last = state.last_step if state else None
            if last is None:
                self._draw({"Step": "waiting…"})
                return
            recent = list(state.steps)[-20:]
            ema = state.loss_ema[-1] if state.loss_ema else None
            step_time = fmt.median([r.get("step_time_s") for r in recent])
            rate = fmt.median([r.get("samples_per_s") for r in recent])
            wait = sum(r.get("data_wait_s") or 0.0 for r in recent)
            total = sum(r.get("step_time_s") or 0.0 for r in recent)
            own = fmt.median([r.get("optwatch_s") for r in recent])
            own_share = share_of_step_time(recent, "optwatch_s")
            grad_norm = last_known(state.steps, "grad_norm")  # measured on detail steps only: see --budget
            system = state.last_system or {}
            metric = store.latest.get("metric")
            hello = state.hello

        rows: dict[str, str] = {}
        rows["Step"] = f"[bold]{last['step']}[/]"
        rows["Loss"] = f"[bold]{fmt.number(last.get('loss'))}[/]  ema {fmt.number(ema)}"
        rows["Step time"] = f"{fmt.seconds(step_time)} p50"
        rows["Throughput"] = f"{fmt.number(rate, '.0f')} samples/s" if rate else "–"
        rows["Data wait"] = f"{100 * wait / total:.0f}%" if total > 0 else "–"
        if own_share is not None:  # what optwatch itself costs the run, on its training thread
            rows["optwatch"] = f"{fmt.milliseconds(own)}/step, {100 * own_share:.1f}%"
            if (last.get("detail_every") or 1) > 1:  # its --budget spaces out the checks
                rows["Checks"] = f"1 step in {last['detail_every']}"
        rows["Grad norm"] = fmt.number(grad_norm, ".3g")
        rows["LR"] = fmt.number(last.get("lr"), ".3g")
        if "mem_allocated_bytes" in system:
            allocated, total_mem = system["mem_allocated_bytes"], system.get("mem_total_bytes")
            rows["GPU mem"] = f"{fmt.nbytes(allocated)} / {fmt.nbytes(total_mem)}"
        rows["Host RSS"] = fmt.nbytes(system.get("rss_bytes"))
        if system.get("cpu_percent") is not None:
            rows["CPU"] = f"{system['cpu_percent']:.0f}%"
        if metric:
            for name, value in list(metric.get("values", {}).items())[:3]:
                rows[name[:10]] = f"{fmt.number(value)} @{metric.get('step')}"
        if hello.get("world_size", 1) > 1:
            rows["Ranks"] = str(len(store.ranks))
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
