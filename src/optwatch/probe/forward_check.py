"""Which module first turned a value NaN/Inf: a check of each module's forward output.

A global forward hook collects each module's output; on a GPU, when backward starts (or every
``_CHECK_BATCH`` outputs), one fused ``_foreach_norm`` of order 1 over them gives a device vector that is
finite exactly where the outputs are (no sync, a couple of kernel launches); on a CPU each output is
summed when the next module shows up, while it is still in cache. Activations that cannot turn finite
values into non-finite ones (ReLU, dropout, pooling...) are not checked. The results ride on the step
record (fields ``_forward_*``) to the hub, whose diagnosis names the module.

Any global module hook sends every module call through torch's slower call path, which on a model of
many small modules costs more than the check itself. So by default (``--forward-check auto``) the hook
is not there until the loss or the gradient norm, which every NaN reaches and which are watched at every
step, has once been non-finite; from then on every step is checked, so a recurrence is named at its very
step. ``always`` checks every step from the first, whatever ``--budget`` (at that cost); ``off`` never.
The hook is global, not each module's own: hooks of their own would be part of the model
(``copy.deepcopy`` and ``torch.save`` of it would carry optwatch along), and re-finding modules would make
``torch.compile`` recompile.
"""

from __future__ import annotations

import time
from threading import get_ident as _thread_id
from typing import Any

import torch
from torch import nn

from optwatch.probe.model import compiled_whole
from optwatch.probe.plugin import ProbeContext, ProbePlugin, as_optwatch_work, being_traced
from optwatch.probe.vectors import as_vector, norms_of, tensors_by_device

_jit_tracing = torch._C._get_tracing_state  # not None while torch.jit.trace records
_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor

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


class ForwardCheckPlugin(ProbePlugin):
    name = "forward_check"
    between_detail_steps = frozenset()  # its hooks are set and taken away at detail steps

    def __init__(self, always: bool = False):
        self.always = always
        """Check every step from the first; else the detail steps from the first non-finite loss or gradient
        norm on (every step is one from then on)."""
        self.armed = always
        if always:  # every step's end, to set its hooks for the next, and its backward, to take the outputs' sums
            self.between_detail_steps = frozenset({"after_step", "on_backward_start"})
        self._context: ProbeContext | None = None
        self._hook: Any = None
        # Checks of the current step: (module, index of the tensor that checks its output).
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
        self._model: nn.Module | None = None
        self._in_training_forward = False
        """Inside the trained model's forward with gradients on: what runs there without them (a reentrant
        checkpoint's blocks, run again with gradients in the backward pass) is part of the step's forward."""

    def install(self, context: ProbeContext) -> None:
        self._context = context
        self._set_hook(self.armed and (context.detailed or self.always))  # (the model is not known yet)

    def close(self, context: ProbeContext) -> None:
        self._set_hook(False)

    def _set_hook(self, on: bool) -> None:
        """The hooks, there on checked steps only: while any global hook is set, every module call takes
        torch's slow path. A pre-hook sees the thread that enters the trained model (the training thread,
        whose outputs alone are checked), the post-hook checks each output."""
        if on and self._hook is None:
            self._hook = (
                nn.modules.module.register_module_forward_pre_hook(self._entering),
                nn.modules.module.register_module_forward_hook(self._check_output),
            )
        elif not on and self._hook is not None:
            for handle in self._hook:
                handle.remove()
            self._hook = None

    def _entering(self, module: nn.Module, args: Any) -> None:
        if being_traced():  # (first: see _check_output)
            return
        context = self._context
        if context is not None and module is self._model and torch.is_grad_enabled():
            context.training_thread = _thread_id()  # the step's forward starts on this thread
            self._in_training_forward = True

    def after_step(self, context: ProbeContext, record: dict[str, Any]) -> None:
        self._in_training_forward = False  # (also where the forward raised and never returned)
        if self._checks or self._to_check or self._checked:
            self._attach_checks(context, record)
        elif self._hook is not None and _compiled_in_place(self._model):
            record["_forward_compiled"] = True  # (checked, but its hooks ran inside its graph: nothing was)
        if not self.armed and context.nonfinite_seen:
            self.armed = True  # from now on, a non-finite value is named at its very step
        check_next = self.armed and (context.next_detailed or self.always)
        if check_next:
            self._model = context.find_model()
        self._set_hook(check_next)

    def _check_output(self, module: nn.Module, args: Any, output: Any) -> None:
        # Not inside a torch.compile graph, and before anything of the probe's is read: torch.compile traces
        # global hooks into the graph, and each attribute read there is a guard (``_model`` is set after the
        # first step: a recompile) or worse (the trained model met again through the probe crashed its
        # tracer). The compiled module's output, returned to eager code, is checked as a whole.
        if being_traced():
            return
        in_training_forward = self._in_training_forward
        if module is self._model:
            self._in_training_forward = False  # its forward returns
        if not torch.is_grad_enabled() and not in_training_forward:
            return
        # The training thread's forwards only: the check's state is one sequence of outputs, and other
        # threads' forwards (nn.DataParallel replicas, an actor or evaluation thread) would interleave.
        context = self._context
        if context is None:
            return
        thread, training = _thread_id(), context.training_thread
        if thread != training:
            if training is not None:
                return
            context.training_thread = thread  # the first forward with gradients: the training's
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
            context.switch_off(self.name, "its forward check")
        finally:
            # optwatch's cost, shown with each step (inline: a call more per module call would show too)
            context.charge(started)

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

    def on_backward_start(self, context: ProbeContext, loss: torch.Tensor) -> None:
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
            groups = tensors_by_device(tensors)
            # L1 norms (no squares to overflow), fused on a GPU; per device when the model spans several.
            norms = norms_of(tensors, 1, tensors[0].device, groups if len(groups) > 1 else None)
            self._checked.append(as_vector(norms))

    def _attach_checks(self, context: ProbeContext, record: dict[str, Any]) -> None:
        """The step's forward checks ride on the step record (private fields, removed on readback)."""
        self._take_norms()
        checks, self._checks = self._checks, []
        checked, self._checked = self._checked, []
        self._check_count = 0
        self._last_output = None
        if not checks:
            return
        modules = [module for module, _ in checks]
        model = context.find_model()
        key = (id(model), *map(id, modules))
        if key != self._sequence_key:
            names = self._names_of(model)
            self._sequence_names = tuple(names.get(id(m)) or _shown_name("", m) for m in modules)
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
                self._module_names = {id(m): _shown_name(name, m) for name, m in model.named_modules()}
        return self._module_names


def _compiled_in_place(model: nn.Module | None) -> bool:
    """``model.compile()``: every module call of it runs inside the graph, the model's own output too (where
    ``torch.compile(model)``'s wrapper returns its output to eager code, checked as a whole)."""
    return model is not None and getattr(model, "_compiled_call_impl", None) is not None


def _shown_name(name: str, module: nn.Module) -> str:
    """A checked module's name in the alerts. Under ``torch.compile`` only the compiled module's output is
    checked (nothing inside its graph is): its name says that the module inside it cannot be named."""
    if not compiled_whole(module):
        return name or type(module).__name__
    inner = getattr(module, "_orig_mod", module)  # (``torch.compile(model)``'s wrapper: the user's class)
    return f"{name or type(inner).__name__} (compiled: no module inside it can be named)"
