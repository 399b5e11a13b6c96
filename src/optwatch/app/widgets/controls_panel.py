"""Every command and its outcome, and for the latest change: the steps before against the steps after."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from optwatch.app import format as fmt
from optwatch.diagnose.impact import change as percent_change
from optwatch.diagnose.impact import compare
from optwatch.store import Store


class ControlsPanel(Vertical):
    def __init__(self) -> None:
        super().__init__(id="controls-panel")
        self.impact_rows: dict[str, tuple[str, str, str]] = {}
        """The before/after table on screen, by figure, for tests."""
        self._events_shown = 0

    def compose(self) -> ComposeResult:
        yield Static("No change yet: keys a (AMP), b (cudnn.benchmark), space (pause), : (any command)", id="impact")
        table = DataTable(id="events-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("Step", "Command", "Status", "Detail", "From")
        yield table

    def show(self, store: Store) -> None:
        with store.lock:
            events = [e for e in store.rare.get("event", ()) if e.get("rank", 0) == 0]
            state = store.primary
            steps = list(state.steps) if state else []
        table = self.query_one("#events-table", DataTable)
        if len(events) != self._events_shown:
            self._events_shown = len(events)
            table.clear()
            for event in reversed(events):
                step = event.get("effective_step")
                cells = (
                    "–" if step is None else str(step),
                    event.get("command", ""),
                    event.get("status", ""),
                    event.get("reason", "") or "",
                    event.get("source", "") or "",
                )
                # Text, not markup: a command is what someone typed ("[/b]" is refused, and shown as it is).
                table.add_row(*(Text(cell) for cell in cells))
        latest = next((e for e in reversed(events) if e.get("status") == "accepted"), None)
        if latest is None or latest.get("effective_step") is None:
            return
        before, after = compare(steps, latest["effective_step"])
        rows = {
            "Step time p50": (fmt.seconds(before.step_time_s), fmt.seconds(after.step_time_s),
                              percent_change(before.step_time_s, after.step_time_s)),
            "Samples/s": (fmt.number(before.samples_per_s, ".0f"), fmt.number(after.samples_per_s, ".0f"),
                              percent_change(before.samples_per_s, after.samples_per_s)),
            "Loss mean": (fmt.number(before.loss_mean), fmt.number(after.loss_mean), ""),
            "Loss trend /100 steps": (fmt.number(before.loss_slope_per_100, "+.3g"),
                                      fmt.number(after.loss_slope_per_100, "+.3g"), ""),
        }  # fmt: skip
        self.impact_rows = rows
        grid = Table(title=Text(f"{latest['command']} @ step {latest['effective_step']}: before vs after"), expand=True)
        grid.add_column("")
        grid.add_column(f"{before.steps} steps before", justify="right")
        grid.add_column(f"{after.steps} steps after", justify="right")
        grid.add_column("change", justify="right")
        for name, cells in rows.items():
            grid.add_row(name, *cells)
        self.query_one("#impact", Static).update(grid)
