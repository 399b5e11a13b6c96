"""Type a control command; it is checked as you type and sent only when it parses.

A learning-rate change of more than 100x the run's last known rate is said as you type, and sent only on
a second Enter, as the confirmed ``COMMAND!``. Nothing typed here can raise: a failure to read
a command, whatever its cause, is an error line in the box.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Static

from optwatch import controls

HELP = "lr=V  lr*=F  lr[G]=V  amp=on|off  cudnn_benchmark=on|off  pause  resume  profile=N  stop"


def _unreadable(exc: Exception) -> str:
    return f"optwatch could not read this command ({type(exc).__name__}: {exc})"


class CommandValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        try:
            controls.parse(value)
        except controls.CommandError as exc:
            return self.failure(str(exc))
        except Exception as exc:  # a bug in the parser shows here as a line; the dashboard goes on
            return self.failure(_unreadable(exc))
        return self.success()


class CommandInput(ModalScreen[str | None]):
    """Dismisses with the command text, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, initial: str = "", current_lr: float | None = None) -> None:
        super().__init__()
        self.initial = initial
        self.current_lr = current_lr
        """Param group 0's learning rate in the run's last step record, if known."""
        self._unconfirmed: str | None = None
        """A command shown as a big change: a second Enter on the same text sends it confirmed."""

    def compose(self) -> ComposeResult:
        with Vertical(id="command-box"):
            yield Static("[b]Command[/b] (applied at the next step boundary)")
            yield Input(value=self.initial, placeholder="lr=0.001", validators=[CommandValidator()], id="command")
            yield Static("", id="command-error", markup=False)
            yield Static(HELP, id="command-help", markup=False)  # (markup would take "[G]" for a tag)

    def on_input_changed(self, event: Input.Changed) -> None:
        self._unconfirmed = None
        result = event.validation_result
        if result is not None and result.is_valid and event.value.strip():
            self._show(self._big_change(event.value.strip()) or "")  # a big change, said before Enter
            return
        self._show("" if result is None or result.is_valid or not event.value else result.failure_descriptions[0])

    def _big_change(self, text: str) -> str | None:
        """Why ``text`` (a command that parses) needs a confirmation, if it does."""
        command = controls.parse(text)
        # The run reports group 0's rate only; another group's change is judged by the probe alone.
        known = self.current_lr if command.group in (None, 0) else None
        return controls.big_change(command, known)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.validation_result is None or not event.validation_result.is_valid:
            return
        text = event.value.strip()
        if text == self._unconfirmed:
            self.dismiss(f"{text}!")
            return
        try:
            reason = self._big_change(text)
        except Exception as exc:
            self._show(_unreadable(exc))
            return
        if reason is None:
            self.dismiss(text)
            return
        self._unconfirmed = text
        self._show(f"{reason}, or press Enter again")

    def _show(self, error: str) -> None:
        self.query_one("#command-error", Static).update(error)

    def action_cancel(self) -> None:
        self.dismiss(None)
