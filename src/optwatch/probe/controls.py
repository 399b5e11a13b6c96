"""Controls applied inside the training process, at step boundaries, the same step on every rank.

Commands reach rank 0 through the hub (from the dashboard or `optwatch ctl`, checked there first), and
scheduled ones come from ``--control COMMAND@STEP``. The training thread applies them at the next step
boundary; with several ranks, rank 0 picks a step a little ahead and tells the others through the hub, so
all replicas change at the same step. Every outcome is an ``event`` record.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from optwatch import controls, protocol
from optwatch.probe.plugin import ProbeContext, ProbePlugin

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
        self._thread: int | None = None
        """The thread that entered ``_context``."""
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
            self._thread = threading.get_ident()

    def leave_on_this_thread(self) -> None:
        """Leave it if this thread entered it (autocast is a thread's state): a notebook's cell ended, and the
        next cell may be no training (an evaluation ran in bf16). The next step's boundary enters it again."""
        if self._context is not None and self._thread == threading.get_ident():
            self.leave()

    def leave(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)

    @property
    def scaling(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def unscale_or_skip(self, params: list[torch.Tensor]) -> torch.Tensor | None:
        """fp16 only: unscale the gradients of the step's parameters (the primary optimizer's and its
        partners'); on overflow drop them so the optimizers skip this step and return the scale that
        overflowed (the step is then reported like a GradScaler skip)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads or self.scale is None:
            return None
        found_inf = torch.zeros((), device=self.scale.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, self.scale.reciprocal())
        overflow = bool(found_inf.item())  # the one sync fp16 scaling needs, as in GradScaler.step
        used_scale = self.scale.detach().clone() if overflow else None
        torch._amp_update_scale_(self.scale, self._growth_tracker, found_inf, 2.0, 0.5, 2000)
        if used_scale is None:
            return None
        for param in params:
            param.grad = None
        return used_scale


def _changed_in_place(held: _HeldRate, value: float, step: int) -> bool:
    """Whether the script's new rate ``value`` is a change made on the rate held (``*= 0.5``), not a rate of
    its own schedule to scale. Its own: it assigns step after step (nanoGPT's ``get_lr``), or assigned its own
    last rate again (an epoch's ``adjust_learning_rate``). Else, a one-off change: the reading under which the
    script's own rate moves least (a decay in place halves the rate held; a schedule's own values move
    from its own last one); once one was read as the script's own, so are the ones after it (an anneal once
    a rollout: its later steps, 0.25 after 0.375, came nearer the held rate and were taken for decays)."""
    if value <= 0 or held.last_set <= 0 or held.factor <= 0:
        return False
    own_last = held.last_set / held.factor
    if math.isclose(value, own_last, rel_tol=1e-9):
        held.schedule = True
        return False
    if held.schedule or (held.changed_at is not None and step - held.changed_at <= 1):
        held.schedule = True
        return False
    in_place = abs(math.log(value / held.last_set)) < abs(math.log(value / own_last))
    held.schedule = not in_place
    return in_place


@dataclass
class _HeldRate:
    """A learning rate set by command, held against the script's own assignments to ``param_group["lr"]``
    (nanoGPT's ``get_lr``): each value the script assigns is scaled by ``factor``, as a scheduler's base is."""

    factor: float
    last_set: float
    last_object: Any = None
    """The very object set (a float): the script's assignment of an equal value is a new one."""
    schedule: bool = False
    """The script assigns rates of its own step after step (or assigned its own rate again): each is scaled."""
    changed_at: int | None = None
    """The step at which the script last changed the rate."""


class ControlPlugin(ProbePlugin):
    name = "controls"
    idle_callbacks = frozenset(
        {"on_batch", "on_backward_start", "on_backward_end", "before_optimizer_step", "after_step", "at_boundary"}
    )
    """While nothing is due and AMP is off: see ``_idle_now``."""

    def __init__(self, scheduled: list[str], profile: Callable[..., dict[str, Any]] | None = None):
        """``profile(steps, reason=...)``: asks the profiler for a window (the reply says when, or why not)."""
        self.amp = Amp()
        self.paused = False
        self.pause_until: float | None = None
        """With ``pause=SECONDS``: when the pause ends by itself (a lease, ``time.monotonic()``)."""
        self._profile = profile
        self._order = itertools.count()
        self._ids = itertools.count(1)
        self._schedule: list[Scheduled] = []
        self._seen_ids: collections.deque[str] = collections.deque(maxlen=1024)
        # (step, {group index: lr}) set at a boundary, re-asserted in that step's optimizer pre-hook in
        # case the script's scheduler.step() ran in between (it usually runs right after optimizer.step()).
        self._lr_pin: tuple[int, dict[int, float]] | None = None
        self._lr_waiting: list[Scheduled] = []
        """``lr=V`` commands due at this step, taken at its boundary, that the last step's rate cannot judge
        (``_rate_of_its_own_step``): judged at the step's first batch or backward, against the rate the step
        would use (the scheduler's or the script's, set since): a warm-up's 0 refused `lr=V@1`, a cosine
        restart's jump from its floor read as 149x."""
        self._held_rates: dict[int, _HeldRate] = {}
        self._partner_rates: weakref.WeakKeyDictionary[torch.optim.Optimizer, dict[int, _HeldRate]] = (
            weakref.WeakKeyDictionary()
        )
        """The same for the primary's partners (lr*=F scales them too), each stepping after it."""
        self._overflowed: tuple[int, torch.Tensor] | None = None  # (step, loss scale) of an fp16 skip
        self._script_autocast = False
        """The steps trained under an autocast of the script's own (seen while optwatch's amp was off)."""
        self._closed = False
        self.context: ProbeContext | None = None
        self._fields: tuple[bool, bool] | None = None
        """(AMP on, cudnn.benchmark) as the step records carry them (``context.set_step_fields``)."""
        self._stop_before: int | None = None
        """A ``stop`` applied at the boundary before this step: raised at its first batch or backward."""
        for text in scheduled:
            command, step = controls.parse_scheduled(text)
            self._add(step, command, f"s{next(self._ids)}", "schedule")
        self.idle_callbacks = self._idle_now()

    # --- lifecycle -----------------------------------------------------------------------------
    def install(self, context: ProbeContext) -> None:
        self.context = context
        self._apply_due(context, stage="start")

    def close(self, context: ProbeContext) -> None:
        # Also when switched off mid-run for a bug: autocast that optwatch turned on, it turns off, as
        # nothing of optwatch would leave it at backward() or scale the loss any more.
        self._closed = True
        self.amp.turn_off()
        self.amp.leave()
        # A command scheduled past the last step (`--control lr=0.001@20` on a 15-step run) is said, not lost.
        for due in [*self._lr_waiting, *self._schedule]:
            reached = f"the run was watched to step {context.step - 1}" if context.step else "no step was made"
            reason = f"never applied: it was due at step {due.step}, and {reached}"
            context.emit(self._event(due.text, "rejected", reason, None, due.id, due.source))
        self._schedule.clear()
        self._lr_waiting.clear()

    def cell_ended(self, context: ProbeContext) -> None:
        """A notebook's cell ended (``probe.notebook``): optwatch's autocast does not reach into the next cell."""
        self.amp.leave_on_this_thread()

    # --- the training thread ----------------------------------------------------------------------
    def _add(self, step: int, text: str, command_id: str, source: str) -> None:
        self._schedule.append(Scheduled(step, next(self._order), text, command_id, source))
        self._schedule.sort()

    def _ahead(self) -> int:
        """Steps of margin for a live command under DDP: enough for the side channel to reach every rank."""
        step_time = self.context.median_step_s if self.context is not None else None
        if self.paused or step_time is None:
            return 0 if self.paused else MIN_AHEAD_STEPS
        step_time = max(step_time, 1e-4)
        return min(MAX_AHEAD_STEPS, max(MIN_AHEAD_STEPS, math.ceil(AGREEMENT_HORIZON_S / step_time)))

    def _take_new_commands(self, context: ProbeContext) -> None:
        inbox = context.commands
        while inbox:
            message = inbox.popleft()
            command_id = str(message.get("id", ""))
            if command_id in self._seen_ids:
                continue  # the hub sends a command again until rank 0's event answers it
            self._seen_ids.append(command_id)
            text, source = str(message.get("command", "")), str(message.get("source", "ctl"))
            if "step" in message:  # another rank: rank 0's decision
                step = message["step"]
                if isinstance(step, int) and not isinstance(step, bool):
                    self._add(step, text, command_id, source)
                continue
            # Rank 0: decide the step; tell the other ranks.
            step = context.step + (self._ahead() if context.world_size > 1 else 0)
            if context.world_size > 1:
                context.send_decision({"command": text, "id": command_id, "step": step, "source": source})
            self._add(step, text, command_id, source)

    def after_step(self, context: ProbeContext, record: dict[str, Any]) -> None:
        if self._overflowed is not None:  # (only under AMP)
            if self._overflowed[0] == record["step"]:
                record.update(amp_overflow=True, amp_scale=self._overflowed[1])
            self._overflowed = None

    def sample(self, context: ProbeContext, system: dict[str, Any]) -> list[dict[str, Any]]:
        self._note_fields(context)  # the script may set cudnn.benchmark itself
        return []

    def _note_fields(self, context: ProbeContext) -> None:
        fields = (self.amp.enabled, _cudnn_benchmark())
        if fields != self._fields:
            self._fields = fields
            context.set_step_fields(amp=fields[0], cudnn_benchmark=fields[1])

    def _idle_now(self) -> frozenset[str]:
        """The callbacks with nothing to do at any step for now: every step pays for a callback it is given,
        and a step's end that no plugin needs costs least of all. While AMP is off: backward's and the step's
        end (the records' ``amp`` and ``cudnn_benchmark`` are step fields); the boundary's also while no
        command is scheduled and the run is not paused (live commands wake it: ``at_boundary``); the
        optimizer step's also while no command waits for it and no learning rate is pinned or held."""
        if self._stop_before is not None:
            return frozenset()  # the next step's first batch or backward raises it
        rates_due = self._lr_pin is not None or bool(self._lr_waiting)
        if self.amp.enabled:
            return frozenset() if rates_due else frozenset({"on_batch"})
        idle = {"on_backward_end", "after_step"}
        if not rates_due:
            idle.add("on_batch")
            if not self._held_rates and not self._partner_rates:
                idle.add("on_backward_start")
        if not self._schedule and not self.paused:
            idle.add("at_boundary")
        if not (self._schedule or rates_due or self._held_rates or self._partner_rates):
            idle.add("before_optimizer_step")
        return frozenset(idle)

    def _set_idle_callbacks(self, context: ProbeContext) -> None:
        self._note_fields(context)
        idle = self._idle_now()
        if idle != self.idle_callbacks:
            self.idle_callbacks = idle
            context.retabulate()

    def on_backward_end(self, context: ProbeContext, loss: torch.Tensor) -> None:
        # Back into autocast: what runs before the next optimizer step (the next micro-batch's forward under
        # gradient accumulation, a GAN's other model) is autocast too, not only the first forward.
        self.amp.enter()

    def on_batch(self, context: ProbeContext) -> None:
        self._stop_if_asked()
        if (self._lr_pin is not None or self._lr_waiting) and context.primary_optimizer is not None:
            self._set_rates(context.primary_optimizer, context.step)

    def _set_rates(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """The pinned rate of ``step``, and the held factors on what the script assigned. Set from the step's
        first batch and at each backward, not at its optimizer step alone: what the script or its framework
        reads before the update (Lightning's LearningRateMonitor, a loop's own log) is the rate used. The
        optimizer's step sets them again, after any assignment of the script's."""
        if self._lr_waiting and self.context is not None:
            self._judge_waiting(self.context, optimizer, step)
        if self._lr_pin is not None and self._lr_pin[0] == step:
            factors = {index: self._pin_group(optimizer, index, value) for index, value in self._lr_pin[1].items()}
            _scale_floor(self.context, optimizer, factors)
        if self._held_rates:  # also beside a pin of another group (lr[1]=V leaves group 0's factor held)
            self._hold_rates(optimizer, self._held_rates, step)
        for partner, held in list(self._partner_rates.items()):  # (they step after it, on what was set before)
            self._hold_rates(partner, held, step)

    def on_backward_start(self, context: ProbeContext, loss: torch.Tensor) -> torch.Tensor | None:
        self._stop_if_asked()
        rates_due = self._lr_pin is not None or self._lr_waiting or self._held_rates or self._partner_rates
        if rates_due and context.primary_optimizer:
            self._set_rates(context.primary_optimizer, context.step)
        self.amp.leave()  # backward runs outside autocast, as recommended
        if self.amp.enabled and self.amp.scaling and self.amp.scale is not None:
            return loss * self.amp.scale.to(loss.dtype)
        return None

    def _judge_waiting(self, context: ProbeContext, optimizer: torch.optim.Optimizer, step: int) -> None:
        """The ``lr=V`` commands taken at this step's boundary, now that the groups hold the step's own rates
        (the script's assignments since scaled as held first: what the step would use without them)."""
        if self._held_rates:
            self._hold_rates(optimizer, self._held_rates, step)
        waiting, self._lr_waiting = self._lr_waiting, []
        for due in waiting:
            self._apply(context, due, "rates")
        self._set_idle_callbacks(context)

    def before_optimizer_step(self, context: ProbeContext, optimizer: torch.optim.Optimizer) -> None:
        if self._schedule:
            self._apply_due(context, stage="optimizer")  # LR commands for step 0 wait for the optimizer
        self._set_rates(optimizer, context.step)
        self._lr_pin = None  # a pin lasts one step
        if self.amp.enabled and self.amp.scaling:
            skipped_at_scale = self.amp.unscale_or_skip(context.parameters())
            if skipped_at_scale is not None:
                self._overflowed = (context.step, skipped_at_scale)
        self._set_idle_callbacks(context)  # a pin lasts one step

    def at_boundary(self, context: ProbeContext) -> float:
        """Apply what is due; while paused, hold the run here. Returns the seconds it was held."""
        if self._closed:
            return 0.0
        if self._schedule or context.commands:  # else _apply_due has nothing to do
            self._apply_due(context, stage="boundary")
        held = 0.0
        if self.paused:
            paused_at = time.perf_counter()
            try:
                while self.paused:
                    context.flush()
                    time.sleep(0.05)
                    if self.pause_until is not None and time.monotonic() >= self.pause_until:
                        self._end_pause(context, "the pause's lease ran out", "lease")
                        break
                    self._apply_due(context, stage="boundary")
            except BaseException as exc:
                # Ctrl-C, a notebook kernel's interrupt: the pause ends with it, as a `stop` would end it (the
                # next cell's training ran on into a pause nobody saw). The probe books the wait as held.
                if self.paused:
                    self._end_pause(context, f"the pause ended with an interrupt ({type(exc).__name__})", "interrupt")
                    self._set_idle_callbacks(context)
                raise
            held = time.perf_counter() - paused_at
            self._set_idle_callbacks(context)  # (a lease that ran out ended the pause)
        self.amp.enter()
        return held

    def _end_pause(self, context: ProbeContext, reason: str, source: str) -> None:
        self.paused, self.pause_until = False, None
        context.emit(self._event("resume", "accepted", reason, context.step, f"l{next(self._ids)}", source))
        context.flush()

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

    def _apply_due(self, context: ProbeContext, stage: str) -> None:
        self._apply_due_commands(context, stage)
        self._set_idle_callbacks(context)  # commands came, went, or pinned a learning rate

    def _apply_due_commands(self, context: ProbeContext, stage: str) -> None:
        if stage != "optimizer":  # live commands start at a boundary, so the whole step sees them
            self._take_new_commands(context)
        while self._schedule and self._schedule[0].step <= context.step:
            command = controls.parse_or_none(self._schedule[0].text)
            if not self._ready(command.name if command else None, stage):
                return  # commands apply in order: the rest waits too
            due = self._schedule.pop(0)
            if stage == "boundary" and not self.paused and _rate_of_its_own_step(command, context):
                self._lr_waiting.append(due)  # (while paused it is answered at once, against the last rate)
                continue
            self._apply(context, due, stage)

    def _apply(self, context: ProbeContext, due: Scheduled, stage: str) -> None:
        late = due.step < context.step
        try:
            command = controls.parse(due.text)
            detail = self._execute(context, command, stage)
        except controls.CommandError as exc:
            context.emit(self._event(due.text, "rejected", str(exc), None, due.id, due.source))
            context.flush()
            return
        if late:
            detail = f"{detail}; late: meant for step {due.step}".strip("; ")
        context.emit(self._event(due.text, "accepted", detail, context.step, due.id, due.source))
        context.flush()
        if command.name == "stop":
            # Not here, inside the optimizer's step (its update made, the script's scheduler.step() and its own
            # step count not yet): at the next step's first batch or backward, the last step whole.
            self._stop_before = context.step
            self.paused, self.pause_until = False, None  # a stop ends a pause: the run goes to its next step
            self._set_idle_callbacks(context)

    def _stop_if_asked(self) -> None:
        if self._stop_before is not None:
            step, self._stop_before = self._stop_before, None
            if self.context is not None:
                self._set_idle_callbacks(self.context)  # (a script that catches it and trains on)
            raise KeyboardInterrupt(f"{protocol.STOPPED_BY_REQUEST} before step {step}")

    def _event(self, text, status, reason, effective_step, command_id, source) -> dict[str, Any]:
        return protocol.make_record(
            protocol.EVENT,
            self.context.rank if self.context is not None else 0,
            command=text,
            status=status,
            reason=reason,
            effective_step=effective_step,
            id=command_id,
            source=source,
        )

    def _execute(self, context: ProbeContext, command: controls.Command, stage: str) -> str:
        if command.name == "lr":
            # At a boundary the groups hold the last step's rates, not yet what the script or its scheduler
            # sets for the command's step: the answer says whose they are.
            return self._set_lr(context, command, context.step - 1 if stage == "boundary" else None)
        if command.name == "amp":
            # The script's own autocast (a Trainer's bf16=True, Lightning's "bf16-mixed") is entered inside
            # optwatch's, so it decides the forward's precision whatever amp says: the answer says so.
            if not self.amp.enabled:
                self._script_autocast = context.under_autocast
            if command.value:
                device = self._device(context)
                self.amp.turn_on(device)
                self._set_idle_callbacks(context)
                dtype = str(self.amp.dtype).removeprefix("torch.")
                if self._script_autocast:
                    return f"autocast {dtype} set, but the script's own, entered inside it, decides the forward's"
                return f"autocast {dtype} on {device.type}"
            self.amp.turn_off()
            self._set_idle_callbacks(context)
            if self._script_autocast:
                return "optwatch's autocast off; the script's own stays (the precision line says it)"
            return "autocast off"
        if command.name == "cudnn_benchmark":
            torch.backends.cudnn.benchmark = bool(command.value)
            device = self._device(context)
            if device.type != "cuda" and context.parameters():  # (set all the same: a script may read it)
                where = device.type.upper()
                return f"set, but the model trains on the {where}, where it changes nothing (cuDNN is for CUDA GPUs)"
            return ""
        if command.name == "pause":
            self.paused = True
            if command.value:
                self.pause_until = time.monotonic() + float(command.value)
                return f"paused at the step boundary for at most {float(command.value):g} s"
            self.pause_until = None
            return "paused at the step boundary"
        if command.name == "resume":
            if not self.paused:
                raise controls.CommandError("the run is not paused")
            self.paused = False
            self.pause_until = None
            return ""
        if command.name == "profile":
            if self._profile is None:
                raise controls.CommandError("the profiler is not available in this optwatch")
            reply = self._profile(int(command.value), reason="control")
            if not reply.get("ok"):
                raise controls.CommandError(str(reply.get("error")))
            return str(reply.get("message", ""))
        if command.name == "stop":
            return "stopping (a KeyboardInterrupt at the next step's first batch or backward)"
        raise controls.CommandError(f"unknown command {command.raw!r}")

    def _device(self, context: ProbeContext) -> torch.device:
        params = context.parameters()
        if params:
            return params[0].device
        model = context.find_model()
        if model is not None:
            first = next(model.parameters(), None)
            if first is not None:
                return first.device
        return torch.device("cpu")

    # --- the learning rate ---------------------------------------------------------------------------
    def _set_lr(self, context: ProbeContext, command: controls.Command, ran_at: int | None) -> str:
        optimizer = context.primary_optimizer
        if optimizer is None:
            raise controls.CommandError("no optimizer has stepped yet")
        groups = optimizer.param_groups
        indices = _group_indices(command, groups)
        if indices is None:
            raise controls.CommandError(
                f"the optimizer has {len(groups)} param group(s) (0-{len(groups) - 1}), not {command.group}"
            )
        scheduled = _scheduled(context, optimizer)
        # Every check before any change: a command applies to all its groups or to none. lr*=F scales the
        # partners' rates too (Muon's AdamW: one model's optimizers, whose rates differ by design; lr=V, one
        # value, is the primary's alone).
        changes = _lr_changes(optimizer, indices, command, scheduled, "")
        partners = context.partner_optimizers() if command.scale and command.group is None else []
        partner_changes = []
        for name, partner in partners:
            partner_scheduled = _scheduled(context, partner)
            found = _lr_changes(partner, range(len(partner.param_groups)), command, partner_scheduled, f"{name}'s ")
            partner_changes.append((name, partner, found, partner_scheduled))
        described = self._apply_lr(context, optimizer, changes, self._held_rates, scheduled, command, ran_at)
        if partners:
            described = [f"{context.primary_name} {text}" for text in described]
        for name, partner, found, partner_scheduled in partner_changes:
            held = self._partner_rates.setdefault(partner, {})
            described += [
                f"{name} {text}"
                for text in self._apply_lr(context, partner, found, held, partner_scheduled, command, ran_at)
            ]
        if not command.scale:
            # lr=V: step N uses exactly V, whatever the scheduler or the script set since the boundary. Not
            # lr*=F, which scales what they set for step N (the schedule's base moved by F just now, or F
            # held against the script's values): pinned to F x step N-1's value, it was scaled twice.
            self._lr_pin = (context.step, {index: new for index, (_, new) in changes.items()})
        if scheduled:
            how = "the scheduler's schedule goes on from the new level"
        elif not command.scale and any(old == 0 for old, _ in changes.values()):
            how = "held until the script assigns a rate of its own, which a rate of 0 gives no factor to scale"
        else:
            how = "held: rates the script assigns are scaled to match, until the next lr command"
        if partners:
            others = "; any other optimizer keeps its own"
        elif context.primary_name and context.partner_optimizers():
            others = "; its partners keep theirs (lr*=F scales them too)"
        else:
            others = "; the run's other optimizers keep theirs" if context.primary_name else ""
        owner = f"{context.primary_name} " if context.primary_name and not partners else ""
        return owner + ", ".join(described) + f"; {how}{others}"  # (no brackets: the event's are around it)

    def _apply_lr(
        self,
        context: ProbeContext,
        optimizer: torch.optim.Optimizer,
        changes: dict[int, tuple[float, float]],
        held_rates: dict[int, _HeldRate],
        scheduled: bool,
        command: controls.Command,
        ran_at: int | None,
    ) -> list[str]:
        described = []
        scale = float(command.value) if command.scale else None  # (a rate of 0 has it too)
        # (Before the optimizer's first step, or at the command's step: the rate the update is about to use.)
        in_use = ran_at is None
        factors = {
            index: self._rescale_group(context, optimizer, index, new, in_use, scale)
            for index, (_, new) in changes.items()
        }
        _scale_floor(context, optimizer, factors)
        for index, (old, new) in changes.items():
            if not scheduled:
                held = held_rates.get(index)
                factor = (held.factor if held else 1.0) * (scale or (new / old if old > 0 else 1.0))
                held_rates[index] = _HeldRate(
                    factor=factor, last_set=new, last_object=optimizer.param_groups[index]["lr"]
                )
            if ran_at is None or ran_at < 0:  # (before the optimizer's first step: the rates it is about to use)
                described.append(f"group {index}: {old:.3g} -> {new:.3g}")
            elif command.scale and scheduled:  # the command's step uses F x what its schedule sets for it
                described.append(f"group {index}: {old:.3g} at step {ran_at}, scaled x{float(command.value):g}")
            else:  # pinned (lr=V), or held (the script's own values are scaled as they come)
                described.append(f"group {index}: {old:.3g} at step {ran_at} -> {new:.3g}")
        return described

    def _pin_group(self, optimizer: torch.optim.Optimizer, index: int, value: float) -> float | None:
        """At the command's step: exactly the value asked for, whatever the script or its scheduler did since
        the boundary; the script's own value now is what later assignments are scaled against."""
        group = optimizer.param_groups[index]
        current = _one_number(group["lr"])
        held = self._held_rates.get(index)
        if held is not None and current is not None and current != held.last_set and current > 0:
            held.factor = value / current  # the script assigned its own value meanwhile
        factor = self._rescale_group(self.context, optimizer, index, value, in_use=True)
        if held is not None:
            held.last_set, held.last_object = value, group["lr"]
        return factor

    def _hold_rates(self, optimizer: torch.optim.Optimizer, held_rates: dict[int, _HeldRate], step: int) -> None:
        """Values the script assigned to ``param_group["lr"]`` since the last step, scaled as the command asked;
        but a change the script made in place (``group["lr"] *= 0.5``, on the rate held) is kept as it is:
        scaled again, the held factor compounded at each decay (8x too low after three)."""
        for index, held in held_rates.items():
            if index >= len(optimizer.param_groups):
                continue
            group = optimizer.param_groups[index]
            raw = group["lr"]
            current = _one_number(raw)
            if isinstance(raw, torch.Tensor):
                unchanged = current == held.last_set  # (a tensor rate is filled in place: its value tells)
            else:
                # An assignment is a new object, of an equal value too: a schedule's own value that met the rate
                # held was left unscaled. An equal value from a script not known to assign rates is taken for
                # none: something that copies the rate it read.
                unchanged = raw is held.last_object or (current == held.last_set and not held.schedule)
            if current is None or unchanged:
                continue
            if not _changed_in_place(held, current, step):
                current *= held.factor
                _set_group_lr(group, current)
            held.last_set, held.last_object = current, group["lr"]
            held.changed_at = step

    def _rescale_group(
        self,
        context: ProbeContext | None,
        optimizer: torch.optim.Optimizer,
        index: int,
        new: float,
        in_use: bool = False,
        scale: float | None = None,
    ) -> float | None:
        """Set a group's lr; its schedule continues from the new level (base values scale by new/old, or by
        ``scale``, an lr*=F's, which a rate of 0 has too). ``in_use``: the rate of the step about to update,
        which its scheduler then reports as its last. Returns the factor (None where there is none: a rate
        unknown, or 0 without ``scale``), for the floor its schedulers share (``_scale_floor``)."""
        group = optimizer.param_groups[index]
        old = _one_number(group["lr"])
        if old is None or (old == new and scale is None):
            return 1.0 if old == new else None
        _set_group_lr(group, new)
        factor = scale if scale is not None else new / old if old > 0 else None
        if factor is not None:
            # The levels schedules take their rates from: OneCycleLR's, and SWALR's swa_lr, which it anneals to.
            for key in ("initial_lr", "max_lr", "min_lr", "swa_lr"):
                if isinstance(group.get(key), (int, float)):
                    group[key] = group[key] * factor
            for scheduler in _schedulers_of(context):
                # (ReduceLROnPlateau has no base: it scales the learning rate it finds, the new one now)
                base = getattr(scheduler, "base_lrs", None)
                if _drives(scheduler, optimizer) and base is not None and index < len(base):
                    base[index] *= factor
                    peaks = getattr(scheduler, "max_lrs", None)  # CyclicLR's: it cycles between base and max
                    if isinstance(peaks, list) and index < len(peaks):
                        peaks[index] *= factor
                    last = getattr(scheduler, "_last_lr", None)  # what get_last_lr() reports, and frameworks log
                    if in_use and isinstance(last, list) and index < len(last):
                        last[index] = new
        return factor


def _scale_floor(
    context: ProbeContext | None, optimizer: torch.optim.Optimizer, factors: dict[int, float | None]
) -> None:
    """A cosine's floor (``eta_min``), one for every group of the optimizer, scaled with them when every group
    was scaled by the same factor (``lr*=0.5``, ``lr=V`` on one group): else the change would wear off as the
    schedule neared its floor. Groups scaled apart (``lr[1]*=0.5``) leave it as it is."""
    values = list(factors.values())
    if len(factors) != len(optimizer.param_groups) or not values or values[0] is None:
        return
    factor = values[0]
    if factor == 1.0 or any(v is None or not math.isclose(v, factor, rel_tol=1e-9) for v in values):
        return
    for scheduler in _schedulers_of(context):
        floor = getattr(scheduler, "eta_min", None)
        if _drives(scheduler, optimizer) and isinstance(floor, (int, float)) and floor > 0:
            scheduler.eta_min = floor * factor


def _lr_changes(
    optimizer: torch.optim.Optimizer, indices: Any, command: controls.Command, scheduled: bool, whose: str
) -> dict[int, tuple[float, float]]:
    """``index -> (old, new)`` for ``optimizer``'s groups at ``indices``, each checked (``CommandError``)."""
    groups = optimizer.param_groups
    changes: dict[int, tuple[float, float]] = {}
    # A command for every group leaves a group at 0 as it is beside others that train (a frozen backbone's):
    # lr*=F was refused for it ("a warm-up's start?"), and lr=V would have set the frozen group training.
    rates = [_one_number(groups[index].get("lr")) for index in indices]
    frozen = {index for index, rate in zip(indices, rates) if rate == 0} if any(rates) and len(rates) > 1 else set()
    for index in indices:
        if index in frozen:
            continue
        lr = groups[index].get("lr")
        old = _one_number(lr)
        if old is None:
            raise controls.CommandError(
                f"{whose}param group {index}'s learning rate is {type(lr).__name__} {lr!r}, not one number: "
                "optwatch leaves it to the optimizer"
            )
        if groups[index].get("relative_step") is True:
            raise controls.CommandError(
                f"{whose}param group {index} has relative_step=True: Adafactor computes its own rate at each step "
                "and does not read the group's lr (what its AdafactorSchedule reports): optwatch leaves it be"
            )
        if old == 0 and scheduled and not command.scale:
            # No value gives a factor from 0 to move the schedule by: the next step would be the schedule's again.
            raise controls.CommandError(
                f"{whose}param group {index}'s learning rate is 0 at this step (a warm-up's start?): a schedule "
                "cannot be set from 0 (lr*=F scales it); send it for a later step"
            )
        new = old * float(command.value) if command.scale else float(command.value)
        if old == 0 and command.scale:  # (0 stays 0: F scales the schedule's, or the script's, later rates)
            reason = controls.big_change(command, old)
            if reason is not None:
                raise controls.CommandError(reason)
        else:
            _check_rate(new, groups[index]["params"], command, old)
        changes[index] = (old, new)
    return changes


def _rate_of_its_own_step(command: controls.Command | None, context: ProbeContext) -> bool:
    """``lr=V`` for a step of an optimizer that has stepped, where the last step's rate says nothing of the
    command's step's: 0 (a warm-up's start) or 100x away (a cosine restart's floor). It is judged against
    that step's own rate (``_lr_waiting``), which its scheduler or the script sets after the boundary."""
    optimizer = context.primary_optimizer
    if command is None or command.name != "lr" or command.scale or optimizer is None:
        return False
    groups = optimizer.param_groups
    indices = _group_indices(command, groups)
    if indices is None:
        return False  # (refused at once)
    rates = [_one_number(groups[index].get("lr")) for index in indices]
    return any(rate == 0 or (rate is not None and controls.big_change(command, rate)) for rate in rates)


def _group_indices(command: controls.Command, groups: list[dict[str, Any]]) -> list[int] | None:
    """The param groups an lr command is for (``lr[G]``: that one, else all); None for a group there is not."""
    if command.group is None:
        return list(range(len(groups)))
    return [command.group] if command.group < len(groups) else None


def _drives(scheduler: Any, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``scheduler`` sets ``optimizer``'s rates: the HF Trainer makes its scheduler on accelerate's
    AcceleratedOptimizer, Lightning's steps may hold a LightningOptimizer, each around the real one."""
    held = getattr(scheduler, "optimizer", None)
    for _ in range(3):
        if held is optimizer:
            return True
        held = getattr(held, "optimizer", None) or getattr(held, "_optimizer", None)
    return False


def _scheduled(context: ProbeContext, optimizer: torch.optim.Optimizer) -> bool:
    """A scheduler of the run sets ``optimizer``'s rates (a command then moves its schedule's base)."""
    return any(_drives(scheduler, optimizer) for scheduler in _schedulers_of(context))


def _schedulers_of(context: ProbeContext | None) -> list[Any]:
    return context.schedulers() if context is not None else []


def _one_number(lr: Any) -> float | None:
    if isinstance(lr, bool):
        return None
    try:
        return float(lr)
    except (TypeError, ValueError, RuntimeError):
        return None


def _set_group_lr(group: dict[str, Any], value: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _check_rate(new: float, params: list[torch.Tensor], command: controls.Command, current: float) -> None:
    """A learning rate the training can take: finite, within ``MAX_LR``, representable in the parameters'
    dtypes, and, for a change of more than 100x, confirmed (``lr=V!``)."""
    if not math.isfinite(new) or new <= 0:
        raise controls.CommandError(f"the learning rate would be {new:g}: it must be a positive finite number")
    if new > controls.MAX_LR:
        raise controls.CommandError(
            f"the learning rate would be {new:g}: optwatch refuses rates above {controls.MAX_LR:g}"
        )
    for dtype in {p.dtype for p in params if p.is_floating_point()}:
        if new > torch.finfo(dtype).max:
            raise controls.CommandError(f"the learning rate {new:g} cannot be represented in {dtype}")
    reason = controls.big_change(command, current)
    if reason is not None:
        raise controls.CommandError(reason)
