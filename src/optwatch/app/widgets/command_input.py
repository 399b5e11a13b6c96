"""Type a control command; it is checked as you type and sent only when it parses."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Static

from optwatch import controls

HELP = "lr=V  lr*=F  lr[G]=V  amp=on|off  cudnn_benchmark=on|off  pause  resume  profile=N  stop"


class CommandValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        try:
            controls.parse(value)
        except controls.CommandError as exc:
            return self.failure(str(exc))
        return self.success()


class CommandInput(ModalScreen[str | None]):
    """Dismisses with the command text, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, initial: str = "") -> None:
        super().__init__()
        self.initial = initial

    def compose(self) -> ComposeResult:
        with Vertical(id="command-box"):
            yield Static("[b]Command[/b] (applied at the next step boundary)")
            yield Input(value=self.initial, placeholder="lr=0.001", validators=[CommandValidator()], id="command")
            yield Static("", id="command-error")
            yield Static(HELP, id="command-help")

    def on_input_changed(self, event: Input.Changed) -> None:
        error = self.query_one("#command-error", Static)
        result = event.validation_result
        error.update("" if result is None or result.is_valid or not event.value else result.failure_descriptions[0])

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.validation_result is not None and event.validation_result.is_valid:
            self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
