"""The contract between the probe and its plugins: what a plugin may use (``ProbeContext``) and what it may
implement (``ProbePlugin``).

Plugins import this module, never the probe itself: ``probe.probe.Probe`` is one implementation of
``ProbeContext``, and ``probe.start`` builds it with its plugins. Every callback runs on the training thread
except ``sample`` (the sampler thread). Callbacks must be cheap on steps where they have nothing to do,
must not sync with the device, and may leave device tensors in the records they touch: the probe reads
them back in batches, off the training thread.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any, Protocol

import torch

from optwatch.options import ProbeOptions

try:
    # True only while torch.compile traces the code (a constant to its tracer): hooks it traces into the
    # graph must not time themselves or look at threads there, each such call would split the graph.
    from torch.compiler import is_dynamo_compiling as being_traced
except ImportError:  # torch < 2.3
    from torch._dynamo import is_compiling as being_traced  # noqa: F401 (used by the plugins)

_NOTHING = contextlib.nullcontext()  # reusable: one for every call outside a profile


def as_optwatch_work() -> contextlib.AbstractContextManager:
    """While a profiler records, an ``optwatch`` range around what follows, so that profiles show what
    optwatch costs apart from the model's own work; otherwise nothing."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.autograd.profiler.record_function("optwatch")
    return _NOTHING


class ProbeContext(Protocol):
    """What a plugin may see and do; everything else of the probe is its own business."""

    rank: int
    world_size: int
    run_id: str
    options: ProbeOptions
    step: int
    """The step now running (its record is made at its end)."""
    first_step: int
    """The number of this process's first step (not 0 in a run resumed from a checkpoint)."""
    detailed: bool
    """Whether this step is a detail step: one whose checks the budget does not space out (see governor)."""
    next_detailed: bool
    """The same for the next step, known once the current one's record is made (in ``after_step``)."""
    detail_every: int
    device: torch.device | None
    """Where the trained parameters live, known from the first step on."""
    training_thread: int | None
    """The thread that trains (the one calling ``backward()``); plugins' hooks ignore forwards of others."""
    started_in: int
    """The thread the probe was started in (the one presumed to train before the first ``backward()``)."""
    torch_threads: int | None
    """``torch.get_num_threads()`` as the training thread reads it, at its latest recorded step's end."""
    under_autocast: bool
    """The latest step's training forward ran under autocast (the script's own, or optwatch's ``amp=on``)."""
    clip_measures: bool
    """In ``on_gradients``: the script's ``clip_grad_norm_`` is about to compute this step's global gradient
    norm, which the record then takes (the number the script itself gets): no plugin need report one."""
    nonfinite_seen: bool
    """A step's loss or gradient norm has been NaN/Inf (read back off the training thread)."""
    commands: collections.deque[dict[str, Any]]
    """Commands and decisions from the hub, in arrival order (any thread appends, the training thread takes)."""

    @property
    def primary_optimizer(self) -> torch.optim.Optimizer | None: ...

    @property
    def primary_name(self) -> str | None:
        """The primary optimizer's name (``optD``) once another optimizer has stepped too, else None."""
        ...

    def partner_optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        """The optimizers that step with the primary on its gradients (Muon's AdamW), with their names."""
        ...

    def parameters(self) -> list[torch.Tensor]:
        """The primary optimizer's parameters (else the model's), kept while its param groups are the same."""
        ...

    def parameter_names(self) -> dict[int, str]:
        """``id(parameter) -> qualified name`` for the model's parameters."""
        ...

    def find_model(self) -> torch.nn.Module | None:
        """The model being trained (named by ``watch``, else found once from the primary optimizer)."""
        ...

    def learning_rate(self, optimizer: torch.optim.Optimizer | None = None) -> float | torch.Tensor | None:
        """Param group 0's learning rate as one number, or None when it is not one (a rate per dimension)."""
        ...

    def emit(self, record: dict[str, Any]) -> None:
        """Queue a record from the training thread; its tensor values are read back with the next batch."""
        ...

    def publish(self, records: list[dict[str, Any]]) -> None:
        """Hand over records with no device values, from any thread."""
        ...

    def flush(self) -> None:
        """Hand what is queued to the hub now (controls use it so that acknowledgements are prompt)."""
        ...

    def send_decision(self, decision: dict[str, Any]) -> None:
        """Rank 0: tell every rank at which step a command applies."""
        ...

    def report_grad_norm(self, norm: torch.Tensor | None, part: bool = False) -> None:
        """This step's global gradient norm, measured by a plugin (on the device): the probe need not.
        ``part``: only this rank's part of it (sharded parameters, ``probe.sharding``); the hub adds the
        ranks' parts up."""
        ...

    def share_grad_norms(
        self,
        grads: list[torch.Tensor],
        norms: list[torch.Tensor],
        seconds: float = 0.0,
        vector: torch.Tensor | None = None,
    ) -> None:
        """In ``on_gradients`` while ``clip_measures``: the 2-norm of each of ``grads``, computed by
        ``torch._foreach_norm(grads, 2)`` just now, in ``seconds``, and ``vector``, the same norms as one 1-d
        tensor in that order where the plugin made one. The clip about to run takes these instead of
        computing the same norms again (they are the very values it would compute; with ``vector``, its
        total norm too), so its result does not change, and those seconds are the clip's, not optwatch's."""
        ...

    def charge(self, started: float) -> None:
        """Add the time since ``started`` (``time.perf_counter()``) to optwatch's own cost of this step."""
        ...

    def pin_detail(self) -> None:
        """Every step a detail step from now on (after a non-finite value)."""
        ...

    def set_step_fields(self, **fields: Any) -> None:
        """From the step now running on, every step record carries these fields (a state a plugin keeps, such
        as whether AMP is on): the steps that need no plugin at their end get them too."""
        ...

    @property
    def median_step_s(self) -> float | None:
        """The median time of the recent steps (None before the first step's end)."""
        ...

    @property
    def held(self) -> bool:
        """optwatch itself holds the run at a step boundary (a pause, a command being applied)."""
        ...

    @property
    def waiting_since(self) -> float | None:
        """``time.perf_counter()`` at the last step boundary (before the first step: at the probe's start, then
        at the first step's start, its first batch or ``backward()``): since then no step has ended. None while
        optwatch itself holds the run at a boundary (its record, a pause, a command applied) and once the probe
        is closed."""
        ...

    def switch_off(self, plugin: str, where: str) -> None:
        """Switch a plugin off after it raised (call it inside the ``except``): its callbacks stop, its
        ``close`` takes its hooks away, and the training goes on."""
        ...

    def retabulate(self) -> None:
        """Read the plugins' callback sets again (after a plugin changed its ``idle_callbacks``)."""
        ...

    budget_held: bool
    """Set while work someone asked for (a profile window, its summary) costs the steps: the budget leaves
    those steps out, so that the checks are not spaced out for long after it (any thread may set it)."""


class ProbePlugin:
    """Base class: override what you need. A callback left as the base class's costs nothing per step."""

    name = "plugin"
    between_detail_steps: frozenset[str] | None = None
    """The per-step callbacks this plugin needs on the steps between two detail steps, where the probe calls
    no others (but ``after_step`` at the step before each detail step, to prepare for it). None: all of them.
    A step whose end no plugin needs (no ``after_step`` or ``at_boundary`` in the table of the steps between,
    no command waiting) costs the least: the probe notes its values and makes its record later."""
    idle_callbacks: frozenset[str] = frozenset()
    """Callbacks this plugin implements but needs at no step for now: left out of every step. A plugin
    that changes it calls ``context.retabulate()`` (on the training thread)."""

    def install(self, context: ProbeContext) -> None:
        """Called once when the probe starts (install hooks here)."""

    def on_batch(self, context: ProbeContext) -> None:
        """A DataLoader batch has just been handed to the script."""

    def on_backward_start(self, context: ProbeContext, loss: torch.Tensor) -> torch.Tensor | None:
        """Before ``backward()`` on a scalar loss; may return the tensor to differentiate instead (loss
        scaling), else None."""
        return None

    def on_backward_end(self, context: ProbeContext, loss: torch.Tensor) -> None:
        """After ``backward()`` returned."""

    def on_gradients(self, context: ProbeContext, optimizer: torch.optim.Optimizer | None) -> None:
        """The primary optimizer's gradients of this step are final and not yet clipped: before a clipping
        function changes them, else in the optimizer's step pre-hook, or, for an optimizer driven by a
        closure (LBFGS, Lightning), after the closure's first backward. Once per step. ``optimizer`` is None
        in a loop without one."""

    def before_optimizer_step(self, context: ProbeContext, optimizer: torch.optim.Optimizer) -> None:
        """In the primary optimizer's step pre-hook (unscaled gradients under GradScaler.step)."""

    def after_optimizer_step(self, context: ProbeContext, optimizer: torch.optim.Optimizer) -> None:
        """In the primary optimizer's step post-hook, before the probe ends the step."""

    def after_step(self, context: ProbeContext, record: dict[str, Any]) -> None:
        """At the step boundary, with the step record still open: add fields, or ``emit`` records. (A field
        every record carries, whatever the step, goes through ``context.set_step_fields`` instead.)"""

    def at_boundary(self, context: ProbeContext) -> float | None:
        """After the step record, with ``context.step`` already the next step: apply what is due. Returns the
        seconds it held the run (a pause), which are no part of the next step's time. Called, even when idle,
        at every boundary where ``context.commands`` holds something."""
        return None

    def sample(self, context: ProbeContext, system: dict[str, Any]) -> list[dict[str, Any]]:
        """On the sampler thread, a few times a second: add fields to the ``system`` record being made, or
        return ready records (no device tensors)."""
        return []

    def cell_ended(self, context: ProbeContext) -> None:
        """A notebook's cell ended (IPython's ``post_run_cell``, on the thread that ran it): what a plugin set
        for the training must not reach into the next cell, which may be no training."""

    def close(self, context: ProbeContext) -> None:
        """When the probe closes, or the plugin is switched off: remove hooks, flush what is left."""


PER_STEP_CALLBACKS = (
    "on_batch",
    "on_backward_start",
    "on_backward_end",
    "on_gradients",
    "before_optimizer_step",
    "after_optimizer_step",
    "after_step",
    "at_boundary",
)
CALLBACKS = ("install", *PER_STEP_CALLBACKS, "sample", "cell_ended", "close")
