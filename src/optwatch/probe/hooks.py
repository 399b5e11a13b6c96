"""Every torch entry point optwatch changes, in one place, each with its undo.

Zero-code mode cannot ask the script where its steps are, so it listens where every training loop passes:

    torch.autograd.backward                       the loss, and the gradients' arrival
    torch.amp.GradScaler.scale / .step            the unscaled loss; a step the scaler skipped
    torch.optim.Optimizer.__init__, step hooks    optimizers as they are made; their steps (global hooks)
    Optimizer.zero_grad, nn.Module.zero_grad      gradients thrown away before a step (a step skipped)
    torch.utils.data DataLoader iterators         batches: how long the loop waited, how many samples
    torch.nn.utils clipping functions             the gradients before they are clipped, and the clip
    torch.optim.lr_scheduler.LRScheduler          schedulers, so a manual learning rate can move them
      (and ReduceLROnPlateau, made without it)
    torch.autocast.__enter__                      the precision the script trains in (its own autocast)
    warnings.warn                                 a warning raised under a wrapper names the frame it would
                                                  name without it (not counting the wrappers' frames)

Each wrapper calls the original exactly as the script did and returns what it returned; what the probe
does around it goes through ``HookTarget`` and can never raise into the script (a failure is reported to
``HookTarget.hook_failed`` and the call goes on). Several run at every step, so each is written out in full
(a try, no helper call): on a CPU loop of 15 ms steps each Python call here costs microseconds, the caches
being cold from the training's own work. The wrappers hold the target weakly: torch keeps what it
saw patched in (caches of overridable functions), which must not keep a closed probe and its model alive.
Global module hooks (the forward check's, the profiler's scopes) use torch's public registration and
live with the plugins that set them.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.utils
import torch.nn.utils.clip_grad
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.data.dataloader import _BaseDataLoaderIter

from optwatch.probe.plugin import being_traced

try:
    from torch.amp import GradScaler
except ImportError:  # torch < 2.3
    from torch.cuda.amp import GradScaler

# True while torch.compile or torch.export traces, also in their later passes (is_dynamo_compiling is not).
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)
try:  # torch.compile's frame callback: not None in what a compiled function runs eagerly (at its graph breaks)
    _compiled_frames = torch._C._dynamo.eval_frame.get_eval_frame_callback
except AttributeError:  # (older torch: as if always there, once torch.compile is seen)
    _compiled_frames = lambda: True  # noqa: E731


class HookTarget(Protocol):
    """What the hooks tell the probe. Methods may raise: the hooks catch it and call ``hook_failed``."""

    closed: bool
    """True once closed, or in a forked child: then every wrapper only calls the original."""

    def hook_failed(self, where: str) -> None: ...

    def batch_taken(self, iterator: Any, started: float, finished: float, batch: Any) -> None: ...

    def loader_started(self, loader: Any, iterator: Any) -> None: ...

    def backward_starting(self, tensors: Any, weight: torch.Tensor | None = None) -> Any:
        """Returns the tensors to differentiate (the same ones, or a scaled loss under optwatch's AMP);
        ``tensors`` is None for several tensors that the script's ``grad_tensors`` weigh; ``weight``: the one
        number a scalar's backward is weighed by (``loss.backward(gradient=w)``), else None."""
        ...

    backward_end_needed: bool
    """False while ``backward_ended`` would do nothing: then it is not called."""

    def backward_ended(self, tensors: Any) -> None: ...

    def loss_scaled(self, scaled: torch.Tensor, loss: torch.Tensor) -> None: ...

    def optimizer_made(self, optimizer: torch.optim.Optimizer) -> None: ...

    def optimizer_step_starting(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None: ...

    def optimizer_step_ended(self, optimizer: torch.optim.Optimizer) -> None: ...

    def gradients_reset(self, owner: torch.optim.Optimizer | torch.nn.Module) -> None:
        """``owner.zero_grad()`` is about to run."""
        ...

    def scaler_stepped(self, scaler: Any, optimizer: torch.optim.Optimizer) -> None:
        """After ``GradScaler.step``, which may have skipped ``optimizer.step()`` for inf/NaN gradients."""
        ...

    def scaler_step_starting(self, optimizer: torch.optim.Optimizer) -> None: ...

    def clipping(self, parameters: Any, by_norm: bool) -> KnownNorms | None:
        """Before a clipping function changes gradients (``by_norm``: it measures their 2-norm as it does, and
        ``clipped`` follows). May return the per-tensor norms of gradients measured just now, which the clip
        then reuses."""
        ...

    def clipped(self, total_norm: Any, max_norm: Any) -> None:
        """The clip that ``clipping`` announced with ``by_norm`` has run: the 2-norm of its gradients."""
        ...

    def scheduler_made(self, scheduler: LRScheduler) -> None: ...

    def autocast_entered(self, device_type: str, dtype: torch.dtype, compiling: bool) -> None:
        """An enabled autocast was entered with gradients on: a training forward's (an evaluation runs
        without them). ``compiling``: by torch.compile, which makes it part of the compiled code, where it
        is never entered again."""
        ...


class KnownNorms:
    """Gradients and their 2-norms as ``torch._foreach_norm(grads, 2)`` computed them, in ``seconds``, and
    where given, the same norms as one vector in that order (``vector``); ``taken`` once a clip used them
    instead of computing them itself."""

    __slots__ = ("grads", "norms", "seconds", "vector", "taken", "_by_id")

    def __init__(
        self,
        grads: list[torch.Tensor],
        norms: list[torch.Tensor],
        seconds: float = 0.0,
        vector: torch.Tensor | None = None,
    ) -> None:
        self.grads = grads
        self.norms = norms
        self.seconds = seconds
        self.vector = vector
        self.taken = False
        self._by_id: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def are_of(self, tensors: list[torch.Tensor]) -> bool:
        """Whether these are the norms of exactly ``tensors``, in that order."""
        grads = self.grads
        return len(tensors) == len(grads) and all(a is b for a, b in zip(tensors, grads))

    def of(self, tensors: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """The norms of ``tensors`` if all are known, else None."""
        if self.are_of(tensors):
            self.taken = True
            return list(self.norms)  # the usual case: the clip's one group, in the same order
        grads = self.grads
        if self._by_id is None:
            self._by_id = {id(grad): (grad, norm) for grad, norm in zip(grads, self.norms)}
        found = [self._by_id.get(id(tensor)) for tensor in tensors]
        if all(pair is not None and pair[0] is tensor for pair, tensor in zip(found, tensors)):
            self.taken = True
            return [pair[1] for pair in found]
        return None


_TORCH_CLIP = torch.nn.utils.clip_grad.clip_grad_norm_
# What torch's clip_grad_norm_ calls once it has the total norm (where torch has it), taken before any patching.
_CLIP_WITH_NORM = getattr(torch.nn.utils.clip_grad, "_clip_grads_with_norm_", None)
_CLIP_ARGUMENTS = ("max_norm", "norm_type", "error_if_nonfinite", "foreach")


def _clip_from_known(known: KnownNorms, original: Callable[..., Any], parameters: list, args: tuple, kwargs: dict):
    """``clip_grad_norm_`` as torch computes it, the total norm of the per-gradient norms and then
    ``clip_grads_with_norm_``, from the norms and their vector the probe measured just now: the same bits,
    without stacking the same norms a second time. None where torch's way could differ: a clip function other
    than torch's own, another norm, ``error_if_nonfinite`` (a check that syncs), per-tensor norms
    (``foreach=False``), another device than a CPU or a CUDA GPU, or gradients other than those measured or in
    another order."""
    vector = known.vector
    if original is not _TORCH_CLIP or _CLIP_WITH_NORM is None or vector is None or len(args) > 4:
        return None
    given = dict(zip(_CLIP_ARGUMENTS, args))
    if any(key in given or key not in _CLIP_ARGUMENTS for key in kwargs):
        return None  # (an argument twice: the original call raises, as it should)
    given.update(kwargs)
    if (
        "max_norm" not in given
        or not _is_two(given.get("norm_type", 2.0))
        or given.get("error_if_nonfinite")
        or given.get("foreach") is False
        or vector.device.type not in ("cpu", "cuda")
    ):
        return None
    if not known.are_of([p.grad for p in parameters if p.grad is not None]):
        return None
    with torch.no_grad():
        total = torch.linalg.vector_norm(vector, 2.0)
        _CLIP_WITH_NORM(parameters, given["max_norm"], total, given.get("foreach"))
    known.taken = True
    return total


def _reusing_norms(known: KnownNorms, call: Callable[[], Any]) -> Any:
    """``call()`` with ``torch._foreach_norm`` answering from ``known`` when asked for the 2-norms (in the
    tensors' own dtype) of tensors whose norms it holds, and computing as usual otherwise. A clip's result is
    the same bits either way; it only skips measuring what the probe just measured."""
    real = torch._foreach_norm
    thread = threading.get_ident()

    def foreach_norm(tensors, *args, **kwargs):
        ord_ = args[0] if args else kwargs.get("ord", 2)
        dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
        if dtype is None and threading.get_ident() == thread and _is_two(ord_):
            norms = known.of(tensors)
            if norms is not None:
                return norms
        return real(tensors, *args, **kwargs)

    torch._foreach_norm = foreach_norm
    try:
        return call()
    finally:
        torch._foreach_norm = real


class TorchHooks:
    """Installs the wrappers for one target; ``remove`` puts every original back."""

    def __init__(self, target: HookTarget):
        self._live = weakref.ref(target)
        self._undo: list[Callable[[], None]] = []
        self._impls: list[Callable[..., Any]] = []
        """The wrappers torch.compile must not trace, by key, called through ``_kept_out_of_compile``."""
        self._disabled: list[Callable[..., Any]] = []
        """The same wrappers ``torch.compiler.disable``d, once torch.compile is seen: what a trace calls."""
        self.backwards_running = 0
        """``torch.autograd.backward`` calls under way: one inside another is autograd's own (a reentrant
        checkpoint recomputing its block in the backward pass), not the script's."""

    def _target(self) -> HookTarget | None:
        target = self._live()
        return None if target is None or target.closed else target

    def _failed(self, where: str) -> None:
        """Inside an ``except``: tell the target its hook failed (never raising)."""
        target = self._live()
        if target is not None:
            try:
                target.hook_failed(where)
            except Exception:
                pass

    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def _kept_out_of_compile(self, wrapper: Callable[..., Any]) -> Callable[..., Any]:
        """``wrapper`` behind a call that runs it as it is, or ``torch.compiler.disable``d while torch.compile
        traces. A compiled train step calls ``backward()``, ``step()``, ``zero_grad()`` and the clip through
        optwatch's wrappers: traced, their code recompiled the step at every call (700x slower, most steps
        unrecorded). Disabled, torch.compile runs them at a graph break, as it runs ``backward()`` itself.
        Only under torch.compile: a disabled call sets up and takes down the eval-frame callback (0.26 us a
        call against 0.03, ``timeit``; below what the LLM loop resolves), and torch._dynamo is loaded by every
        optimizer's construction, compiling or not. Made when torch.compile is first seen: ``torch.compiler.disable``
        imports torch._dynamo, 0.9 s that a run which never compiles would wait for (and a name the script
        imports, ``clip_grad_norm_``, keeps this function)."""
        key = len(self._impls)
        self._impls.append(wrapper)
        disabled = self._disabled
        if disabled:  # (torch.compile seen already)
            disabled.append(torch.compiler.disable(wrapper))

        @functools.wraps(wrapper)
        def call(*args: Any, **kwargs: Any) -> Any:
            # Traced (``_compiling()``, a constant to the tracer), or run at a compiled function's graph break,
            # where torch.compile would trace each frame the wrapper calls.
            if disabled and (_compiling() or _compiled_frames() is not None):
                return disabled[key](*args, **kwargs)
            return wrapper(*args, **kwargs)

        return call

    def keep_out_of_compile(self) -> None:
        """torch.compile is about to be used (or was, before the probe): the wrappers' disabled versions."""
        disable = getattr(torch.compiler, "disable", None)
        if self._disabled or disable is None:
            return
        self._disabled.extend(disable(wrapper) for wrapper in self._impls)

    def _compile(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        @functools.wraps(original)
        def compile(*args: Any, **kwargs: Any) -> Any:
            hooks.keep_out_of_compile()  # (eagerly, before anything is traced; model.compile() comes here too)
            return original(*args, **kwargs)

        return compile

    def _tell(self, where: str, method: Callable[..., Any], *args: Any) -> Any:
        """Call ``method`` (a target's), reporting a failure instead of raising it."""
        try:
            return method(*args)
        except Exception:
            self._failed(where)
            return None

    def install(self) -> TorchHooks:
        self._patch(warnings, "warn", _skipping_wrappers)
        self._patch(torch.autograd, "backward", self._backward)
        self._patch(GradScaler, "scale", self._scaler_scale)
        self._patch(GradScaler, "step", self._scaler_step)
        self._patch(torch.optim.Optimizer, "__init__", self._optimizer_init)
        pre = register_optimizer_step_pre_hook(self._kept_out_of_compile(self._pre_step))
        post = register_optimizer_step_post_hook(self._kept_out_of_compile(self._post_step))
        self._undo += [pre.remove, post.remove]
        self._patch(torch.optim.Optimizer, "zero_grad", self._zero_grad)
        self._patch(torch.nn.Module, "zero_grad", self._zero_grad)
        self._patch(_BaseDataLoaderIter, "__next__", self._next_batch)
        self._patch(_BaseDataLoaderIter, "__init__", self._iterator_init)
        for module in (torch.nn.utils, torch.nn.utils.clip_grad):
            self._patch(module, "clip_grad_norm_", functools.partial(self._clip, returns_norm=True))
            self._patch(module, "clip_grad_value_", functools.partial(self._clip, returns_norm=False))  # by value
            if hasattr(module, "clip_grads_with_norm_"):  # torch 2.6+: what accelerate and FSDP2 call
                self._patch(module, "clip_grads_with_norm_", self._clip_with_norm)
        self._patch(LRScheduler, "__init__", self._scheduler_init)
        if "__init__" in vars(ReduceLROnPlateau):  # it makes itself without LRScheduler's __init__
            self._patch(ReduceLROnPlateau, "__init__", self._scheduler_init)
        # torch.cuda.amp.autocast and accelerate's and Lightning's autocast all enter through this one.
        self._patch(torch.amp.autocast_mode.autocast, "__enter__", self._autocast_enter)
        self._patch(torch, "compile", self._compile)
        if "torch._dynamo" in sys.modules:  # (loaded already, by an optimizer or by a torch.compile before watch())
            self.keep_out_of_compile()
        return self

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # --- the wrappers ---------------------------------------------------------------------------------
    def _backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def backward(tensors, *args, **kwargs):
            target = hooks._live()
            if target is None or target.closed or hooks.backwards_running:
                return original(tensors, *args, **kwargs)  # (inside a backward: no loss, no step of its own)
            try:
                weights = args[0] if args else kwargs.get("grad_tensors")
                one = isinstance(tensors, torch.Tensor)
                weight = weights if one and isinstance(weights, torch.Tensor) and weights.numel() == 1 else None
                # (Several tensors that the script's grad_tensors weigh: no loss of the step.)
                replaced = target.backward_starting(tensors if weights is None or one else None, weight)
            except Exception:
                hooks._failed("backward hook")
                replaced = None
            hooks.backwards_running += 1
            try:
                result = original(replaced if replaced is not None else tensors, *args, **kwargs)
            finally:
                hooks.backwards_running -= 1
            if target.backward_end_needed:
                hooks._tell("backward hook", target.backward_ended, tensors)
            return result

        return hooks._kept_out_of_compile(backward)

    def _scaler_scale(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def scale(scaler, outputs):
            scaled = original(scaler, outputs)
            target = hooks._target()
            if target is not None and isinstance(scaled, torch.Tensor) and isinstance(outputs, torch.Tensor):
                hooks._tell("GradScaler hook", target.loss_scaled, scaled, outputs)
            return scaled

        return hooks._kept_out_of_compile(scale)

    def _scaler_step(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def step(scaler, optimizer, *args, **kwargs):
            target = hooks._target()
            if target is None:
                return original(scaler, optimizer, *args, **kwargs)
            hooks._tell("GradScaler hook", target.scaler_step_starting, optimizer)
            result = original(scaler, optimizer, *args, **kwargs)
            hooks._tell("GradScaler hook", target.scaler_stepped, scaler, optimizer)
            return result

        return hooks._kept_out_of_compile(step)

    def _optimizer_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def init(optimizer, *args, **kwargs):
            original(optimizer, *args, **kwargs)
            target = hooks._target()
            if target is not None:
                hooks._tell("optimizer hook", target.optimizer_made, optimizer)

        return init

    def _pre_step(self, optimizer, args, kwargs) -> None:
        target = self._live()
        if target is not None and not target.closed:
            try:
                target.optimizer_step_starting(optimizer, args, kwargs)
            except Exception:
                self._failed("optimizer step hook")

    def _post_step(self, optimizer, args, kwargs) -> None:
        target = self._live()
        if target is not None and not target.closed:
            try:
                target.optimizer_step_ended(optimizer)
            except Exception:
                self._failed("optimizer step hook")

    def _zero_grad(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def zero_grad(owner, *args, **kwargs):
            target = hooks._live()
            if target is not None and not target.closed:
                try:
                    target.gradients_reset(owner)
                except Exception:
                    hooks._failed("zero_grad hook")
            return original(owner, *args, **kwargs)

        return hooks._kept_out_of_compile(zero_grad)

    def _next_batch(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def next_batch(iterator):
            started = time.perf_counter()
            batch = original(iterator)
            target = hooks._live()
            if target is not None and not target.closed:
                try:
                    target.batch_taken(iterator, started, time.perf_counter(), batch)
                except Exception:
                    hooks._failed("DataLoader hook")
            return batch

        return hooks._kept_out_of_compile(next_batch)

    def _iterator_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def iterator_init(iterator, loader, *args, **kwargs):
            original(iterator, loader, *args, **kwargs)
            target = hooks._target()
            if target is not None:
                hooks._tell("DataLoader hook", target.loader_started, loader, iterator)

        return iterator_init

    def _clip(self, original: Callable[..., Any], returns_norm: bool):
        """``clip_grad_norm_(parameters, max_norm, norm_type=2.0, ...)`` (``returns_norm``) or ``clip_grad_value_``."""
        hooks = self

        @functools.wraps(original)
        def clip(parameters, *args, **kwargs):
            target = hooks._live()
            if target is None or target.closed:
                return original(parameters, *args, **kwargs)
            if isinstance(parameters, torch.Tensor):
                parameters = [parameters]
            elif not isinstance(parameters, (list, tuple)):
                parameters = list(parameters)  # a generator is read once: by the probe and the clip alike
            # (By another norm than the 2-norm, the clip's figure is not the step's gradient norm: measured as usual.)
            by_norm = returns_norm and _is_two(kwargs.get("norm_type", args[1] if len(args) > 1 else 2.0))
            try:
                known = target.clipping(parameters, by_norm)
            except Exception:
                hooks._failed("clipping hook")
                known = None
            if known and not being_traced():
                result = _clip_from_known(known, original, parameters, args, kwargs) if returns_norm else None
                if result is None:
                    result = _reusing_norms(known, lambda: original(parameters, *args, **kwargs))
            else:
                result = original(parameters, *args, **kwargs)
            if by_norm:
                try:
                    target.clipped(result, kwargs.get("max_norm", args[0] if args else None))
                except Exception:
                    hooks._failed("clipping hook")
            return result

        return hooks._kept_out_of_compile(clip)

    def _clip_with_norm(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        @functools.wraps(original)
        def clip_grads_with_norm_(parameters, max_norm, total_norm, *args, **kwargs):
            target = hooks._target()
            if target is None:
                return original(parameters, max_norm, total_norm, *args, **kwargs)
            if not isinstance(parameters, (list, tuple, torch.Tensor)):
                parameters = list(parameters)
            hooks._tell("clipping hook", target.clipping, parameters, True)
            result = original(parameters, max_norm, total_norm, *args, **kwargs)
            hooks._tell("clipping hook", target.clipped, total_norm, max_norm)
            return result

        return hooks._kept_out_of_compile(clip_grads_with_norm_)

    def _scheduler_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def init(scheduler, *args, **kwargs):
            original(scheduler, *args, **kwargs)
            target = hooks._target()
            if target is not None:
                hooks._tell("scheduler hook", target.scheduler_made, scheduler)

        return init

    def _autocast_enter(self, original: Callable[..., Any]) -> Callable[..., Any]:
        hooks = self

        def __enter__(autocast):
            entered = original(autocast)
            target = hooks._live()
            if target is not None and not target.closed and autocast._enabled and torch.is_grad_enabled():
                try:
                    target.autocast_entered(autocast.device, autocast.fast_dtype, _compiling())
                except Exception:
                    hooks._failed("autocast hook")
            return entered

        return __enter__


def _is_two(norm_type: Any) -> bool:
    try:
        return float(norm_type) == 2.0
    except (TypeError, ValueError):
        return False


_WRAPPERS_FILE = sys._getframe(0).f_code.co_filename
"""Where every wrapper here is defined: their frames are not counted in a warning's ``stacklevel``."""


def _skipping_wrappers(original: Callable[..., Any]) -> Callable[..., Any]:
    """``warnings.warn`` that counts ``stacklevel`` without the wrappers' frames. A library warns for the
    script's line from deep inside a call (torch's backward hooks use ``stacklevel=5``): under a wrapper it
    named the wrapper's line ("optwatch/probe/hooks.py:253"), and filters by module or line missed it."""

    @functools.wraps(original)
    def warn(message: Any, category: Any = None, stacklevel: int = 1, source: Any = None, **kwargs: Any) -> None:
        frame, level, skipped = sys._getframe(1), 1, 0
        while frame is not None and level < stacklevel:
            frame = frame.f_back
            if frame is not None and frame.f_code.co_filename == _WRAPPERS_FILE:
                skipped += 1
            else:
                level += 1
        # (+1: this frame, between the caller and warnings.warn)
        original(message, category, stacklevel + skipped + 1, source, **kwargs)

    return warn
