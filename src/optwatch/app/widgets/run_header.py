"""The top line: which run, where, and whether it is still going."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

FIRST_STEP_STATUS = "waiting for the first step"
WAITING_PREFIXES = ("no step for", "no step yet")
"""How ``summary.waiting_text`` begins: the run is live, but no step has ended for a while."""


class RunHeader(Static):
    run_name: reactive[str] = reactive("connecting…")
    """Run id and script."""
    device: reactive[str] = reactive("")
    """Where the model lives, e.g. ``cuda:0 (NVIDIA H200)``."""
    status: reactive[str] = reactive(FIRST_STEP_STATUS)
    """running / finished (exit 0) / crashed (exit 1) / stopping…"""

    def render(self) -> Text:
        style = {"running": "bold green", "stopping…": "bold yellow"}.get(self.status, "bold")
        if self.status.startswith(WAITING_PREFIXES):
            style = "bold yellow"
        if self.status.startswith(("crashed", "failed", "stopped", "disconnected", "hub gone")):
            style = "bold red"
        text = Text.assemble(("● ", style), (self.status, style), "  ", (self.run_name, "cyan"))
        if self.device:
            text.append(f"  {self.device}", "dim")
        return text
