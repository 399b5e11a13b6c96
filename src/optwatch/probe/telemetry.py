"""Step phases and the bottleneck verdict, as a probe plugin.

Phases: forward (global module hooks that time the trained model's root module alone, grad-enabled
calls only, so evaluation under ``no_grad`` falls into "other"), backward (the probe's backward
wrapper) and optimizer (the primary optimizer's step hooks); data wait is the probe's own. On the
CPU each phase is host wall time. On CUDA each boundary also records a CUDA event on the current
stream, and the phase is the device-timeline time between its events, read on the publisher thread
once they completed (``readback.DeviceTime``): never a synchronisation. ``host_phases_s`` keeps the
host's time inside the three phases, which tells launch-bound from sync-bound loops. Only detail
steps are timed (see ``ProbeOptions.budget``); the phases of the steps between them are null.

The verdict runs on the publisher thread (``diagnose.tracker``), where it sees every record in order.
"""

from __future__ import annotations

import time
from threading import get_ident as _thread_id
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

from optwatch.diagnose.tracker import VerdictTracker
from optwatch.probe.plugin import ProbePlugin, being_traced
from optwatch.probe.readback import DeviceTime

if TYPE_CHECKING:
    from optwatch.probe.probe import Probe

TIMED = ("forward_s", "backward_s", "optimizer_s")
UNTIMED = dict.fromkeys(TIMED)


class TelemetryPlugin(ProbePlugin):
    name = "telemetry"
    # Only detail steps are timed (``ProbeOptions.budget``), and only they carry the phase hooks: with any
    # hook, module calls take torch's slower call path, and on a GPU the events behind the phases cost the host
    # more than the rest of the step record. The steps between say their phases are unknown.
    between_detail_steps = frozenset({"after_step"})

    def __init__(self) -> None:
        self.loader: dict[str, Any] = {}
        """Settings of the DataLoader the training iterates (replaced whole, read by the publisher thread)."""
        self._cuda: torch.device | None = None
        self._probe: Probe | None = None
        self._model: torch.nn.Module | None = None
        self._hooks: list[Any] = []
        self._undo: list[Any] = []
        self._depth = 0
        self._reset()

    def install(self, probe: Probe) -> None:
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        self._probe = probe
        plugin = self
        original_init = _BaseDataLoaderIter.__init__

        def iterator_init(iterator, loader, *args, **kwargs):
            original_init(iterator, loader, *args, **kwargs)
            if torch.is_grad_enabled():  # evaluation loaders usually run under no_grad
                plugin.loader = {
                    "num_workers": loader.num_workers,
                    "pin_memory": bool(loader.pin_memory),
                    "batch_size": loader.batch_size,
                    "prefetch_factor": loader.prefetch_factor,
                    "persistent_workers": loader.persistent_workers,
                }

        _BaseDataLoaderIter.__init__ = iterator_init
        self._undo.append(lambda: setattr(_BaseDataLoaderIter, "__init__", original_init))
        # The verdict judges the steps from where the budget applies (before it every step is checked).
        settled_from = probe.options.grad_full_cadence_steps if probe.options.budget > 0 else 0
        tracker = VerdictTracker(probe.rank, loader=lambda: plugin.loader, settled_from=settled_from)
        probe.publisher.add_observer(tracker)
        self._set_hooks(probe.detailed)

    def close(self, probe: Probe) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._unhook()

    # --- phase boundaries (training thread) -------------------------------------------------------
    def _reset(self) -> None:
        self._host = dict.fromkeys(TIMED, 0.0)
        self._device = {phase: DeviceTime() for phase in TIMED} if self._cuda is not None else None
        self._open: dict[str, tuple[float, Any]] = {}
        # A model compiled in place (model.compile()) traces its root's hooks into its graph, where timing
        # cannot go (perf_counter splits the graph; with fullgraph=True it raises): its forward is not
        # timed, and shows as unknown rather than as zero.
        self._measured = {"forward_s": self._model is not None, "backward_s": False, "optimizer_s": False}

    def _event(self) -> Any:
        return DeviceTime.recorded_event(torch.cuda.current_stream(self._cuda))

    def _begin(self, phase: str, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        self._open[phase] = (now, self._event() if self._device is not None else None)

    def _end(self, phase: str) -> None:
        opened = self._open.pop(phase, None)
        if opened is None:
            return
        started, start_event = opened
        self._host[phase] += time.perf_counter() - started
        self._measured[phase] = True
        if start_event is not None and self._device is not None:
            self._device[phase].add(start_event, self._event())

    def _forward_pre(self, module: torch.nn.Module, args: Any) -> None:
        if being_traced() or module is not self._model:  # compiled in place after the hooks were set: _reset
            return
        started = time.perf_counter()
        try:
            self._depth += 1
            if self._depth == 1 and torch.is_grad_enabled():
                self._begin("forward_s", started)
                if self._probe is not None:
                    self._probe.training_thread = _thread_id()  # the step's forward starts on this thread
        except Exception:  # torch calls the root's hooks directly: a failure must not reach the forward
            self._failed()
        self._charge(started)

    def _forward_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if being_traced() or module is not self._model:
            return
        started = time.perf_counter()
        try:
            self._depth -= 1
            if self._depth == 0:
                self._end("forward_s")
        except Exception:
            self._failed()
        self._charge(started)

    def _failed(self) -> None:
        if self._probe is not None:
            self._probe.switch_off(self.name, "its phase hooks")

    def _charge(self, started: float) -> None:
        """The root hooks' own time is optwatch's cost (a copy of the model has no probe to charge)."""
        if self._probe is not None:
            self._probe.own_s += time.perf_counter() - started

    def on_backward_start(self, probe: Probe, loss: torch.Tensor) -> None:
        if self._cuda is None and loss.device.type == "cuda":
            self._cuda = loss.device
            self._device = {phase: DeviceTime() for phase in TIMED}
        self._begin("backward_s")

    def on_backward_end(self, probe: Probe, loss: torch.Tensor) -> None:
        self._end("backward_s")

    def before_optimizer_step(self, probe: Probe, optimizer: torch.optim.Optimizer) -> None:
        self._begin("optimizer_s")

    def after_optimizer_step(self, probe: Probe, optimizer: torch.optim.Optimizer) -> None:
        self._end("optimizer_s")

    def after_step(self, probe: Probe, record: dict[str, Any]) -> None:
        if not probe.detailed:
            record.update(UNTIMED)
        else:
            for phase in TIMED:
                if not self._measured[phase]:
                    record[phase] = None
                elif self._device is not None:
                    record[phase] = self._device[phase] if self._device[phase].spans else 0.0
                else:
                    record[phase] = self._host[phase]
            if self._device is not None:
                record["host_phases_s"] = sum(self._host.values())
        if probe.next_detailed:
            self._watch_model(probe)
        self._set_hooks(probe.next_detailed)
        if probe.detailed or probe.next_detailed:  # a step between detail steps left nothing to clear
            self._reset()

    def _watch_model(self, probe: Probe) -> None:
        """The model whose forward the phase hooks time, for the next step: a new model (or one compiled
        in place since, which is not timed: see ``_reset``) is seen here."""
        model = probe.find_model()
        if getattr(model, "_compiled_call_impl", None) is not None:
            model = None
        self._model = model

    def _set_hooks(self, on: bool) -> None:
        """The phase hooks, there on detail steps only, from the first step on (before the model is known:
        torch.compile keeps one graph for the steps with optwatch's hooks, one for those without). They are
        global module hooks that let every module but the model's root pass, not hooks in the model's own
        tables: those would travel with it into torch.save and pickle files (which then need optwatch to
        load) and into torch.jit.script, which cannot compile them. torch runs global hooks before a
        module's own on both sides: the forward includes the model's root pre-hooks, not its post-hooks."""
        if on and not self._hooks:
            self._hooks = [
                register_module_forward_pre_hook(self._forward_pre),
                register_module_forward_hook(self._forward_post, always_call=True),
            ]
        elif not on and self._hooks:
            self._unhook()

    def _unhook(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._depth = 0
