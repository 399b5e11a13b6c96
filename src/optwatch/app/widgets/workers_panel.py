"""The DataLoader's worker processes: how busy each one is."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from optwatch.app import format as fmt
from optwatch.app.sparkline import sparkline
from optwatch.app.widgets.text_panel import TextPanel
from optwatch.protocol import finite

MAX_WORKERS = 6
HISTORY = 10


class WorkersPanel(TextPanel):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("DataLoader workers", id=id)

    def show(self, systems: list[dict[str, Any]], loader: dict[str, Any]) -> None:
        workers = (systems[-1].get("workers") if systems else None) or []
        settings = []
        if "num_workers" in loader:
            settings.append(f"num_workers={loader['num_workers']}")
        if "pin_memory" in loader:
            settings.append(f"pin_memory={'on' if loader['pin_memory'] else 'off'}")
        lines: list[Text | str] = [Text(" ".join(settings), "dim")] if settings else []
        if not workers:
            lines.append("none: batches load on the training thread")
            self.set_lines(lines)
            return
        for worker in workers[:MAX_WORKERS]:
            pid = worker.get("pid")
            history = [
                next((w.get("cpu_percent") for w in s.get("workers") or [] if w.get("pid") == pid), None)
                for s in systems[-HISTORY:]
            ]
            cpu = worker.get("cpu_percent")
            cpu_text = f"{cpu:4.0f}%" if finite(cpu) else "   –"
            rss = fmt.nbytes(worker.get("rss_bytes"))
            lines.append(f"{pid:>7} {cpu_text} {sparkline(history, HISTORY, 0, 100)} {rss}")
        if len(workers) > MAX_WORKERS:
            busy = [w.get("cpu_percent") for w in workers[MAX_WORKERS:] if finite(w.get("cpu_percent"))]
            more = f"+{len(workers) - MAX_WORKERS} more"
            lines.append(f"{more}, {sum(busy) / len(busy):.0f}% CPU each" if busy else more)
        self.set_lines(lines)
