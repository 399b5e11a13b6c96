"""Type a rank's number to look at it: any rank of a large job, not only the ones the table lists."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class RankPrompt(ModalScreen[int | None]):
    """Dismisses with the rank, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, ranks: int) -> None:
        super().__init__()
        self.ranks = ranks

    def compose(self) -> ComposeResult:
        with Vertical(id="rank-prompt-box"):
            yield Static(f"[b]Rank[/b] (0 to {self.ranks - 1})")
            yield Input(placeholder="0", type="integer", id="rank-number")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if value.isdigit():
            self.dismiss(int(value))

    def action_cancel(self) -> None:
        self.dismiss(None)
