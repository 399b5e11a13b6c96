"""What needs attention: the latest verdict with the first change it suggests, and the newest alerts, in a
few lines above the log."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from optwatch.diagnose.bottleneck import bound_text
from optwatch.store import Store
from optwatch.summary import alert_text

MAX_ALERTS = 3
ERRORS_FIRST_STEPS = 200
"""An error alert (exploding, NaN) this many steps old or newer comes before the verdict."""


class FindingsBar(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[str] = []
        """The plain text on screen, for tests (the suggestion's ``→`` written ``try:``)."""

    def show(self, store: Store) -> None:
        with store.lock:
            # The shown rank's, as on the System tab and beside the Overview's figures (rank 0's): any rank's
            # newest put rank 1's "input-bound" over rank 0's figures and its System tab's other verdict.
            verdict = store.primary.latest.get("verdict") if store.primary is not None else None
            alerts = list(store.rare.get("alert", ()))[-MAX_ALERTS:]
            event = next((e for e in reversed(store.rare.get("event", ())) if e.get("rank", 0) == 0), None)
            newest = store.primary.last_step["step"] if store.primary and store.primary.steps else None
        text = Text()
        lines = []

        def add_alert(alert: dict) -> None:
            line = alert_text(alert)
            text.append("⚠ ", "bold red")
            text.append(line + "\n", "red")
            lines.append(line)

        # A run that blew up or went NaN lately: its newest such alert first, before how fast it goes (a
        # diverging run's compute-bound verdict stood above the alert, which the bar's last line cut off).
        newest_first = list(reversed(alerts))
        urgent = next(
            (
                a for a in newest_first
                if a.get("severity") == "error" and isinstance(a.get("step"), int) and newest is not None
                and newest - a["step"] <= ERRORS_FIRST_STEPS
            ),
            None,
        )  # fmt: skip
        if urgent is not None:
            add_alert(urgent)
        if verdict:
            line = f"{bound_text(verdict)}: {verdict.get('message', '')}"
            text.append("▶ ", "bold")
            text.append(line + "\n", "bold yellow" if verdict.get("bottleneck") != "balanced" else "green")
            lines.append(line)
            tips = verdict.get("suggestions") or []
            if tips and urgent is None:  # what to change (not how to go faster, under an explosion or a NaN)
                text.append("→ ", "bold cyan")
                text.append(f"{tips[0]}\n")
                lines.append(f"try: {tips[0]}")
        for alert in newest_first:
            if alert is not urgent:
                add_alert(alert)
        if event:
            if event.get("status") == "accepted":
                detail = f" ({event['reason']})" if event.get("reason") else ""
                line = f"{event.get('command')} in effect from step {event.get('effective_step')}{detail}"
                text.append("✓ ", "bold green")
                text.append(line + "\n", "green")
            else:
                line = f"{event.get('command')} rejected: {event.get('reason')}"
                text.append("✗ ", "bold red")
                text.append(line + "\n", "red")
            lines.append(line)
        if lines == self.lines and self.display == bool(lines):
            return  # nothing new: no repaint, no relayout
        self.lines = lines
        self.display = bool(lines)
        text.rstrip()  # (the last line's newline was an empty row under it)
        self.update(text)
