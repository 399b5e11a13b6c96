"""Every command and its outcome; for a change of the training (the highlighted row's, else the latest), the
steps before against the steps after; and the highlighted command's detail, whole."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from optwatch.app import format as fmt
from optwatch.diagnose.impact import change as percent_change
from optwatch.diagnose.impact import compare
from optwatch.store import Store

CHANGES = ("lr", "amp", "cudnn_benchmark")
"""Commands that change the training, whose before and after are worth comparing (not pause, profile, stop)."""


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def changes_training(event: dict[str, Any]) -> bool:
    """An accepted command that changes how the run trains, from a step on."""
    name = str(event.get("command", "")).split("=", 1)[0].split("[", 1)[0].rstrip("*")
    return event.get("status") == "accepted" and name in CHANGES and event.get("effective_step") is not None


class ControlsPanel(Vertical):
    def __init__(self) -> None:
        super().__init__(id="controls-panel")
        self.impact_rows: dict[str, tuple[str, str, str]] = {}
        """The before/after table on screen, by figure, for tests."""
        self.compared: dict[str, Any] | None = None
        """The command the table compares."""
        self._events: list[dict[str, Any]] = []
        """The events as the table lists them, newest first."""
        self._highlighted: dict[str, Any] | None = None
        self._store: Store | None = None

    def compose(self) -> ComposeResult:
        yield Static("No change yet: keys a (AMP), b (cudnn.benchmark), space (pause), : (any command)", id="impact")
        table = DataTable(id="events-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("Step", "Command", "Status", "From", "Detail")  # (the long one last: it is cut)
        yield table
        yield Static("", id="event-detail")

    def on_show(self) -> None:
        # The arrows pick a command at once, without tabbing into the table first.
        self.query_one("#events-table", DataTable).focus()

    def show(self, store: Store) -> None:
        self._store = store
        with store.lock:
            events = [e for e in store.rare.get("event", ()) if e.get("rank", 0) == 0]
            state = store.primary
            steps = list(state.steps) if state else []
        table = self.query_one("#events-table", DataTable)
        if len(events) != len(self._events):
            self._events = list(reversed(events))
            self._list(table)
        self._compare(steps)

    def _list(self, table: DataTable) -> None:
        # The cursor this puts on a row (the first row's, the one kept under the new rows) is nobody's choice:
        # told as a highlight, it read as the user's and held the before/after on an old command for good.
        with table.prevent(DataTable.RowHighlighted):
            row = table.cursor_row
            table.clear()
            for event in self._events:
                step = event.get("effective_step")
                cells = (
                    "–" if step is None else str(step),
                    event.get("command", ""),
                    event.get("status", ""),
                    event.get("source", "") or "",
                    event.get("reason", "") or "",
                )
                # Text, not markup: a command is what someone typed ("[/b]" is refused, and shown as it is).
                table.add_row(*(Text(cell) for cell in cells))
            if self._highlighted is not None and self._highlighted in self._events:
                table.move_cursor(row=self._events.index(self._highlighted))  # (the new rows came on top)
            elif 0 <= row < len(self._events):
                table.move_cursor(row=row)

    def on_data_table_row_highlighted(self, message: DataTable.RowHighlighted) -> None:
        if not 0 <= message.cursor_row < len(self._events):
            return
        self._highlighted = self._events[message.cursor_row]
        reason = self._highlighted.get("reason") or ""
        command = self._highlighted.get("command", "")
        self.query_one("#event-detail", Static).update(Text(f"{command}: {reason}" if reason else ""))
        if self._store is not None:
            with self._store.lock:
                steps = list(self._store.primary.steps) if self._store.primary else []
            self._compare(steps)

    def _compare(self, steps: list[dict[str, Any]]) -> None:
        chosen = self._highlighted if self._highlighted is not None and changes_training(self._highlighted) else None
        compared = chosen or next((e for e in self._events if changes_training(e)), None)
        if compared is None:
            return
        self.compared = compared
        # Each side only the steps under this command alone: not the previous change's, nor the next one's.
        at = compared["effective_step"]
        others = [e["effective_step"] for e in self._events if changes_training(e)]
        since = max((step for step in others if step < at), default=None)
        until = min((step for step in others if step > at), default=None)
        alone = [s for s in steps if (since is None or s["step"] >= since) and (until is None or s["step"] < until)]
        before, after = compare(alone, at)
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
        which = "" if chosen is not None else " (the latest change; highlight another to compare it)"
        title = Text(f"{compared['command']} @ step {compared['effective_step']}: before vs after{which}")
        grid = Table(title=title, expand=True)
        grid.add_column("")
        grid.add_column(f"{counted(before.steps, 'step')} before", justify="right")
        grid.add_column(f"{counted(after.steps, 'step')} after", justify="right")
        grid.add_column("change", justify="right")
        for name, cells in rows.items():
            grid.add_row(name, *cells)
        self.query_one("#impact", Static).update(grid)
