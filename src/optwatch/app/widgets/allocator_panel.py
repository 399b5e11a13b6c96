"""PyTorch's CUDA caching allocator: what is allocated, held, fragmented, and whether allocations had to retry."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from optwatch.app import format as fmt
from optwatch.app.sparkline import sparkline
from optwatch.app.widgets.text_panel import TextPanel

HISTORY = 16


class AllocatorPanel(TextPanel):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("Allocator", id=id)

    def show(self, systems: list[dict[str, Any]]) -> None:
        last = systems[-1] if systems else {}
        if "mem_allocated_bytes" not in last:
            self.set_lines([Text("no CUDA allocator", "bold"), Text("(CPU training, or no step yet)", "dim")])
            return
        self.border_title = f"Allocator cuda:{last.get('mem_device', '?')}"
        total = last.get("mem_total_bytes")
        allocated = [s.get("mem_allocated_bytes") for s in systems[-HISTORY:]]
        frag, free = fmt.nbytes(last.get("mem_fragmentation_bytes")), fmt.nbytes(last.get("mem_headroom_bytes"))
        retries, ooms = last.get("mem_alloc_retries"), last.get("mem_ooms")
        pressure = Text(f"retries {retries if retries is not None else '–'}  OOMs {ooms if ooms is not None else '–'}")
        if retries or ooms:
            pressure.stylize("bold red")
        self.set_lines(
            [
                f"alloc    {fmt.nbytes(last['mem_allocated_bytes'])} {sparkline(allocated, HISTORY, 0, total)}",
                f"reserved {fmt.nbytes(last.get('mem_reserved_bytes'))}  peak {fmt.nbytes(last.get('mem_peak_bytes'))}",
                f"frag     {frag}  free {free}",
                pressure,
            ]
        )
