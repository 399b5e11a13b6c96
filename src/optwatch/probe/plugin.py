"""How a capability plugs into the probe: a ProbePlugin subclass, listed in ``probe.plugins.enabled``.

Every callback runs on the training thread except ``sample`` (the sampler thread). Callbacks must be
cheap on steps where they have nothing to do, must not sync with the device, and may leave device
tensors in the records they touch: the probe reads them back in batches.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from optwatch.probe.probe import Probe


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


class ProbePlugin:
    """Base class: override what you need."""

    name = "plugin"
    between_detail_steps: frozenset[str] | None = None
    """The per-step callbacks this plugin needs on the steps between two detail steps (``probe.detailed``
    false), where the probe calls no others: what it leaves out costs nothing on most steps of a run
    that ``--budget`` spaces out. None: all of them."""
    idle_callbacks: frozenset[str] = frozenset()
    """Callbacks this plugin implements but needs at no step for now: left out of every step. A plugin
    that changes it calls ``probe.retabulate()`` (on the training thread)."""

    def install(self, probe: Probe) -> None:
        """Called once when the probe starts (install hooks here)."""

    def on_backward_start(self, probe: Probe, loss: torch.Tensor) -> torch.Tensor | None:
        """Before ``backward()`` on the step's scalar loss; may return the tensor to differentiate
        instead (loss scaling), else None."""
        return None

    def on_backward_end(self, probe: Probe, loss: torch.Tensor) -> None:
        """After ``backward()`` returned."""

    def before_optimizer_step(self, probe: Probe, optimizer: torch.optim.Optimizer) -> None:
        """In the primary optimizer's step pre-hook: gradients are final (unscaled under GradScaler.step)."""

    def after_optimizer_step(self, probe: Probe, optimizer: torch.optim.Optimizer) -> None:
        """In the primary optimizer's step post-hook, before the probe's own step bookkeeping."""

    def after_step(self, probe: Probe, record: dict[str, Any]) -> None:
        """At the step boundary, with the step record still open: add fields, or ``probe.emit`` records."""

    def sample(self, probe: Probe) -> list[dict[str, Any]]:
        """On the sampler thread, a few times a second: return ready records (no device tensors)."""
        return []

    def close(self, probe: Probe) -> None:
        """When the probe closes: remove hooks, flush what is left."""
