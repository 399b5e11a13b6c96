"""Controls applied inside the training process, at step boundaries, the same step on every rank.

Requests arrive on rank 0's publisher thread (from the dashboard or `optwatch ctl`) and scheduled ones
come from ``--control COMMAND@STEP``. The training thread applies them at the next step boundary; with
several ranks, rank 0 picks a step a little ahead and tells the others over the side channel, so all
replicas change at the same step. Every outcome is an ``event`` record.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import statistics
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from optwatch import controls, protocol
from optwatch.probe.plugin import ProbePlugin
from optwatch.probe.probe import learning_rate

if TYPE_CHECKING:
    from optwatch.probe.probe import Probe

log = logging.getLogger(__name__)

# Under DDP, rank 0 schedules a live command this far ahead so every rank hears of it in time.
AGREEMENT_HORIZON_S = 0.25
MIN_AHEAD_STEPS = 2
MAX_AHEAD_STEPS = 200

# What torch.backends.cudnn.benchmark reads, without its Python property in between: each step record
# carries the setting (the script may change it too), and the property costs ten times the read.
_cudnn_benchmark = getattr(torch._C, "_get_cudnn_benchmark", None) or (lambda: bool(torch.backends.cudnn.benchmark))


@dataclass(order=True)
class Scheduled:
    step: int
    order: int
    text: str = field(compare=False)
    id: str = field(compare=False)
    source: str = field(compare=False)


def bf16_supported(device: torch.device) -> bool:
    """Whether autocast can use bf16 here: CPUs and Ampere or newer GPUs (V100s and T4s cannot)."""
    return device.type == "cpu" or torch.cuda.is_bf16_supported()


class Amp:
    """Autocast around forward and loss: entered at a step boundary, left when backward() starts.

    bf16 where the device supports it (CPU, Ampere and newer GPUs): nothing else is needed. Elsewhere
    fp16, with dynamic loss scaling done here like torch.amp.GradScaler (which needs one sync per step
    to decide whether to skip an overflowing step, as GradScaler does).
    """

    def __init__(self) -> None:
        self.enabled = False
        self.device_type = "cpu"
        self.dtype: torch.dtype | None = None
        self._context: torch.autocast | None = None
        self.scale: torch.Tensor | None = None
        self._growth_tracker: torch.Tensor | None = None

    @staticmethod
    def choose_dtype(device: torch.device) -> torch.dtype:
        if device.type not in ("cpu", "cuda"):
            raise controls.CommandError(f"AMP is not supported on {device.type} by optwatch")
        return torch.bfloat16 if bf16_supported(device) else torch.float16

    def turn_on(self, device: torch.device) -> None:
        self.dtype = self.choose_dtype(device)
        self.device_type = device.type
        self.enabled = True
        if self.dtype == torch.float16 and self.scale is None:
            # Kept across off/on toggles so the scale does not restart from scratch.
            self.scale = torch.full((), 2.0**16, device=device)
            self._growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.enter()

    def turn_off(self) -> None:
        self.enabled = False
        self.leave()

    def enter(self) -> None:
        if self.enabled and self._context is None:
            self._context = torch.autocast(self.device_type, dtype=self.dtype)
            self._context.__enter__()

    def leave(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    @property
    def scaling(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def unscale_or_skip(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """fp16 only: unscale gradients; on overflow drop them so the optimizer skips this step and
        return the scale that overflowed (the step is then reported like a GradScaler skip)."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads or self.scale is None:
            return None
        found_inf = torch.zeros((), device=self.scale.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, self.scale.reciprocal())
        overflow = bool(found_inf.item())  # the one sync fp16 scaling needs, as in GradScaler.step
        used_scale = self.scale.detach().clone() if overflow else None
        torch._amp_update_scale_(self.scale, self._growth_tracker, found_inf, 2.0, 0.5, 2000)
        if used_scale is None:
            return None
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        return used_scale


class ControlPlugin(ProbePlugin):
    name = "controls"
    idle_callbacks = frozenset({"on_backward_end"})  # until AMP is turned on: see _set_idle_callbacks

    def __init__(self, scheduled: list[str]):
        self.amp = Amp()
        self.paused = False
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._schedule: list[Scheduled] = []
        self._requests: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=256)
        self._step_times: collections.deque[float] = collections.deque(maxlen=20)
        self._schedulers: list[weakref.ref[Any]] = []
        """The LR schedulers made so far, weakly (refs, not a WeakSet: a scheduler class may be unhashable)."""
        # (step, {group index: lr}) set at a boundary, re-asserted in that step's optimizer pre-hook in
        # case the script's scheduler.step() ran in between (it usually runs right after optimizer.step()).
        self._lr_pin: tuple[int, dict[int, float]] | None = None
        self._overflowed: tuple[int, torch.Tensor] | None = None  # (step, loss scale) of an fp16 skip
        self._undo_scheduler_hook = None
        self._closed = False
        for text in scheduled:
            command, step = controls.parse_scheduled(text)
            self._add(step, command, f"s{next(self._ids)}", "schedule")

    # --- lifecycle -----------------------------------------------------------------------------
    def install(self, probe: Probe) -> None:
        self.probe = probe
        if probe.rank == 0:
            probe.publisher.on_request("control", self._request)
        probe.on_step_boundary(self._boundary)
        self._watch_schedulers()
        self._apply_due(probe, stage="start")

    def close(self, probe: Probe) -> None:
        # Also when switched off mid-run for a bug: autocast that optwatch turned on, it turns off, as
        # nothing of optwatch would leave it at backward() or scale the loss any more.
        self._closed = True
        self.amp.turn_off()
        self.amp.leave()
        if self._undo_scheduler_hook is not None:
            self._undo_scheduler_hook()
            self._undo_scheduler_hook = None

    def _watch_schedulers(self) -> None:
        """Remember LR schedulers as they are made, so a manual LR change can carry the schedule along."""
        from torch.optim.lr_scheduler import LRScheduler

        original_init = LRScheduler.__init__
        schedulers = self._schedulers

        def init(scheduler, *args, **kwargs):
            original_init(scheduler, *args, **kwargs)
            schedulers[:] = [ref for ref in schedulers if ref() is not None]
            schedulers.append(weakref.ref(scheduler))

        LRScheduler.__init__ = init

        def undo():
            LRScheduler.__init__ = original_init

        self._undo_scheduler_hook = undo

    # --- requests (publisher thread) -----------------------------------------------------------------
    def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        text = str(request.get("command", ""))
        request_id = f"c{next(self._ids)}"
        source = str(request.get("source", "ctl"))
        try:
            controls.parse(text)
        except controls.CommandError as exc:
            self.probe.publisher.submit_records([self._event(text, "rejected", str(exc), None, request_id, source)])
            return {"ok": False, "error": str(exc), "id": request_id}
        self._requests.append((text, request_id, source))
        return {"ok": True, "id": request_id, "status": "queued"}

    # --- the training thread ----------------------------------------------------------------------
    def _add(self, step: int, text: str, command_id: str, source: str) -> None:
        self._schedule.append(Scheduled(step, next(self._order), text, command_id, source))
        self._schedule.sort()

    def _ahead(self) -> int:
        """Steps of margin for a live command under DDP: enough for the side channel to reach every rank."""
        if self.paused or not self._step_times:
            return 0 if self.paused else MIN_AHEAD_STEPS
        step_time = max(statistics.median(self._step_times), 1e-4)
        return min(MAX_AHEAD_STEPS, max(MIN_AHEAD_STEPS, math.ceil(AGREEMENT_HORIZON_S / step_time)))

    def _take_new_commands(self, probe: Probe) -> None:
        while self._requests:  # rank 0: decide the step, tell the other ranks
            text, command_id, source = self._requests.popleft()
            step = probe.step + (self._ahead() if probe.world_size > 1 else 0)
            if probe.world_size > 1:
                probe.publisher.broadcast_control({"command": text, "id": command_id, "step": step, "source": source})
            self._add(step, text, command_id, source)
        inbox = probe.publisher.control_inbox
        while inbox:  # other ranks: rank 0's decisions
            decision = inbox.popleft()
            self._add(int(decision["step"]), str(decision["command"]), str(decision["id"]), str(decision["source"]))

    def after_step(self, probe: Probe, record: dict[str, Any]) -> None:
        record["amp"] = self.amp.enabled
        if self._overflowed is not None:
            if self._overflowed[0] == record["step"]:
                record.update(amp_overflow=True, amp_scale=self._overflowed[1])
            self._overflowed = None
        record["cudnn_benchmark"] = _cudnn_benchmark()
        if isinstance(record.get("step_time_s"), float):
            self._step_times.append(record["step_time_s"])

    def _set_idle_callbacks(self, probe: Probe) -> None:
        """``on_backward_end`` only while AMP is on: every step pays for a callback it is given."""
        idle = frozenset() if self.amp.enabled else frozenset({"on_backward_end"})
        if idle != self.idle_callbacks:
            self.idle_callbacks = idle
            probe.retabulate()

    def on_backward_end(self, probe: Probe, loss: torch.Tensor) -> None:
        # Back into autocast: what runs before the next optimizer step (the next micro-batch's forward under
        # gradient accumulation, a GAN's other model) is autocast too, not only the first forward.
        self.amp.enter()

    def on_backward_start(self, probe: Probe, loss: torch.Tensor) -> torch.Tensor | None:
        self.amp.leave()  # backward runs outside autocast, as recommended
        if self.amp.enabled and self.amp.scaling and self.amp.scale is not None:
            return loss * self.amp.scale.to(loss.dtype)
        return None

    def before_optimizer_step(self, probe: Probe, optimizer: torch.optim.Optimizer) -> None:
        if self._schedule:
            self._apply_due(probe, stage="optimizer")  # LR commands for step 0 wait for the optimizer
        if self._lr_pin is not None:
            step, pinned = self._lr_pin
            self._lr_pin = None
            if step == probe.step:
                for index, value in pinned.items():
                    self._rescale_group(optimizer, index, value)
        if self.amp.enabled and self.amp.scaling:
            skipped_at_scale = self.amp.unscale_or_skip(optimizer)
            if skipped_at_scale is not None:
                self._overflowed = (probe.step, skipped_at_scale)

    def _boundary(self, probe: Probe) -> float:
        """Apply what is due; while paused, hold the run here. Returns the seconds it was held."""
        if self._closed:
            return 0.0
        if self._schedule or self._requests or probe.publisher.control_inbox:  # else _apply_due has nothing to do
            self._apply_due(probe, stage="boundary")
        held = 0.0
        if self.paused:
            paused_at = time.perf_counter()
            while self.paused:
                probe.flush()
                time.sleep(0.05)
                self._apply_due(probe, stage="boundary")
            held = time.perf_counter() - paused_at
        self.amp.enter()
        return held

    @staticmethod
    def _ready(name: str | None, stage: str) -> bool:
        """Whether a command due now can be applied at this point of the step.

        LR changes need the optimizer (before the first step it may not exist: they wait for its first
        step() call, which then uses the new value). AMP needs the model's device: before the first
        step that is only certain on a machine without CUDA; otherwise it waits for the first boundary.
        """
        if stage == "boundary" or name is None:
            return True
        if name == "lr":
            return stage == "optimizer"
        if name == "amp":
            return stage == "start" and not torch.cuda.is_available()
        return stage == "start"

    def _apply_due(self, probe: Probe, stage: str) -> None:
        if stage != "optimizer":  # live commands start at a boundary, so the whole step sees them
            self._take_new_commands(probe)
        while self._schedule and self._schedule[0].step <= probe.step:
            command = controls.parse_or_none(self._schedule[0].text)
            if not self._ready(command.name if command else None, stage):
                return  # commands apply in order: the rest waits too
            self._apply(probe, self._schedule.pop(0))

    def _apply(self, probe: Probe, due: Scheduled) -> None:
        late = due.step < probe.step
        try:
            command = controls.parse(due.text)
            detail = self._execute(probe, command)
        except controls.CommandError as exc:
            probe.emit(self._event(due.text, "rejected", str(exc), None, due.id, due.source))
            probe.flush()
            return
        if late:
            detail = f"{detail}; late: meant for step {due.step}".strip("; ")
        probe.emit(self._event(due.text, "accepted", detail, probe.step, due.id, due.source))
        probe.flush()
        if command.name == "stop":
            raise KeyboardInterrupt(f"optwatch: stopped by request at step {probe.step}")

    def _event(self, text, status, reason, effective_step, command_id, source) -> dict[str, Any]:
        return protocol.make_record(
            protocol.EVENT,
            self.probe.rank,
            command=text,
            status=status,
            reason=reason,
            effective_step=effective_step,
            id=command_id,
            source=source,
        )

    def _execute(self, probe: Probe, command: controls.Command) -> str:
        if command.name == "lr":
            return self._set_lr(probe, command)
        if command.name == "amp":
            if command.value:
                device = self._device(probe)
                self.amp.turn_on(device)
                self._set_idle_callbacks(probe)
                return f"autocast {str(self.amp.dtype).removeprefix('torch.')} on {device.type}"
            self.amp.turn_off()
            self._set_idle_callbacks(probe)
            return "autocast off"
        if command.name == "cudnn_benchmark":
            torch.backends.cudnn.benchmark = bool(command.value)
            return ""
        if command.name == "pause":
            self.paused = True
            return "paused at the step boundary"
        if command.name == "resume":
            if not self.paused:
                raise controls.CommandError("the run is not paused")
            self.paused = False
            return ""
        if command.name == "profile":
            for plugin in probe.plugins:
                request_window = getattr(plugin, "request_window", None)
                if request_window is not None:
                    reply = request_window(int(command.value), reason="control")
                    if not reply.get("ok"):
                        raise controls.CommandError(str(reply.get("error")))
                    return str(reply.get("message", ""))
            raise controls.CommandError("the profiler is not available in this optwatch")
        if command.name == "stop":
            return "stopping (KeyboardInterrupt at the step boundary)"
        raise controls.CommandError(f"unknown command {command.raw!r}")

    def _device(self, probe: Probe) -> torch.device:
        params = probe._parameters()
        if params:
            return params[0].device
        model = probe.find_model()
        if model is not None:
            first = next(model.parameters(), None)
            if first is not None:
                return first.device
        return torch.device("cpu")

    def _set_lr(self, probe: Probe, command: controls.Command) -> str:
        optimizer = probe._primary_optimizer
        if optimizer is None:
            raise controls.CommandError("no optimizer has stepped yet")
        groups = optimizer.param_groups
        if command.group is not None and command.group >= len(groups):
            raise controls.CommandError(
                f"the optimizer has {len(groups)} param group(s) (0-{len(groups) - 1}), not {command.group}"
            )
        indices = [command.group] if command.group is not None else range(len(groups))
        for index in indices:  # before any change: a command applies to all its groups or to none
            lr = groups[index].get("lr")
            if isinstance(lr, bool) or learning_rate(lr) is None:
                raise controls.CommandError(
                    f"param group {index}'s learning rate is {type(lr).__name__} {lr!r}, not one number: "
                    "optwatch leaves it to the optimizer"
                )
        changes = []
        pinned = {}
        for index in indices:
            old = float(groups[index]["lr"])
            new = old * float(command.value) if command.scale else float(command.value)
            self._rescale_group(optimizer, index, new)
            pinned[index] = new
            changes.append(f"group {index}: {old:.3g} -> {new:.3g}")
        self._lr_pin = (probe.step, pinned)
        return "; ".join(changes)

    def _rescale_group(self, optimizer: torch.optim.Optimizer, index: int, new: float) -> None:
        """Set a group's lr; its schedule continues from the new level (base values scale by new/old)."""
        group = optimizer.param_groups[index]
        old = float(group["lr"])
        if old == new:
            return
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(new)
        else:
            group["lr"] = new
        if old > 0:
            factor = new / old
            for key in ("initial_lr", "max_lr", "min_lr"):
                if isinstance(group.get(key), (int, float)):
                    group[key] = group[key] * factor
            for scheduler in (ref() for ref in self._schedulers):
                if scheduler is not None and scheduler.optimizer is optimizer and index < len(scheduler.base_lrs):
                    scheduler.base_lrs[index] *= factor
