"""Ranks side by side: who is slow, who waits, who is short of memory."""

from __future__ import annotations

import itertools

from textual.widgets import DataTable

from optwatch.app import format as fmt
from optwatch.store import Store
from optwatch.summary import RECENT_STEPS, median, window

COLUMNS = ("Rank", "Step", "Step time", "To backward", "Data wait", "Samples/s", "Loss", "GPU", "CPU", "Memory", "")


def gpu_util(system: dict) -> str:
    """This rank's GPU utilisation from NVML (the device its tensors live on), or a dash."""
    current = next((gpu for gpu in system.get("gpus") or () if gpu.get("current")), None)
    value = current.get("util_percent") if current else None
    return f"{value:.0f}%" if isinstance(value, (int, float)) else "–"


STRAGGLER_RECENT_STEPS = 200


class RanksTable(DataTable):
    def __init__(self) -> None:
        super().__init__(id="ranks-table", cursor_type="row", zebra_stripes=True)
        self.rows_shown: dict[int, tuple[str, ...]] = {}
        """The cells on screen per rank, for tests."""

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def show(self, store: Store) -> None:
        with store.lock:
            alert = next(
                (a for a in reversed(store.rare.get("alert", ())) if a.get("type") == "straggler"),
                None,
            )
            rows = {}
            newest_step = max((s.last_step["step"] for s in store.ranks.values() if s.last_step), default=0)
            for rank, state in sorted(store.ranks.items()):
                last = state.last_step
                if last is None:
                    continue
                recent = list(itertools.islice(reversed(state.steps), RECENT_STEPS))[::-1]
                figures = window(recent)
                to_backward = median(r.get("to_backward_s") for r in recent)
                system = state.last_system or {}
                memory = system.get("mem_allocated_bytes", system.get("rss_bytes"))
                straggler = (
                    alert is not None
                    and alert.get("rank") == rank
                    and newest_step - (alert.get("step") or 0) < STRAGGLER_RECENT_STEPS
                )
                rows[rank] = (
                    str(rank),
                    str(last["step"]),
                    fmt.seconds(figures.step_time_s),
                    fmt.seconds(to_backward),
                    f"{100 * figures.data_wait_share:.0f}%" if figures.data_wait_share is not None else "–",
                    fmt.number(figures.samples_per_s, ".0f"),
                    fmt.number(last.get("loss")),
                    gpu_util(system),
                    f"{system['cpu_percent']:.0f}%" if system.get("cpu_percent") is not None else "–",
                    fmt.nbytes(memory),
                    "◀ straggler" if straggler else "",
                )
        if rows == self.rows_shown:
            return
        self.rows_shown = rows
        self.clear()
        for rank, cells in rows.items():
            self.add_row(*cells, key=str(rank))
