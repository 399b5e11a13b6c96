"""The gradient alerts of the run, newest first: what went wrong, at which step, in which layers."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from optwatch.diagnose.gradients import ALERT_TYPES
from optwatch.store import Store

MAX_LINES = 3
STYLES = {"error": "bold red", "warning": "bold yellow", "info": "cyan"}


class GradAlerts(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[str] = []
        """The plain text on screen, for tests."""

    def show(self, store: Store, rank: int) -> None:
        with store.lock:
            alerts = [a for a in store.rare.get("alert", ()) if a.get("type") in ALERT_TYPES and a.get("rank") == rank]
        text = Text()
        lines = []
        for alert in reversed(alerts[-MAX_LINES:]):
            line = f"{alert.get('type')} @ step {alert.get('step', '?')}: {alert.get('message', '')}"
            text.append("● " if alert.get("severity") == "info" else "⚠ ", STYLES.get(alert.get("severity"), "red"))
            text.append(line + "\n")
            lines.append(line)
        if not lines:
            text.append("✓ no gradient alerts", "green")
        elif len(alerts) > MAX_LINES:
            lines.append(f"(+{len(alerts) - MAX_LINES} earlier)")
        self.lines = lines
        text.rstrip()
        self.update(text)
