"""The key figures of the run, one per line, readable at a glance in 30 columns."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from optwatch.app import format as fmt
from optwatch.store import Store


class StatsPanel(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: dict[str, str] = {}
        """What is on screen, by label (markup stripped), for tests and screen readers alike."""

    def show(self, store: Store) -> None:
        table = Table.grid(padding=(0, 1))
        table.add_column(style="dim", no_wrap=True)
        table.add_column(no_wrap=True)
        with store.lock:
            state = store.primary
            last = state.last_step if state else None
            if last is None:
                self.rows = {"Step": "waiting…"}
                table.add_row("Step", "waiting…")
                self.update(table)
                return
            recent = list(state.steps)[-20:]
            ema = state.loss_ema[-1] if state.loss_ema else None
            step_time = fmt.median([r.get("step_time_s") for r in recent])
            rate = fmt.median([r.get("samples_per_s") for r in recent])
            wait = sum(r.get("data_wait_s") or 0.0 for r in recent)
            total = sum(r.get("step_time_s") or 0.0 for r in recent)
            system = state.last_system or {}
            metric = store.latest.get("metric")
            hello = state.hello

        rows = table.add_row

        def add_row(label: str, value: str) -> None:
            self.rows[label] = Text.from_markup(value).plain
            rows(label, value)

        previous, self.rows = self.rows, {}
        table.add_row = add_row  # type: ignore[method-assign]
        table.add_row("Step", f"[bold]{last['step']}[/]")
        table.add_row("Loss", f"[bold]{fmt.number(last.get('loss'))}[/]  ema {fmt.number(ema)}")
        table.add_row("Step time", f"{fmt.seconds(step_time)} p50")
        table.add_row("Throughput", f"{fmt.number(rate, '.0f')} samples/s" if rate else "–")
        table.add_row("Data wait", f"{100 * wait / total:.0f}%" if total > 0 else "–")
        table.add_row("Grad norm", fmt.number(last.get("grad_norm"), ".3g"))
        table.add_row("LR", fmt.number(last.get("lr"), ".3g"))
        if "mem_allocated_bytes" in system:
            table.add_row(
                "GPU mem",
                f"{fmt.nbytes(system['mem_allocated_bytes'])} / {fmt.nbytes(system.get('mem_total_bytes'))}",
            )
        table.add_row("Host RSS", fmt.nbytes(system.get("rss_bytes")))
        if system.get("cpu_percent") is not None:
            table.add_row("CPU", f"{system['cpu_percent']:.0f}%")
        if metric:
            for name, value in list(metric.get("values", {}).items())[:3]:
                table.add_row(name[:10], f"{fmt.number(value)} @{metric.get('step')}")
        if hello.get("world_size", 1) > 1:
            table.add_row("Ranks", str(len(store.ranks)))
        if self.rows != previous:
            self.update(table)
