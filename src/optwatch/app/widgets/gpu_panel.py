"""Each visible NVIDIA GPU: utilisation and memory with their recent history, temperature, power, clock, throttling."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from optwatch.app import format as fmt
from optwatch.app.sparkline import sparkline
from optwatch.app.widgets.text_panel import TextPanel
from optwatch.protocol import finite

MAX_DEVICES = 4
HISTORY = 16
# Reasons that slow a busy GPU down; "idle" only means there was nothing to do.
_HARMFUL = {"power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "power_brake"}


def _percent(value: object) -> str:
    return f"{value:3.0f}%" if finite(value) else "  –"


class GpuPanel(TextPanel):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("GPU", id=id)

    def show(self, systems: list[dict[str, Any]]) -> None:
        if not systems:
            self.set_lines([Text("waiting for the first sample", "dim")])
            return
        last = systems[-1]
        status = last.get("gpu_status", "ok")
        if status != "ok" or not last.get("gpus"):
            reason = str(status).partition(" (")
            self.set_lines(
                [
                    Text(reason[0] or "no NVIDIA GPU", "bold"),
                    Text(f"({reason[2]}" if reason[2] else "", "dim"),
                    Text("The other panels still work.", "dim"),
                ]
            )
            return
        lines: list[Text | str] = []
        gpus = last["gpus"]
        for gpu in gpus[:MAX_DEVICES]:
            index = gpu.get("index")
            history = [self._device(s, index) for s in systems[-HISTORY:]]
            head = Text(f"GPU{index} ", "bold")
            head.append(str(gpu.get("name") or ""), "cyan")
            if gpu.get("current"):
                head.append(" ◀ this run", "green")
            lines.append(head)
            utils = [g.get("util_percent") if g else None for g in history]
            lines.append(f" util {_percent(gpu.get('util_percent'))} {sparkline(utils, HISTORY, 0, 100)}")
            used, total = gpu.get("mem_used_bytes"), gpu.get("mem_total_bytes")
            memory = [g.get("mem_used_bytes") if g else None for g in history]
            lines.append(f" mem  {fmt.nbytes(used)}/{fmt.nbytes(total)} {sparkline(memory, 8, 0, total)}")
            lines.append(self._vitals(gpu))
            throttle = [reason for reason in gpu.get("throttle") or [] if reason in _HARMFUL]
            if throttle:
                lines.append(Text(f" throttled: {', '.join(throttle)}", "bold red"))
        if len(gpus) > MAX_DEVICES:
            lines.append(Text(f"+{len(gpus) - MAX_DEVICES} more devices", "dim"))
        self.set_lines(lines)

    @staticmethod
    def _device(system: dict[str, Any], index: object) -> dict[str, Any] | None:
        return next((g for g in system.get("gpus") or [] if g.get("index") == index), None)

    @staticmethod
    def _vitals(gpu: dict[str, Any]) -> str:
        parts = []
        if finite(gpu.get("temperature_c")):
            parts.append(f"{gpu['temperature_c']:.0f}°C")
        if finite(gpu.get("power_w")):
            limit = gpu.get("power_limit_w")
            parts.append(f"{gpu['power_w']:.0f}/{limit:.0f} W" if finite(limit) else f"{gpu['power_w']:.0f} W")
        if finite(gpu.get("sm_clock_mhz")):
            parts.append(f"{gpu['sm_clock_mhz']:.0f} MHz")
        if finite(gpu.get("process_mem_bytes")):
            parts.append(f"run {fmt.nbytes(gpu['process_mem_bytes'])}")
        return " " + "  ".join(parts) if parts else " –"
