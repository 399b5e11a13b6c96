"""Asks before `q` stops a training run: stop it, leave it running, or go back."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmQuit(ModalScreen[str]):
    """Dismisses with "stop", "detach" or "cancel"."""

    BINDINGS = [
        Binding("y", "choose('stop')", "Stop training and quit"),
        Binding("d", "choose('detach')", "Quit, leave training running"),
        Binding("n,escape", "choose('cancel')", "Cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box"):
            yield Static("[b]Stop the training run and quit?[/b]", id="confirm-title")
            yield Static(
                "[b]y[/b]  stop it (SIGINT, then SIGTERM) and quit\n"
                "[b]d[/b]  quit and leave it running ([i]optwatch attach[/i] later)\n"
                "[b]n[/b]  go back",
                id="confirm-choices",
            )

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)
