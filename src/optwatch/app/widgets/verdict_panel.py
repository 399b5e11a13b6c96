"""The bottleneck verdict, large: what limits the run, the numbers that say so, and what to try."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from optwatch.app import format as fmt
from optwatch.protocol import finite

STYLES = {
    "input": "bold black on yellow",
    "compute": "bold black on green",
    "host": "bold black on dark_orange",
    "sync": "bold black on dark_orange",
    "memory": "bold white on red",
    "balanced": "bold black on cyan",
}

# (evidence key, label, how to show it), in reading order
_SHARES = [
    ("data_wait_share", "data"),
    ("forward_share", "fwd"),
    ("backward_share", "bwd"),
    ("optimizer_share", "opt"),
    ("other_share", "other"),
]


def _pct(value: object) -> str:
    return f"{100 * value:.0f}%" if finite(value) else "–"  # type: ignore[operator]


def evidence_parts(evidence: dict[str, Any]) -> list[str]:
    """The evidence as short ``label value`` pieces, the step's breakdown first."""
    parts = []
    if "step_time_s" in evidence:
        parts.append(f"step {fmt.seconds(evidence['step_time_s'])}")
    parts += [f"{label} {_pct(evidence[key])}" for key, label in _SHARES if key in evidence]
    timed = evidence.get("timed_steps")
    if isinstance(timed, int) and any(key in evidence for key, _ in _SHARES[1:4]):
        parts.append(f"phases of {timed} timed step{'' if timed == 1 else 's'}")  # the budget spaced them
    if "gpu_util_percent" in evidence:
        parts.append(f"GPU busy {evidence['gpu_util_percent']:.0f}%")
    elif "device_busy_share" in evidence:
        parts.append(f"device busy {_pct(evidence['device_busy_share'])}")
    if "launch_ratio" in evidence:
        parts.append(f"launch/device {evidence['launch_ratio']:.2f}")
    for key, label in (("alloc_retries", "retries"), ("ooms", "OOMs")):
        if evidence.get(key):
            parts.append(f"{label} {evidence[key]}")
    if "peak_mem_share" in evidence:
        parts.append(f"peak mem {_pct(evidence['peak_mem_share'])}")
    if "host_mem_share" in evidence:
        parts.append(f"RAM {_pct(evidence['host_mem_share'])}")
    if "cpu_percent" in evidence:
        cores = f"/{evidence['cpu_count']} cores" if "cpu_count" in evidence else ""
        parts.append(f"CPU {evidence['cpu_percent']:.0f}%{cores}")
    if finite(evidence.get("host_cpu_percent")):  # the whole machine's, other programs included
        parts.append(f"machine {evidence['host_cpu_percent']:.0f}% busy")
        if finite(evidence.get("run_wait_percent")):  # (on a busy one: starved, or asleep?)
            parts.append(f"waits for a core {evidence['run_wait_percent']:.0f}%")
    if evidence.get("workers"):
        busy = evidence.get("workers_cpu_percent")
        parts.append(f"workers {evidence['workers']}" + (f" @ {busy:.0f}%" if finite(busy) else ""))
    return parts


class VerdictPanel(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: list[str] = []
        """The plain text on screen, for tests."""

    def show(self, verdict: dict[str, Any] | None) -> None:
        if not verdict:
            text = Text("Verdict: waiting for a few steps (the first comes after about 5 s)", "dim")
            self.lines = [text.plain]
            self.update(text)
            return
        bottleneck = str(verdict.get("bottleneck", "?"))
        window = verdict.get("window") or ["?", "?"]
        head = Text.assemble(
            (f" {bottleneck.upper()}-BOUND ", STYLES.get(bottleneck, "bold reverse")),
            " ",
            (str(verdict.get("message", "")), "bold"),
        )
        where = f"steps {window[0]}–{window[-1]}" + (", final" if verdict.get("final") else "")
        evidence = Text("  " + " · ".join(evidence_parts(verdict.get("evidence") or {})) + f"  ({where})", "dim")
        tips = [Text.assemble(("  → ", "bold cyan"), tip) for tip in verdict.get("suggestions") or []]
        texts = [head, evidence, *tips]
        self.lines = [t.plain for t in texts]
        self.update(Group(*texts))
