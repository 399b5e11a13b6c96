"""Picks a recorded run (``optwatch runs``) as the baseline drawn faintly under the live loss curve."""

from __future__ import annotations

import time

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from optwatch.runs import RunEntry


class RunPicker(ModalScreen[str | None]):
    """Dismisses with the chosen run's id, "" for no baseline, or None (escape: nothing changes)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, entries: list[RunEntry], current: str | None) -> None:
        super().__init__()
        self.entries = entries
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box"):
            yield Static("[b]Baseline: a past run drawn under the live loss curve[/b]", id="picker-title")
            options = [Option("no baseline", id="none")]
            for index, entry in enumerate(reversed(self.entries)):  # newest first
                summary = entry.summary
                started = time.strftime("%m-%d %H:%M", time.localtime(summary.get("start") or 0))
                loss_text = "no loss" if entry.loss_text == "-" else f"loss {entry.loss_text}"
                mark = "● " if entry.run_id == self.current else "  "
                label = f"{mark}{entry.run_id}  {started}  {summary.get('steps', 0)} steps  {loss_text}  {entry.status}"
                options.append(Option(label, id=str(len(self.entries) - 1 - index)))
            yield OptionList(*options, id="picker-list")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        chosen = event.option.id
        self.dismiss("" if chosen == "none" else self.entries[int(chosen)].run_id)

    def action_cancel(self) -> None:
        self.dismiss(None)
