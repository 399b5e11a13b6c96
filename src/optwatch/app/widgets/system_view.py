"""The System tab: the verdict on top, the step phases under it, then GPU, allocator, host and workers."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll

from optwatch.app.widgets.allocator_panel import AllocatorPanel
from optwatch.app.widgets.gpu_panel import GpuPanel
from optwatch.app.widgets.host_panel import HostPanel
from optwatch.app.widgets.phase_chart import PhaseChart
from optwatch.app.widgets.verdict_panel import VerdictPanel
from optwatch.app.widgets.workers_panel import WorkersPanel
from optwatch.diagnose.tracker import training_samples
from optwatch.store import Store, newest_with

PHASE_STEPS = 120
SYSTEM_SAMPLES = 60


class SystemView(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield VerdictPanel(id="verdict")
        yield PhaseChart(id="phase-chart")
        with Grid(id="system-panels"):
            yield GpuPanel(id="gpu-panel")
            yield AllocatorPanel(id="allocator-panel")
            yield HostPanel(id="host-panel")
            yield WorkersPanel(id="workers-panel")

    def show(self, store: Store) -> None:
        with store.lock:
            state = store.primary
            if state is None:
                return
            steps = newest_with(state.steps, "other_s", PHASE_STEPS)  # the timed steps: detail steps
            systems = list(state.system)[-SYSTEM_SAMPLES:]
            if state.end is not None and state.steps:
                # A run that ended (a replay): its panels as it trained, not its idle last seconds (a final
                # save read "CPU 2%" beside the verdict's 172%), the figures the verdict took.
                systems = training_samples(systems, state.last_step.get("time", 0.0)) or systems
            verdict = state.latest.get("verdict")
        evidence = (verdict or {}).get("evidence") or {}
        loader = {key: evidence[key] for key in ("num_workers", "pin_memory") if key in evidence}
        with self.app.batch_update():
            self.query_one(VerdictPanel).show(verdict)
            self.query_one(PhaseChart).set_steps(steps)
            self.query_one(GpuPanel).show(systems)
            self.query_one(AllocatorPanel).show(systems)
            self.query_one(HostPanel).show(systems)
            self.query_one(WorkersPanel).show(systems, loader)
