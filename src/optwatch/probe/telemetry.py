"""Where a step's time goes, without a hook on any module: forward, backward and optimizer phases.

The phases are cut at points the probe sees anyway, so timing them costs a clock read at each (and on a
GPU an event), not a hook on every module call:

    forward_s    from the first module call after the last thing before it (the step's start, its batch
                 arriving, the previous micro-batch's backward ending) to the last return, before
                 ``backward()``, of a module the loop calls itself (the model, a loss module, a teacher).
                 What the loop does before the first call (batches made in the loop, an EMA update,
                 logging) and after that return (a loss computed by a function, nanoGPT's get_batch) is
                 ``other_s``, and so are many calls without gradients before the first with them (an RL
                 rollout: its policy's calls were the step's forward, 150 ms of a 166 ms step). On a
                 detail step a global module pre-hook is set between such calls only, and a module
                 called gets a forward hook for that call only: torch's slow path for the loop's
                 own module calls, never for the modules inside them, and no hook travels with the model.
                 Not for a model wrapped by ``torch.compile(model)``, which warns of global hooks: its
                 forward is timed from the mark to ``backward()``
    backward_s   ``backward()`` calls
    optimizer_s  the primary optimizer's ``step()`` (less the forward and backward a closure runs inside it)

``data_wait_s`` is the probe's own, and ``other_s`` (the rest) is added by the hub's verdict. On a CPU each
phase is host wall time. On CUDA each cut also records a CUDA event on the current stream, and the phase
is the device-timeline time between its events, read once they completed (``readback.DeviceTime``): never
a synchronisation. ``host_phases_s`` keeps the host's time inside the three phases, which tells
launch-bound from sync-bound loops. Only detail steps are timed (see ``governor``); the phases of the
steps between are null.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from optwatch.probe.model import compiled_whole
from optwatch.probe.plugin import ProbeContext, ProbePlugin, being_traced
from optwatch.probe.readback import DeviceTime

TIMED = ("forward_s", "backward_s", "optimizer_s")
UNTIMED = dict.fromkeys(TIMED)
LOOP_CALLS = 5
"""A module called this many times without gradients before the first call with them is a loop's (an RL
rollout's policy, an evaluation over batches): the forward starts after it. Fewer are the forward's (a
teacher on two views, or on a batch in chunks; several teachers once each)."""


class TelemetryPlugin(ProbePlugin):
    name = "telemetry"
    between_detail_steps = frozenset()  # (the step before a detail step gets after_step)

    def __init__(self) -> None:
        self._cuda: torch.device | None = None
        self._reset()
        self._mark: tuple[float, Any] | None = None
        """(host time, CUDA event or None) of the last cut before a forward."""
        self._forward_began: tuple[float, Any] | None = None
        """The same, at the first module call after the mark (the forward's start)."""
        self._batch_marked = False
        """The mark is a batch's arrival (the first since the last backward or step)."""
        self._training_forward = False
        """The forward that began since the mark has gradients on (not an evaluation's)."""
        self._no_grad_called: dict[int, int] | None = {}
        """Loop-level module calls without gradients since the forward began, before one with them."""
        self._awaiting_forward: Any = None
        """The global module pre-hook's handle while it waits for the loop's next module call."""
        self._forward_ended: tuple[float, Any] | None = None
        """The same, at the last return of a module the loop called (the forward's end so far)."""
        self._awaiting_return: Any = None
        """The forward hook's handle on the module the loop is calling, during that call."""
        self._context: ProbeContext | None = None
        self._model_seen: torch.nn.Module | None = None
        self._model_plain = False

    def _reset(self) -> None:
        self._host = dict.fromkeys(TIMED, 0.0)
        self._device = {phase: DeviceTime() for phase in TIMED} if self._cuda is not None else None
        self._measured = dict.fromkeys(TIMED, False)
        self._optimizer_began: tuple[float, Any] | None = None
        self._backward_began: tuple[float, Any] | None = None
        self._nested_s = 0.0
        """Forward and backward inside the optimizer's step (a closure), taken out of optimizer_s."""

    def _now(self) -> tuple[float, Any]:
        event = DeviceTime.recorded_event(torch.cuda.current_stream(self._cuda)) if self._device is not None else None
        return time.perf_counter(), event

    def _add(self, phase: str, began: tuple[float, Any], ended: tuple[float, Any]) -> float:
        seconds = ended[0] - began[0]
        self._host[phase] += seconds
        self._measured[phase] = True
        if self._device is not None and began[1] is not None and ended[1] is not None:
            self._device[phase].add(began[1], ended[1])
        return seconds

    def _set_mark(self, now: tuple[float, Any] | None = None) -> None:
        """A cut before a forward: the forward starts at the next module call."""
        self._mark = now or self._now()
        self._no_forward_yet()
        self._stop_awaiting_return()
        if self._awaiting_forward is None and self._plain_model():
            self._awaiting_forward = register_module_forward_pre_hook(self._call_begins)

    def _plain_model(self) -> bool:
        """The model is known, and not compiled whole: ``torch.compile(model)``'s wrapper warns the script of a
        global hook, and ``model.compile()`` traces it, where it cannot time. Otherwise the forward is timed
        from the mark."""
        model = self._context.find_model() if self._context is not None else None
        if model is not self._model_seen:
            self._model_seen = model
            self._model_plain = model is not None and not compiled_whole(model)
        return self._model_plain

    def _stop_awaiting(self) -> None:
        handle, self._awaiting_forward = self._awaiting_forward, None
        if handle is not None:
            handle.remove()

    def _stop_awaiting_return(self) -> None:
        handle, self._awaiting_return = self._awaiting_return, None
        if handle is not None:
            handle.remove()

    def _forget_forward(self) -> None:
        """No forward under way, none awaited: a backward began, or the next step is not timed."""
        self._stop_awaiting()
        self._stop_awaiting_return()
        self._no_forward_yet()

    def _no_forward_yet(self) -> None:
        """Since the mark (or now), no forward began, and no batch marked it."""
        self._forward_began = self._forward_ended = None
        self._training_forward = self._batch_marked = False
        self._no_grad_called = {}

    def _call_begins(self, module: torch.nn.Module, args: Any) -> None:
        """A module called by the loop itself (none of optwatch's hooks is set inside a module's call)."""
        # (Traced by torch.compile, a constant: no clock read, no removal in the graph; a later call outside.)
        if being_traced() or self._awaiting_forward is None:
            return
        if not self._on_training_thread():
            return  # another thread's forward (an evaluation or actor thread)
        if self._forward_began is None:
            self._forward_began = self._now()
            self._training_forward = torch.is_grad_enabled()
            self._no_grad_called = {} if self._training_forward else {id(module): 1}
        elif not self._training_forward:
            # Calls without gradients before the first with them: a distillation's teachers are the forward's; a
            # module called again and again is a loop's (LOOP_CALLS), the step's other work.
            if not torch.is_grad_enabled():
                if self._no_grad_called is not None:
                    calls = self._no_grad_called[id(module)] = self._no_grad_called.get(id(module), 0) + 1
                    if calls >= LOOP_CALLS:
                        self._no_grad_called = None  # (a loop: no need to count more)
            else:
                self._training_forward = True
                if self._no_grad_called is None:
                    self._forward_began = self._now()
        self._stop_awaiting()  # the module's own calls inside take torch's fast path
        # Its return, even by an exception, ends the forward so far. The hook is the module's only during
        # this call: none travels with the model into torch.save or deepcopy.
        self._awaiting_return = module.register_forward_hook(self._call_returns, always_call=True)

    def _call_returns(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        # The forward ends at the last return of a module the loop called before backward(): the model's, a
        # loss module's, a teacher's after the student. What the loop does after it (a loss computed by a
        # function, nanoGPT's get_batch making the next batch, logging) is other_s.
        if self._awaiting_return is None or not self._on_training_thread():
            return
        self._stop_awaiting_return()
        if output is None and sys.exc_info()[1] is not None:
            # The call raised (a loop that skips a bad batch: ``except BadBatch: continue``): no forward of
            # the step's; the next batch starts one, and its wait is not the forward's.
            self._no_forward_yet()
        else:
            self._forward_ended = self._now()
        self._awaiting_forward = register_module_forward_pre_hook(self._call_begins)  # another may follow

    def _on_training_thread(self) -> bool:
        training = self._context.training_thread if self._context is not None else None
        return training is None or threading.get_ident() == training

    def on_batch(self, context: ProbeContext) -> None:
        # Only the first batch since the last backward (or step) starts a forward: one taken after a training
        # forward began, or after another batch (nanoGPT's prefetch of the next batch before backward(), a
        # loader's look-ahead), is the next micro-batch's or step's, and the forward under way keeps its start.
        if not self._batch_marked and not self._training_forward:
            self._set_mark()  # (after an evaluation's forward without gradients too: the step starts here)
            self._batch_marked = True

    def on_backward_start(self, context: ProbeContext, loss: torch.Tensor) -> None:
        if self._cuda is None and loss.device.type == "cuda":
            self._cuda = loss.device
            self._device = {phase: DeviceTime() for phase in TIMED}
            self._mark = self._forward_began = None  # a host-only mark cannot open a device span
        now = self._now()
        began = self._forward_began or self._mark
        ended = self._forward_ended or now
        self._forget_forward()
        if began is not None:
            self._add("forward_s", began, ended)
            if self._optimizer_began is not None:  # a closure's: none of it is the optimizer's
                self._nested_s += now[0] - began[0]
        self._backward_began = now

    def on_backward_end(self, context: ProbeContext, loss: torch.Tensor) -> None:
        now = self._now()
        if self._backward_began is not None:
            backward = self._add("backward_s", self._backward_began, now)
            if self._optimizer_began is not None:
                self._nested_s += backward
            self._backward_began = None
        self._set_mark(now)  # (a micro-batch's forward may follow)

    def before_optimizer_step(self, context: ProbeContext, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer_began = self._now()
        self._nested_s = 0.0

    def after_optimizer_step(self, context: ProbeContext, optimizer: torch.optim.Optimizer) -> None:
        if self._optimizer_began is not None:
            self._add("optimizer_s", self._optimizer_began, self._now())
            self._host["optimizer_s"] -= self._nested_s
            self._optimizer_began = None

    def install(self, context: ProbeContext) -> None:
        self._context = context
        context.set_step_fields(**UNTIMED)  # a step between detail steps is not timed; a detail step says

    def close(self, context: ProbeContext) -> None:
        self._stop_awaiting()
        self._stop_awaiting_return()

    def after_step(self, context: ProbeContext, record: dict[str, Any]) -> None:
        if context.detailed:
            for phase in TIMED:
                if not self._measured[phase]:
                    record[phase] = None
                elif self._device is not None:
                    record[phase] = self._device[phase] if self._device[phase].spans else 0.0
                else:
                    record[phase] = self._host[phase]
            if self._device is not None:
                record["host_phases_s"] = sum(self._host.values())
        lazy = not self._measured["optimizer_s"]  # no optimizer: the step ended at the next one's backward
        if context.detailed or context.next_detailed:  # a step between detail steps left nothing to clear
            self._reset()
        # The next step starts now; its first forward is timed from here unless a batch arrives first (in
        # a loop without an optimizer, from the end of the last backward, which is where it began).
        if not context.next_detailed:
            self._mark = None
            self._forget_forward()
        elif lazy and context.primary_optimizer is None and self._mark is None:
            # No optimizer: this step ended at the next one's backward(), whose forward has run, untimed; it
            # stays unknown (a mark now would time the microseconds since as the forward). With a DataLoader
            # the step ended at the next batch instead, whose arrival marks the forward's start.
            self._forget_forward()
        elif not (lazy and self._mark is not None):
            self._set_mark()
