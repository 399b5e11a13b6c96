"""Gradient statistics at the step boundary, and the job-side diagnosis that turns them into alerts.

Training thread, per measured step (``--grad-every N``), all with fused multi-tensor ops and no host sync:
- before ``optimizer.step()``: per-parameter gradient norm, weight norm and count of non-zero gradient
  entries (``torch._foreach_norm`` with ord 2 and 0), and a copy of the weights (``_foreach_copy_``);
- after it: ``_foreach_sub_`` turns the copy into the update, whose norms give ||Δw||. Each kind of
  value is one device vector (on CUDA the fused norm's own output buffer: see ``probe.vectors``), sent in
  a ``layers`` record and read back with the step batch.
They run on detail steps only (see below), and a cost governor thins those (to at most every 4th, after
the first 100) while they take more than ``--grad-budget`` of the step time; see
``GradientPlugin.__init__`` and docs/gradients.md.
The copy costs one extra set of weights in memory. Above ``--grad-update-mb`` the parameters are split
into chunks that fit and one chunk is copied per measured step, in turn, so each layer's update ratio is
refreshed every few measured steps instead (a tensor larger than the budget gets none).

``torch.nn.utils.clip_grad_norm_`` is wrapped to keep the norm it returns (computed anyway): with
clipping, the norm before clipping is what can explode, so the step record gets ``grad_norm_preclip``.

Every detail step (every step while optwatch is within its ``--budget``: ``Probe._plan_detail``), a
global forward hook, there on those steps alone, collects each module's output; on a GPU, when backward starts (or
every ``_CHECK_BATCH`` outputs), one fused ``_foreach_norm`` of order 1 over them gives a device vector
that is finite exactly where the outputs are (no sync, a couple of kernel launches); on a CPU each output
is summed when the next module shows up, while it is still in cache. So when something turns NaN/Inf,
the first module whose output did is known for that very step. Activations that cannot turn finite
values into non-finite ones (ReLU, dropout, pooling...) are not checked. The hook is global, not each
module's own: hooks of their own would be part of the model (``copy.deepcopy`` and ``torch.save`` of it
would carry optwatch along, and fail), and re-finding modules would make ``torch.compile`` recompile.

Publisher thread (a publisher observer): the host values of each step go through ``GradientDiagnosis``
in step order; the alerts it returns are published right after that batch. Values travel from the
training thread to the observer in fields named ``_...``, which the observer removes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import warnings
from dataclasses import dataclass
from threading import get_ident as _thread_id
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optwatch import protocol
from optwatch.diagnose.gradients import (
    NONFINITE,
    GradientDiagnosis,
    LayerStats,
    StepInput,
    Thresholds,
    module_of,
)
from optwatch.probe.options import ProbeOptions
from optwatch.probe.plugin import ProbePlugin, as_optwatch_work, being_traced
from optwatch.probe.vectors import as_vector

if TYPE_CHECKING:
    from optwatch.probe.probe import Probe

_jit_tracing = torch._C._get_tracing_state  # not None while torch.jit.trace records
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor

log = logging.getLogger(__name__)

# Modules that map finite inputs (and parameters) to finite outputs: checking them would repeat their
# input's check. Normalisations divide by sqrt(var + eps) and run in float32 under autocast.
_FINITE_PRESERVING = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softsign,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
# Batch norms in training fold their input's mean into a running mean: it turns non-finite exactly when
# the input has a NaN/Inf (while it was finite before), so it checks the module before them for free.
_RUNNING_STATS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# A step that never reaches the optimizer must not grow the list without bound.
_MAX_FORWARD_CHECKS = 4096
# Outputs waiting for their check are normed together once this many are held: one fused launch for
# many, while an output the model itself has let go of is not kept alive for long.
_CHECK_BATCH = 32
# The cost governor thins measured steps to at most one in this many (times ``--grad-every``), so that
# vanishing and exploding layers are still seen within a few windows on the smallest models.
_MAX_THINNING = 4
# Counting exactly-zero gradient entries (ord-0 norms: no fused kernel) costs as much as the other norms
# together; dead units come and go slowly, so the counts are refreshed every this many measured steps.
_ZERO_COUNT_EVERY = 10
# Smoothing of the measured share of the step time (a measured step's own work / its step time).
_SHARE_SMOOTHING = 0.3


def _by_device(tensors: list[torch.Tensor]) -> dict[torch.device, list[int]]:
    groups: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tensor.device, []).append(index)
    return groups


def _norms(
    tensors: list[torch.Tensor], order: int, device: torch.device, by_device: dict[torch.device, list[int]] | None
) -> list[torch.Tensor]:
    """Norms of ``tensors`` (ord 0 counts non-zero entries), as 0-d tensors on ``device``: float32 (half
    precision would overflow), float64 for float64 tensors (a norm may widen a dtype, never narrow it).
    ``by_device``: the tensors' indices per device when they are on several (model parallel), else None."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    if by_device is None:
        return list(torch._foreach_norm(tensors, order, dtype=dtype))
    result: list[Any] = [None] * len(tensors)
    for indices in by_device.values():
        norms = torch._foreach_norm([tensors[i] for i in indices], order, dtype=dtype)
        for index, norm in zip(indices, norms):
            result[index] = norm.to(device, non_blocking=True)
    return result


class _Layout:
    """The parameters measured (those with a dense gradient, in model order) and their update chunks."""

    def __init__(self, params: list[torch.Tensor], names: list[str], budget_bytes: float):
        self.params = params
        self.names = names
        self.numel = [p.numel() for p in params]
        self.device = params[0].device
        groups = _by_device(params)
        self.by_device = groups if len(groups) > 1 else None
        self.chunks = self._split(budget_bytes)
        self._turn = 0
        self._snapshots: list[torch.Tensor] | None = None

    def matches(self, params: list[torch.Tensor]) -> bool:
        return len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))

    def _split(self, budget_bytes: float) -> list[list[int]]:
        """Chunks of parameter indices that each fit the budget, keeping a module's tensors together."""
        modules: dict[str, list[int]] = {}
        for index, name in enumerate(self.names):
            modules.setdefault(module_of(name), []).append(index)
        size = [p.numel() * p.element_size() for p in self.params]
        chunks: list[list[int]] = []
        current: list[int] = []
        used = 0.0
        for indices in modules.values():
            group = sum(size[i] for i in indices)
            pieces = [indices] if group <= budget_bytes else [[i] for i in indices if size[i] <= budget_bytes]
            for piece in pieces:
                piece_size = sum(size[i] for i in piece)
                if current and used + piece_size > budget_bytes:
                    chunks.append(current)
                    current, used = [], 0.0
                current = current + piece
                used += piece_size
        if current:
            chunks.append(current)
        return chunks

    def next_chunk(self) -> list[int] | None:
        if not self.chunks:
            return None
        chunk = self.chunks[self._turn % len(self.chunks)]
        self._turn += 1
        return chunk

    def snapshots(self, chunk: list[int]) -> list[torch.Tensor]:
        """Buffers for the chunk's weights: kept when one chunk covers everything, else made each time."""
        if len(self.chunks) == 1:
            if self._snapshots is None:
                self._snapshots = [torch.empty_like(self.params[i]) for i in chunk]
            return self._snapshots
        return [torch.empty_like(self.params[i]) for i in chunk]


@dataclass
class _Measured:
    """What ``before_optimizer_step`` measured, waiting for the update."""

    step: int
    layout: _Layout
    grad_norms: torch.Tensor
    weight_norms: torch.Tensor
    nonzero: torch.Tensor
    chunk: list[int] | None
    snapshots: list[torch.Tensor] | None


class GradientPlugin(ProbePlugin):
    name = "grads"
    # Between detail steps no forward check runs and nothing is measured: only the boundary (a clipped
    # norm to report, the next step's hook and measurement to plan).
    between_detail_steps = frozenset({"after_step"})

    def __init__(self, options: ProbeOptions):
        self.every = options.grad_every
        self.budget = options.grad_budget
        # The first steps are measured at the asked cadence whatever they cost: the diagnosis builds its
        # baselines there (two windows and more), and early training is where layers vanish or blow up.
        self.full_cadence_steps = options.grad_full_cadence_steps
        # The cost governor (training thread). Statistics are measured every ``stride`` steps, a multiple
        # of ``every`` widened while a measured step's statistics take more than ``budget`` of its step
        # time: on a GPU they are a few kernel launches and the stride stays ``every``; on a CPU the norms
        # are real compute on the training thread. Forward checks are not thinned here (the probe's detail
        # steps space them out, within its --budget).
        self.stride = self.every
        self.share: float | None = None
        """Smoothed share of a measured step's time that went to measuring it."""
        self._measuring = True  # the current step (decided at the previous step boundary)
        self._detail_steps = 1  # detail steps so far (step 0 is one): the stride counts these
        self._cost_s = 0.0
        self._settling_in = True  # the first measured step builds layouts: not a fair sample of the cost
        self._nonzero: torch.Tensor | None = None
        self._zero_count_turn = 0
        self.budget_bytes = options.grad_update_mb * 2**20
        self.forward_check = options.forward_check
        self.diagnosis: GradientDiagnosis | None = GradientDiagnosis(
            Thresholds().with_overrides(options.grad_thresholds)
        )
        # Training thread only.
        self._order_key: tuple[int, ...] | None = None
        self._ordered: list[torch.Tensor] = []
        self._layout: _Layout | None = None
        self._measured: _Measured | None = None
        # Forward checks of the current step: (module, index of the tensor that checks its output).
        self._checks: list[tuple[nn.Module, int]] = []
        self._to_check: list[torch.Tensor] = []  # waiting for their norms
        self._checked: list[torch.Tensor] = []  # taken so far this step: sums (CPU) or vectors of norms
        self._check_count = 0
        self._last_output: torch.Tensor | None = None
        self._preserving: dict[type, bool] = {}
        self._module_names: dict[int, str] = {}
        self._names_model: nn.Module | None = None
        self._sequence_key: tuple[int, ...] | None = None
        self._sequence_names: tuple[str, ...] = ()
        self._hook: Any = None
        self._warning_filter: Any = None
        self._clipped: list[torch.Tensor] = []
        self._undo: list[Any] = []
        # Publisher thread only.
        self._layers_record: dict[str, Any] | None = None
        self._rank = 0

    # --- training thread -----------------------------------------------------------------------------
    def install(self, probe: Probe) -> None:
        self._rank = probe.rank
        self._probe = probe
        probe.publisher.add_observer(self._observe)
        if self.forward_check:
            self._set_forward_hook(probe.detailed)
            # torch.compile(model) warns, at every call site, that global hooks also fire for the compiled
            # wrapper: the check takes that extra call as the same output handed on, so the warning would
            # only be optwatch's noise in the user's log.
            warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")
            self._warning_filter = warnings.filters[0]  # taken away with the hook
        import torch.nn.utils
        import torch.nn.utils.clip_grad

        original = torch.nn.utils.clip_grad.clip_grad_norm_
        clipped = self._clipped

        @functools.wraps(original)
        def clip_grad_norm_(*args: Any, **kwargs: Any) -> torch.Tensor:
            total = original(*args, **kwargs)
            norm_type = kwargs.get("norm_type", args[2] if len(args) > 2 else 2.0)
            if isinstance(total, torch.Tensor) and float(norm_type) == 2.0:
                clipped.append(total.detach())
            return total

        for module in (torch.nn.utils, torch.nn.utils.clip_grad):
            module.clip_grad_norm_ = clip_grad_norm_
            self._undo.append((module, original))

    def _set_forward_hook(self, on: bool) -> None:
        """The forward check's global hook, there on detail steps only: while any global hook is set, every
        module call takes torch's slow path, which costs more than the check itself on a small model."""
        if on and self._hook is None:
            self._hook = nn.modules.module.register_module_forward_hook(self._check_output)
        elif not on and self._hook is not None:
            self._hook.remove()
            self._hook = None

    def close(self, probe: Probe) -> None:
        self._set_forward_hook(False)
        if self._warning_filter is not None:
            if self._warning_filter in warnings.filters:
                warnings.filters.remove(self._warning_filter)
                getattr(warnings, "_filters_mutated", lambda: None)()  # as filterwarnings itself does
            self._warning_filter = None
        for module, original in self._undo:
            module.clip_grad_norm_ = original
        self._undo = []

    def _check_output(self, module: nn.Module, args: Any, output: Any) -> None:
        # Not inside a torch.compile graph: it would guard on the check's own state (recompiling at every
        # micro-batch) and its timing would split the graph. The compiled module's output, returned to
        # eager code, is checked as a whole.
        if not torch.is_grad_enabled() or being_traced():
            return
        # The training thread's forwards only: the check's state is one sequence of outputs, and other
        # threads' forwards (nn.DataParallel replicas, an actor or evaluation thread) would interleave.
        thread, training = _thread_id(), self._probe.training_thread
        if thread != training:
            if training is not None:
                return
            self._probe.training_thread = thread  # the first forward with gradients: the training's
        started = time.perf_counter()
        try:
            if type(output) is not torch.Tensor:
                output = output[0] if isinstance(output, (tuple, list)) and output else None
            if type(output) is not torch.Tensor:  # plain tensors only: not fake ones (torch.export), DTensor...
                return
            if not output.is_floating_point() or len(self._checks) >= _MAX_FORWARD_CHECKS:
                return
            preserving = self._preserving.get(type(module))
            if preserving is None:
                preserving = self._preserving[type(module)] = isinstance(module, _FINITE_PRESERVING)
            fed = bool(args) and args[0] is self._last_output
            if self._last_output is not None and (output is self._last_output or (preserving and fed)):
                # The tensor just checked, handed on (a container, an in-place op) or through a module that keeps
                # finite values finite: its check stands for this output too.
                if preserving and isinstance(module, _RUNNING_STATS) and self._to_check:
                    self._check_through_running_mean(module)
                self._last_output = output
                self._checks.append((module, self._checks[-1][1]))
            elif not preserving:
                # Kept and reduced: not a tensor that torch.func (vmap, grad) wraps, which must not outlive
                # its transform, nor while torch.jit.trace records (the reduction would join its graph).
                if _functorch_wrapped(output) or _jit_tracing() is not None:
                    return
                if self._to_check and self._to_check[-1].is_cpu:
                    self._sum_on_cpu()  # the previous output, while it is still in cache
                self._last_output = output
                self._checks.append((module, self._check_count))
                self._to_check.append(output.detach())
                self._check_count += 1
                if len(self._to_check) >= _CHECK_BATCH:
                    self._take_norms()
        except Exception:  # torch calls this hook directly: a failure here must not reach the model's forward
            self._probe.switch_off(self.name, "its forward check")
        finally:
            # optwatch's cost, shown with each step (inline: a call more per module call would show too)
            self._probe.own_s += time.perf_counter() - started

    def _sum_on_cpu(self) -> None:
        """On a CPU each output is summed on its own (a sum reads fastest there), finite iff it is."""
        tensor = self._to_check.pop()
        with as_optwatch_work():  # in a profile, optwatch's cost, not the module's
            self._checked.append(tensor.sum(dtype=torch.float32))

    def _check_through_running_mean(self, norm: nn.Module) -> None:
        """A batch norm in training folds its input's mean into its running mean, which turns non-finite
        exactly when the input has a NaN/Inf: that small vector checks the (large) input instead."""
        # From _buffers: reading the attribute goes through nn.Module.__getattr__, which costs an
        # AttributeError first, at every batch norm of every step.
        running_mean = norm._buffers.get("running_mean")
        if norm.training and isinstance(running_mean, torch.Tensor) and self._checks[-1][1] == self._check_count - 1:
            self._to_check[-1] = running_mean

    def on_backward_start(self, probe: Probe, loss: torch.Tensor) -> None:
        self._take_norms()

    def _take_norms(self) -> None:
        """The outputs waiting for their check, in one go: a vector finite exactly where they are."""
        if len(self._to_check) == 1 and self._to_check[0].is_cpu:
            self._sum_on_cpu()
            return
        if not self._to_check:
            return
        tensors, self._to_check = self._to_check, []
        with as_optwatch_work():
            groups = _by_device(tensors)
            # L1 norms (no squares to overflow), fused on a GPU; per device when the model spans several.
            norms = _norms(tensors, 1, tensors[0].device, groups if len(groups) > 1 else None)
            self._checked.append(as_vector(norms))

    def before_optimizer_step(self, probe: Probe, optimizer: torch.optim.Optimizer) -> None:
        if not self._measuring:
            return
        started = time.perf_counter()
        self._measure_before(probe, optimizer)
        self._cost_s += time.perf_counter() - started

    def _measure_before(self, probe: Probe, optimizer: torch.optim.Optimizer) -> None:
        params = [p for p in self._in_model_order(probe, optimizer) if p.grad is not None and not p.grad.is_sparse]
        if not params:
            return
        layout = self._layout
        if layout is None or not layout.matches(params):
            names = probe.parameter_names()
            labels = [names.get(id(p)) or f"(unnamed).{i}" for i, p in enumerate(params)]
            layout = self._layout = _Layout(params, labels, self.budget_bytes)
            self._settling_in = True
        with torch.no_grad():
            grads = [p.grad for p in params]
            grad_norms = as_vector(_norms(grads, 2, layout.device, layout.by_device))
            if self._nonzero is None or self._settling_in or self._zero_count_turn % _ZERO_COUNT_EVERY == 0:
                self._nonzero = as_vector(_norms(grads, 0, layout.device, layout.by_device))
            self._zero_count_turn += 1
            weight_norms = as_vector(_norms(params, 2, layout.device, layout.by_device))
            # The step record's global norm, from these per-tensor norms instead of a second pass.
            probe.measured_grad_norm = torch.linalg.vector_norm(grad_norms)
            chunk = layout.next_chunk()
            snapshots = None
            if chunk:
                snapshots = layout.snapshots(chunk)
                torch._foreach_copy_(snapshots, [params[i] for i in chunk])
        self._measured = _Measured(probe.step, layout, grad_norms, weight_norms, self._nonzero, chunk, snapshots)

    def _in_model_order(self, probe: Probe, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        """The optimizer's parameters in the model's order (param groups may split and reorder them)."""
        flat = [p for group in optimizer.param_groups for p in group["params"]]
        key = tuple(map(id, flat))
        if key != self._order_key:
            position = {pid: i for i, pid in enumerate(probe.parameter_names())}
            self._ordered = sorted(flat, key=lambda p: position.get(id(p), len(position)))
            self._order_key = key
        return self._ordered

    def after_step(self, probe: Probe, record: dict[str, Any]) -> None:
        if self._measuring:
            started = time.perf_counter()
            self._measure_after(probe, record)
            self._cost_s += time.perf_counter() - started
            self._govern(record.get("step_time_s"), record["step"])
            self._cost_s = 0.0
        else:
            self._measure_after(probe, record)
        if probe.detail_pinned:  # after a non-finite value: every step again
            self.stride = self.every
        # Measured on every ``stride``-th detail step: with every step a detail step, every stride-th step.
        self._measuring = probe.next_detailed and self._detail_steps % self.stride == 0
        self._detail_steps += probe.next_detailed
        if self.forward_check:
            self._set_forward_hook(probe.next_detailed)

    def _govern(self, step_time_s: float | None, step: int) -> None:
        """Widen or narrow the stride from what this measured step's own work cost."""
        if self._settling_in or not step_time_s or step_time_s <= 0:
            self._settling_in = False
            return
        share = self._cost_s / step_time_s
        self.share = share if self.share is None else self.share + _SHARE_SMOOTHING * (share - self.share)
        if self.budget <= 0 or self._probe.detail_pinned or step < self.full_cadence_steps:
            return
        thinning = max(1, math.ceil(self.share / self.budget))
        # At most doubling at a time: one slow measurement must not silence the statistics for long.
        thinning = min(thinning, 2 * (self.stride // self.every), _MAX_THINNING)
        self.stride = self.every * thinning

    def _measure_after(self, probe: Probe, record: dict[str, Any]) -> None:
        if not (self._checks or self._to_check or self._checked or self._clipped or self._measured):
            return  # a step between two detail steps, with nothing clipped: nothing to add
        self._attach_checks(probe, record)
        if self._clipped:
            norms = [t.float().reshape(()) for t in self._clipped]
            record["grad_norm_preclip"] = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
            self._clipped.clear()
        measured, self._measured = self._measured, None
        if measured is None or measured.step != record["step"] or record.get("amp_overflow"):
            return
        layout, chunk = measured.layout, measured.chunk
        update = None
        if chunk and measured.snapshots is not None:
            with torch.no_grad():
                torch._foreach_sub_(measured.snapshots, [layout.params[i] for i in chunk])
                groups = _by_device(measured.snapshots) if layout.by_device else None
                update = as_vector(_norms(measured.snapshots, 2, layout.device, groups))
        # Each vector travels as it is: readback packs a batch's values together anyway.
        probe.emit(
            protocol.make_record(
                protocol.LAYERS,
                probe.rank,
                step=record["step"],
                names=layout.names,
                numel=layout.numel,
                grad_norm=measured.grad_norms,
                weight_norm=measured.weight_norms,
                _nonzero=measured.nonzero,
                _update=update,
                _update_at=chunk,
                every=self.stride * probe.detail_every,
            )
        )

    def _attach_checks(self, probe: Probe, record: dict[str, Any]) -> None:
        """The step's forward checks ride on the step record (private fields, removed on readback)."""
        self._take_norms()
        checks, self._checks = self._checks, []
        checked, self._checked = self._checked, []
        self._check_count = 0
        self._last_output = None
        if not checks:
            return
        modules = [module for module, _ in checks]
        model = probe.find_model()
        key = (id(model), *map(id, modules))
        if key != self._sequence_key:
            names = self._names_of(model)
            self._sequence_names = tuple(names.get(id(m)) or type(m).__name__ for m in modules)
            self._sequence_key = key
        record["_forward_modules"] = self._sequence_names
        record["_forward_index"] = [index for _, index in checks]  # which checks stand for others varies
        # Sums (CPU, one value each) or vectors of norms (GPU), in the order of the checks' indices: one
        # stack for the sums, as reshaping each for a concatenation is one more operator call per check.
        if all(value.dim() == 0 for value in checked):
            record["_forward_norms"] = torch.stack(checked)
        else:
            record["_forward_norms"] = torch.cat([value.reshape(-1) for value in checked])

    def _names_of(self, model: nn.Module | None) -> dict[int, str]:
        if model is not self._names_model:
            self._names_model = model
            self._module_names = {}
            if model is not None:
                self._module_names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
        return self._module_names

    # --- publisher thread ----------------------------------------------------------------------------
    def _observe(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Finish this rank's ``layers`` records, take the private fields off, diagnose each step."""
        alerts: list[dict[str, Any]] = []
        for record in records:
            kind = record.get("kind")
            if kind == protocol.LAYERS and "_nonzero" in record:
                _finish_layers(record)
                self._layers_record = record
            elif kind == protocol.STEP and record.get("rank") == self._rank:
                modules, index = record.pop("_forward_modules", ()), record.pop("_forward_index", ())
                norms = record.pop("_forward_norms", None) or []
                layers, self._layers_record = self._layers_record, None
                if layers is not None and layers.get("step") != record.get("step"):
                    layers = None
                if self.diagnosis is None:
                    continue
                try:
                    forward = [(name, norms[i]) for name, i in zip(modules, index)]
                except (IndexError, TypeError):
                    forward = []  # a step whose checks did not line up: without them, the rest is diagnosed
                try:
                    found = self._diagnose(record, layers, forward)
                    if any(alert.get("type") == NONFINITE for alert in found):
                        # The next non-finite value's origin must not fall between two samples.
                        self._probe.pin_detail()
                    alerts += found
                except Exception:
                    # Switched off, once; the statistics and the step records still go out.
                    log.exception("optwatch: gradient diagnosis failed and is switched off; training goes on")
                    self.diagnosis = None
        return records + alerts if alerts else records

    def _diagnose(
        self, record: dict[str, Any], layers: dict[str, Any] | None, forward: list[tuple[str, float]]
    ) -> list[dict[str, Any]]:
        assert self.diagnosis is not None
        observation = StepInput(
            step=record.get("step", -1),
            loss=record.get("loss"),
            grad_norm=record.get("grad_norm"),
            grad_norm_preclip=record.get("grad_norm_preclip"),
            amp_overflow=bool(record.get("amp_overflow")),
            amp_scale=record.get("amp_scale"),
            layers=LayerStats.from_record(layers) if layers is not None else None,
            forward=forward,
            forward_skipped=self.forward_check and not record.get("detailed", True),
        )
        alerts = [protocol.make_record(protocol.ALERT, self._rank, **a) for a in self.diagnosis.observe(observation)]
        if layers is not None:
            layers["alerting"] = self.diagnosis.alerting()
        return alerts


def _finish_layers(record: dict[str, Any]) -> None:
    """Raw readback -> the published ``layers`` fields (see docs/gradients.md)."""
    numel = record["numel"]
    nonzero = record.pop("_nonzero")
    record["zero_frac"] = [1.0 - nz / n if n else 0.0 for nz, n in zip(nonzero, numel)]
    update = record.pop("_update")
    at = record.pop("_update_at")
    update_norm: list[float | None] = [None] * len(numel)
    if update is not None and at:
        for index, value in zip(at, update):
            update_norm[index] = value
    record["update_norm"] = update_norm
    record["update_ratio"] = [
        u / w if u is not None and isinstance(w, float) and w > 0 else None
        for u, w in zip(update_norm, record["weight_norm"])
    ]
