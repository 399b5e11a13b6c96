"""The training process and its machine: CPU, resident memory, RAM, load."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from optwatch.app import format as fmt
from optwatch.app.sparkline import sparkline
from optwatch.app.widgets.text_panel import TextPanel
from optwatch.protocol import finite

HISTORY = 16


class HostPanel(TextPanel):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("Host", id=id)

    def show(self, systems: list[dict[str, Any]]) -> None:
        if not systems:
            self.set_lines([Text("waiting for the first sample", "dim")])
            return
        last = systems[-1]
        recent = systems[-HISTORY:]
        cores = last.get("cpu_count")
        cpu = last.get("cpu_percent")
        # A process can use 100% per core: scale the history to what this machine allows.
        ceiling = 100.0 * cores if cores else None
        cpu_line = f"CPU  {cpu:4.0f}% " if finite(cpu) else "CPU     – "
        cpu_line += sparkline([s.get("cpu_percent") for s in recent], HISTORY, 0, ceiling)
        used, total = last.get("host_mem_used_bytes"), last.get("host_mem_total_bytes")
        load = last.get("load_avg") or []
        lines: list[Text | str] = [
            cpu_line,
            f"RSS  {fmt.nbytes(last.get('rss_bytes'))} {sparkline([s.get('rss_bytes') for s in recent], 8, None)}",
            f"RAM  {fmt.nbytes(used)}/{fmt.nbytes(total)}",
            f"load {load[0]:.1f} on {cores or '?'} cores" if load else f"{cores or '?'} cores",
            f"threads {last.get('threads', '–')}  torch {last.get('torch_threads') or '–'}",
        ]
        if finite(used) and finite(total) and total and used / total >= 0.95:
            lines[2] = Text(str(lines[2]) + "  nearly full", "bold red")
        self.set_lines(lines)
