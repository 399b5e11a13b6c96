"""The probe's kernel: what a step is, and the step record that says what it did, at no host-device sync.

``hooks.TorchHooks`` tells the probe where the training loop is; the probe turns that into one ``step``
record per step of the primary optimizer and calls its plugins (``plugin.ProbePlugin``) at each point of
the step. The rules (the README's "Instrumenting" says them to users):

- A step is one ``step()`` of the primary optimizer: the one given to ``watch``, else the first that steps;
  a step a GradScaler skipped for inf/NaN gradients counts (``amp_overflow``). With no optimizer at all, a
  ``backward()`` on a scalar is a step.
- A step's loss is the sum of the scalars backpropagated since the previous step of any optimizer (what
  gradient accumulation averages into the gradients it applies), unscaled when a GradScaler scaled them;
  under a closure (LBFGS, Lightning) the closure's first evaluation. Every other optimizer that steps
  gets its loss by the same rule, in the ``losses`` map of the step it stepped in.
- ``grad_norm`` is measured once the step's gradients are final and not yet clipped (see
  ``ProbePlugin.on_gradients``): the norm that can explode, whatever clips it.
- ``samples``: the batches a training step consumed (a batch taken from a DataLoader and followed by a
  ``backward()``); batches that no backward consumed, an evaluation loader's, are ``eval_batches``, and
  the time spent waiting for them is no part of ``data_wait_s``.

Device values stay on the device: the channel reads them back in batches, off the training thread.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from optwatch import protocol
from optwatch.options import ProbeOptions
from optwatch.probe import sharding
from optwatch.probe.channel import Channel
from optwatch.probe.governor import DetailGovernor
from optwatch.probe.hooks import TorchHooks
from optwatch.probe.plugin import CALLBACKS, PER_STEP_CALLBACKS, ProbePlugin, as_optwatch_work
from optwatch.probe.readback import DeviceBatch
from optwatch.probe.vectors import as_vector

log = logging.getLogger(__name__)

Callbacks = dict[str, list[tuple[str, Callable[..., Any]]]]


def batch_size_of(batch: Any, depth: int = 0) -> int | None:
    """Samples in a DataLoader batch: the leading dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.size(0)) if batch.dim() else None  # size(0): a nested tensor has no .shape
    if depth < 2:
        if isinstance(batch, (list, tuple)) and batch:
            return batch_size_of(batch[0], depth + 1)
        if isinstance(batch, dict) and batch:
            return batch_size_of(next(iter(batch.values())), depth + 1)
        if hasattr(batch, "keys") and hasattr(batch, "values"):  # a Hugging Face BatchEncoding
            return batch_size_of(next(iter(batch.values()), None), depth + 1)
    return None


def learning_rate_of(lr: Any) -> float | torch.Tensor | None:
    """A param group's ``lr`` as one number (a device tensor stays one, read back later), or None when it
    is not one: a rate per dimension, a schedule object."""
    if isinstance(lr, bool):
        return None
    if isinstance(lr, torch.Tensor) and lr.device.type != "cpu":
        return lr.detach() if lr.numel() == 1 else None
    try:
        return float(lr) if lr is not None else None
    except (TypeError, ValueError, RuntimeError):
        return None


def global_norm(grads: list[torch.Tensor]) -> torch.Tensor | None:
    """The 2-norm of all ``grads`` together, in float32 on the first one's device (None without any)."""
    grads = [g for g in grads if g is not None and not g.is_sparse]
    if not grads:
        return None
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for grad in grads:
        by_device.setdefault(grad.device, []).append(grad)
    norms = [torch.linalg.vector_norm(as_vector(torch._foreach_norm(group)).float()) for group in by_device.values()]
    if len(norms) == 1:
        return norms[0]
    first = norms[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(first, non_blocking=True) for n in norms]))


def _name_in_main(obj: Any) -> str | None:
    """The name the script's ``__main__`` gives ``obj`` among its globals, if it does."""
    main = sys.modules.get("__main__")
    for name, value in list(vars(main).items()) if main is not None else ():
        if value is obj and not name.startswith("_"):
            return name
    return None


_live_probes: weakref.WeakSet[Probe] = weakref.WeakSet()


def _forked() -> None:
    for probe in list(_live_probes):
        probe._forked()


os.register_at_fork(after_in_child=_forked)


class _Fetches:
    """The batches taken in this step from loaders not yet known to feed training: their count and wait."""

    __slots__ = ("count", "wait_s")

    def __init__(self) -> None:
        self.count = 0
        self.wait_s = 0.0


class Probe:
    """Everything optwatch does inside one training process (one rank): a ``ProbeContext`` for its plugins
    and the ``HookTarget`` of its torch hooks."""

    def __init__(
        self,
        run_dir: Path,
        run_id: str,
        options: ProbeOptions,
        channel: Channel,
        plugins: list[ProbePlugin],
        rank: int = 0,
        world_size: int = 1,
    ):
        self.run_dir = run_dir
        self.run_id = run_id
        self.options = options
        self.channel = channel
        self.rank = rank
        self.world_size = world_size
        self.owner_pid = os.getpid()
        self.commands = channel.commands
        self.step = 0
        self.batch_size: int | None = None
        self.model: torch.nn.Module | None = None
        self.device: torch.device | None = None
        self.training_thread: int | None = None
        self.nonfinite_seen = False
        self.clip_measures = False
        self.governor = DetailGovernor(options.budget, options.grad_full_cadence_steps)
        self.detailed = True
        self.next_detailed = True
        self.detail_every = 1
        self.own_s = 0.0
        """Seconds optwatch's own code has run on the training thread so far in this step (the step
        record's ``optwatch_s``); its background threads' CPU time is ``optwatch_bg_s``."""
        # optimizers
        self._primary: torch.optim.Optimizer | None = None
        self._optimizers_made = 0
        self._names: weakref.WeakKeyDictionary[torch.optim.Optimizer, str] = weakref.WeakKeyDictionary()
        self._after_primary: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        """Optimizers that step after the primary in an iteration (a GAN's generator): their losses join the
        record of the primary's step before them."""
        self._before_primary: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        """Optimizers that stepped before the primary's first step: their losses join the next record."""
        self._primary_stepped_once = False
        self._schedulers: list[weakref.ref[Any]] = []
        """The LR schedulers made so far, weakly (refs, not a WeakSet: a scheduler class may be unhashable)."""
        self._stepped_since_boundary: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._stepping: torch.optim.Optimizer | None = None
        self._closure_loss_taken = False
        self._scaler_stepping: torch.optim.Optimizer | None = None
        self._stepped = False
        self._params: list[torch.Tensor] = []
        self._params_key: tuple[tuple[int, int], ...] | None = None
        self._param_ids: frozenset[int] = frozenset()
        self._model_searched = False
        self._param_names: dict[int, str] | None = None
        # this step's accounts
        self._losses: list[torch.Tensor] = []
        self._scaled: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._other_losses: dict[str, torch.Tensor] = {}
        self._step_start: float | None = None
        self._backward_started: float | None = None
        self._data_wait_s = 0.0
        self._samples = 0
        self._training_loaders: list[weakref.ref[Any]] = []
        """DataLoader iterators a backward() consumed a batch of: the training's (few: one an epoch)."""
        self._unconsumed: weakref.WeakKeyDictionary[Any, collections.deque[tuple[int | None, float]]] = (
            weakref.WeakKeyDictionary()
        )
        """Per iterator, the (size, fetch start) of the batches taken and not yet consumed by a backward(), oldest
        first: a loop may take them ahead (accelerate's look-ahead, Lightning's prefetch, the Trainer taking
        every micro-batch of a step first)."""
        self._latest_iterator: weakref.ref[Any] | None = None
        self._unknown_fetches: dict[int, _Fetches] = {}
        self._gradients_final = False
        self._grad_norm: torch.Tensor | None = None
        self._grad_part = False
        """``_grad_norm`` is this rank's part of a sharded model's (``probe.sharding``), for the hub to combine."""
        self._norm_part = sharding.NormPart()
        self._clip_norm: Any = None
        self._clip_max: Any = None
        self._clip_params: list[torch.Tensor] = []
        self._no_optimizer_step_due = False
        self.loader: dict[str, Any] = {}
        """Settings of the DataLoader the training iterates, for the verdict's advice (replaced whole)."""
        # records
        self._held: dict[str, Any] | None = None
        """The newest step record, kept until the optimizers that step after the primary have added their
        losses to it (or the next step ends)."""
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.perf_counter()
        self._last_bg_cpu = 0.0
        # plugins
        self._plugins = list(plugins)
        self._broken: set[str] = set()
        self._failed_hooks: set[str] = set()
        self._callbacks: Callbacks = {}
        self._light_callbacks: Callbacks = {}
        self._active: Callbacks = {}
        self.retabulate()
        self._hooks = TorchHooks(self)
        self._sampler: threading.Thread | None = None
        self._stop_sampler = threading.Event()
        self._closed = False

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Probe:
        self.channel.on_ready(self._sentinel)
        self.channel.start()
        self.publish([self._hello()])
        self._hooks.install()
        self.retabulate()  # the list may have been changed in place since it was set
        self._call("install")
        self._sampler = threading.Thread(target=self._sample_loop, name="optwatch-sampler", daemon=True)
        self._sampler.start()
        _live_probes.add(self)
        atexit.register(self.close)
        return self

    def active(self) -> bool:
        return not self._closed  # a forked child's copy is closed by _forked

    def _forked(self) -> None:
        """In a child forked from the training process (a DataLoader worker, a script's own fork): this probe
        is the parent's; the child's hooks pass straight through and it never closes the parent's run."""
        self._closed = True

    def close(self, exit_code: int | None = None) -> None:
        """Flush everything still pending and say the rank ended. Safe to call twice; a no-op in a fork."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)  # else the exit handler keeps this probe, and the model, alive
        self._hooks.remove()
        self._call("close")
        self._stop_sampler.set()
        if self._no_optimizer_step_due:
            self._finish_step(time.perf_counter())
        self._release_held()
        self._flush()
        self.channel.submit_records(
            [
                protocol.make_record(
                    protocol.END, self.rank, steps=self.step, dropped=self.channel.dropped, exit_code=exit_code
                )
            ]
        )
        self.channel.close()

    def _hello(self) -> dict[str, Any]:
        record = protocol.make_record(
            protocol.HELLO,
            self.rank,
            run_id=self.run_id,
            script=self.options.script,
            argv=self.options.argv,
            pid=os.getpid(),
            host=socket.gethostname(),
            world_size=self.world_size,
            torch=torch.__version__,
            python=sys.version.split()[0],
            batch_size=self.batch_size,
            device=None,
            device_name=None,
        )
        record["diagnosis"] = {
            "grad_thresholds": self.options.grad_thresholds,
            "forward_check": self.options.forward_check,
            "settled_from": self.options.grad_full_cadence_steps if self.options.budget > 0 else 0,
        }
        return record

    # --- the explicit API -------------------------------------------------------------------------------
    def attach(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        batch_size: int | None = None,
    ) -> Probe:
        if model is not None:
            self.model = model
            self._param_names = None
        if optimizer is not None:
            self._primary = optimizer
        if batch_size is not None:
            if batch_size <= 0:
                raise ValueError(f"batch_size must be positive, got {batch_size}")
            self.batch_size = batch_size
        return self

    def log(self, **metrics: float) -> None:
        """Publish named values (eval accuracy, perplexity...) tagged with the current step."""
        values = {}
        for name, value in metrics.items():
            values[name] = value.detach() if isinstance(value, torch.Tensor) else float(value)
        self.emit(protocol.make_record("metric", self.rank, step=self.step, values=values))

    # --- ProbeContext ------------------------------------------------------------------------------------
    @property
    def plugins(self) -> list[ProbePlugin]:
        return self._plugins

    @plugins.setter
    def plugins(self, plugins: list[ProbePlugin]) -> None:
        self._plugins = list(plugins)
        self.retabulate()

    @property
    def primary_optimizer(self) -> torch.optim.Optimizer | None:
        return self._primary

    def emit(self, record: dict[str, Any]) -> None:
        self._pending.append(record)

    def publish(self, records: list[dict[str, Any]]) -> None:
        self.channel.submit_records(records)

    def flush(self) -> None:
        self._flush()

    def send_decision(self, decision: dict[str, Any]) -> None:
        self.channel.send_decision(decision)

    def report_grad_norm(self, norm: torch.Tensor | None, part: bool = False) -> None:
        self._grad_norm = norm
        self._grad_part = part

    def charge(self, started: float) -> None:
        self.own_s += time.perf_counter() - started

    def pin_detail(self) -> None:
        self.governor.pinned = True

    def learning_rate(self, optimizer: torch.optim.Optimizer | None = None) -> float | torch.Tensor | None:
        optimizer = optimizer or self._primary
        if optimizer is None or not optimizer.param_groups:
            return None
        return learning_rate_of(optimizer.param_groups[0].get("lr"))

    def parameters(self) -> list[torch.Tensor]:
        if self._primary is not None:
            groups = self._primary.param_groups
            key = tuple((id(group["params"]), len(group["params"])) for group in groups)
            if key != self._params_key:
                self._params = [p for group in groups for p in group["params"]]
                self._param_ids = frozenset(map(id, self._params))
                self._params_key = key
            return self._params
        if self.model is not None:
            return list(self.model.parameters())
        return self._clip_params  # before the first optimizer step: what the script clips, if it does

    def find_model(self) -> torch.nn.Module | None:
        """The model being trained: the one given to ``watch``, else found once from the optimizer.

        Zero-code mode never sees the model, so at the first step it looks among live modules for the
        largest one whose parameters the primary optimizer trains. Cached; None when there is none.
        """
        if self.model is not None or self._model_searched or self._primary is None:
            return self.model
        self._model_searched = True
        self.model = self._largest_module_of(self._primary)
        return self.model

    @staticmethod
    def _largest_module_of(optimizer: torch.optim.Optimizer) -> torch.nn.Module | None:
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return Probe._largest_module(lambda param: id(param) in trained)

    @staticmethod
    def _largest_module(trained: Callable[[torch.Tensor], bool]) -> torch.nn.Module | None:
        """The live module with the most parameters, all of them ``trained`` (a walk over every object: once)."""
        import gc

        best, best_size = None, (0, 0)
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.nn.Module):  # type(): isinstance trips lazy deprecated objects
                params = list(obj.parameters())
                # On a tie in parameters, the module with more submodules: a wrapper over its only child.
                size = (len(params), sum(1 for _ in obj.modules())) if params else (0, 0)
                if size > best_size and all(trained(p) for p in params):
                    best, best_size = obj, size
        return best

    def schedulers(self) -> list[Any]:
        """The LR schedulers made so far that are still alive."""
        return [scheduler for scheduler in (ref() for ref in self._schedulers) if scheduler is not None]

    def parameter_names(self) -> dict[int, str]:
        if self._param_names is None:
            model = self.find_model()
            if model is None:
                return {}
            self._param_names = {id(p): name for name, p in model.named_parameters()}
        return self._param_names

    # --- plugins ---------------------------------------------------------------------------------------
    def retabulate(self) -> None:
        """Per callback, the working plugins that implement it, for detail steps and for the steps between
        (where a plugin gets only the ``between_detail_steps`` it names): made once, as several callbacks
        run at every step and most plugins leave most of them out."""

        def implementing(method: str, light: bool) -> list[tuple[str, Callable[..., Any]]]:
            chosen = []
            for plugin in self._plugins:
                if plugin.name in self._broken or method in plugin.idle_callbacks:
                    continue
                if getattr(type(plugin), method, None) is getattr(ProbePlugin, method, None):
                    continue
                if light and plugin.between_detail_steps is not None and method not in plugin.between_detail_steps:
                    continue
                chosen.append((plugin.name, getattr(plugin, method)))
            return chosen

        self._callbacks = {method: implementing(method, False) for method in CALLBACKS}
        self._light_callbacks = {method: implementing(method, method in PER_STEP_CALLBACKS) for method in CALLBACKS}
        self._active = self._callbacks if self.detailed else self._light_callbacks

    def _call(self, method: str, *args: Any) -> list[Any]:
        """Run one callback of every plugin that implements it. A plugin that raises is switched off and
        logged once: optwatch must never break the training (a KeyboardInterrupt, a requested stop, goes
        through)."""
        results = []
        for name, callback in self._active[method]:
            try:
                results.append(callback(self, *args))
            except Exception:
                self.switch_off(name, method)
        return results

    def _call_in_step(self, method: str, *args: Any) -> list[Any]:
        """``_call`` from a hook, inside an ``optwatch`` range while a profiler records (the hook charges the
        time to optwatch's cost)."""
        if not self._active[method]:
            return []
        if torch.autograd.profiler._is_profiler_enabled:
            with as_optwatch_work():
                return self._call(method, *args)
        return self._call(method, *args)

    def switch_off(self, plugin: str, where: str) -> None:
        if plugin in self._broken:
            return
        self._broken.add(plugin)
        self.retabulate()
        log.exception("optwatch: %s failed in %s and is switched off; training goes on", plugin, where)
        if where != "close":
            for candidate in self._plugins:
                if candidate.name == plugin:
                    try:
                        candidate.close(self)
                    except Exception:
                        log.exception("optwatch: %s failed to close; its hooks may stay", plugin)

    def hook_failed(self, where: str) -> None:
        """optwatch's own accounting raised in one of its hooks (a bug, or a loop it does not expect): logged
        once per hook; this step's partial accounts are dropped and the training goes on."""
        if where not in self._failed_hooks:
            self._failed_hooks.add(where)
            log.exception("optwatch: its %s failed; training goes on (this step may go unrecorded)", where)
        self._clear_step()
        self._stepping = None
        self._step_start = time.perf_counter()
        self.own_s = 0.0

    # --- HookTarget: batches -------------------------------------------------------------------------------
    def batch_taken(self, iterator: Any, started: float, finished: float, batch: Any) -> None:
        if self._no_optimizer_step_due:
            self._finish_step(started)
        size = batch_size_of(batch)
        queue = self._unconsumed.get(iterator)
        if queue is None:
            queue = self._unconsumed[iterator] = collections.deque(maxlen=4096)
        queue.append((size, started))
        self._latest_iterator = weakref.ref(iterator)
        if any(ref() is iterator for ref in self._training_loaders):
            self._data_wait_s += finished - started
        else:
            fetches = self._unknown_fetches.get(id(iterator))
            if fetches is None:
                fetches = self._unknown_fetches[id(iterator)] = _Fetches()
            fetches.count += 1
            fetches.wait_s += finished - started
        if self._active["on_batch"]:
            self._call_in_step("on_batch")
        self.own_s += time.perf_counter() - finished

    def loader_started(self, loader: Any) -> None:
        """A DataLoader began an iteration: its settings go with the system records (the verdict's advice)."""
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.loader = {
                "num_workers": loader.num_workers,
                "pin_memory": bool(loader.pin_memory),
                "batch_size": loader.batch_size,
                "prefetch_factor": loader.prefetch_factor,
                "persistent_workers": loader.persistent_workers,
            }

    def _consume_batch(self) -> None:
        """A backward() consumed a batch: the oldest not yet consumed of a loader that feeds training, or, when
        none has one, of the loader the newest batch came from, which is then known to feed training."""
        if self._latest_iterator is None:
            return  # no DataLoader in this loop
        iterator = next(
            (it for it in (ref() for ref in self._training_loaders) if it is not None and self._unconsumed.get(it)),
            None,
        )
        if iterator is None:
            iterator = self._latest_iterator()
            if iterator is None or not self._unconsumed.get(iterator):
                return
            self._training_loaders = [ref for ref in self._training_loaders if ref() is not None]
            self._training_loaders.append(weakref.ref(iterator))
            fetches = self._unknown_fetches.pop(id(iterator), None)
            if fetches is not None:
                self._data_wait_s += fetches.wait_s
        size, started = self._unconsumed[iterator].popleft()
        if size:
            self._samples += size
        if self._step_start is None:
            self._begin_first_step(started)

    def _begin_first_step(self, now: float) -> None:
        """The first step begins at its first consumed batch, or else at its backward(): what optwatch did
        before (checks of forwards before the training, a sanity check's validation) is no part of it."""
        self._step_start = now
        self.own_s = 0.0
        self._last_bg_cpu = self.channel.cpu_s  # what the threads did before the training is no step's

    # --- HookTarget: backward ------------------------------------------------------------------------------
    def backward_starting(self, tensors: Any) -> Any:
        now = time.perf_counter()
        if self._no_optimizer_step_due:
            self._finish_step(now)
        self.training_thread = threading.get_ident()
        self._consume_batch()
        if self._step_start is None:
            self._begin_first_step(now)
        is_loss = isinstance(tensors, torch.Tensor) and tensors.numel() == 1 and tensors.requires_grad
        replacement = None
        if is_loss:
            if self._backward_started is None:
                self._backward_started = now
            self._take_loss(tensors)
            for replaced in self._call_in_step("on_backward_start", tensors):
                if replaced is not None:
                    replacement = replaced
        self.own_s += time.perf_counter() - now
        return replacement

    def _take_loss(self, tensor: torch.Tensor) -> None:
        if self._stepping is not None:  # inside an optimizer's step(): a closure's evaluation
            if self._closure_loss_taken:
                return  # only the first evaluation is the step's loss
            self._closure_loss_taken = True
        scaled = self._scaled.pop(id(tensor), None)
        if scaled is not None and scaled[0] is tensor:
            tensor = scaled[1]  # GradScaler.scale(loss): the loss as the script computed it
        self._losses.append(tensor.detach())
        self._scaled.clear()

    def loss_scaled(self, scaled: torch.Tensor, loss: torch.Tensor) -> None:
        if scaled.numel() == 1:
            self._scaled[id(scaled)] = (scaled, loss)

    def backward_ended(self, tensors: Any) -> None:
        if not (isinstance(tensors, torch.Tensor) and tensors.numel() == 1 and tensors.requires_grad):
            return
        started = time.perf_counter()
        if self._active["on_backward_end"]:
            self._call_in_step("on_backward_end", tensors)
        if self._stepping is not None and self._stepping is self._primary and self._closure_loss_taken:
            self._gradients_ready(self._primary)  # a closure's first backward: its gradients are the step's
        elif self._primary is None and self._optimizers_made == 0:
            # No optimizer in this loop: each backward is a step, ended when the next begins (so that a
            # clip after this backward belongs to this step).
            self._gradients_ready(None)
            self._no_optimizer_step_due = True
        self.own_s += time.perf_counter() - started

    # --- HookTarget: gradients -----------------------------------------------------------------------------------
    def _gradients_ready(self, optimizer: torch.optim.Optimizer | None, clip_measures: bool = False) -> None:
        """The step's gradients are final and unclipped: once per step, the plugins measure them, and the
        global norm is taken unless a plugin or the clip about to run (``clip_measures``) gives it. Between
        detail steps (a step too short for optwatch's budget) only a clip's norm, which costs nothing, is."""
        if self._gradients_final:
            return
        self._gradients_final = True
        if optimizer is None and self._optimizers_made == 0 and self.model is None and not self._model_searched:
            # No optimizer: the model is the largest module whose parameters all got gradients.
            self._model_searched = True
            self.model = self._largest_module(lambda param: param.grad is not None)
        if self.device is None:
            params = self.parameters()
            device = params[0].device if params else (self._losses[-1].device if self._losses else None)
            if device is not None:
                self._announce_device(device)
        self.clip_measures = clip_measures
        self._call_in_step("on_gradients", optimizer)
        if self._grad_norm is None and not clip_measures and self.detailed:
            params = self.parameters()
            grads = [p.grad for p in params]
            if sharding.is_sharded(grads):
                self.report_grad_norm(self._norm_part(params, self.world_size), part=True)
            else:
                self._grad_norm = global_norm(grads)

    def clipping(self, parameters: Any, by_norm: bool) -> None:
        started = time.perf_counter()
        params = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
        if params and (self._primary is None or id(params[0]) in self._param_ids or not self._param_ids):
            self._clip_params = params
            self._gradients_ready(self._primary, clip_measures=by_norm)
        self.own_s += time.perf_counter() - started

    def clipped(self, total_norm: Any, max_norm: Any) -> None:
        if isinstance(total_norm, torch.Tensor) and total_norm.numel() == 1:
            self._clip_norm = sharding.replicated_value(total_norm.detach())
        try:
            self._clip_max = float(max_norm)
        except (TypeError, ValueError):
            self._clip_max = None

    # --- HookTarget: optimizers ----------------------------------------------------------------------------------
    def optimizer_made(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizers_made += 1

    def scheduler_made(self, scheduler: Any) -> None:
        self._schedulers = [ref for ref in self._schedulers if ref() is not None]
        self._schedulers.append(weakref.ref(scheduler))

    def optimizer_step_starting(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        started = time.perf_counter()
        if self._primary is None:
            self._primary = optimizer
        self._stepping = optimizer
        self._stepped = True
        self._closure_loss_taken = False
        if optimizer is self._primary:
            # (The step hooks get step()'s arguments with the optimizer first.)
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
            if not callable(closure):
                self._gradients_ready(optimizer)
            self._call_in_step("before_optimizer_step", optimizer)
        self.own_s += time.perf_counter() - started

    def optimizer_step_ended(self, optimizer: torch.optim.Optimizer) -> None:
        started = time.perf_counter()
        self._stepping = None
        if optimizer is self._primary:
            self._gradients_ready(optimizer)  # a closure that never called backward
            self._call_in_step("after_optimizer_step", optimizer)
            self.own_s += time.perf_counter() - started
            self._finish_step(time.perf_counter())
        else:
            self._other_optimizer_stepped(optimizer)
            self.own_s += time.perf_counter() - started

    def scaler_step_starting(self, optimizer: torch.optim.Optimizer) -> None:
        self._stepped = False

    def scaler_stepped(self, scaler: Any, optimizer: torch.optim.Optimizer) -> None:
        """GradScaler skipped ``optimizer.step()`` for inf/NaN gradients: that iteration is a step too."""
        if self._stepped or not scaler.is_enabled():
            return
        if self._primary is None:
            self._primary = optimizer
        if optimizer is not self._primary:
            self._other_optimizer_stepped(optimizer)
            return
        scale = scaler._scale.detach().clone() if isinstance(scaler._scale, torch.Tensor) else None
        self._gradients_ready(optimizer)
        self._finish_step(time.perf_counter(), amp_overflow=True, amp_scale=scale)

    def _other_optimizer_stepped(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer other than the primary stepped: it takes the losses backpropagated since the last
        step of any optimizer, for the record of the primary's step it belongs with."""
        name = self._name_of(optimizer)
        loss = self._take_losses()
        if optimizer not in self._before_primary and optimizer not in self._after_primary:
            (self._after_primary if self._primary_stepped_once else self._before_primary).add(optimizer)
        self._stepped_since_boundary.add(optimizer)
        if optimizer in self._after_primary and self._held is not None:
            if loss is not None:
                losses = self._held.setdefault("losses", {self._name_of(self._primary): self._held["loss"]})
                losses[name] = loss
            self._release_held_when_complete()
        elif loss is not None:
            self._other_losses[name] = loss

    def _name_of(self, optimizer: torch.optim.Optimizer) -> str:
        """A readable name for an optimizer: the script's own name for it (``optD``), else for the model it
        trains (``netD``), else that model's class (``Discriminator``), numbered when two would share one."""
        name = self._names.get(optimizer)
        if name is None:
            model = self.find_model() if optimizer is self._primary else self._largest_module_of(optimizer)
            base = (
                _name_in_main(optimizer)
                or (model is not None and _name_in_main(model))
                or type(model if model is not None else optimizer).__name__
            )
            taken = set(self._names.values())
            name, number = base, 2
            while name in taken:
                name, number = f"{base}{number}", number + 1
            self._names[optimizer] = name
        return name

    def _take_losses(self) -> torch.Tensor | None:
        """The sum of the scalars backpropagated since the previous step of any optimizer (cleared)."""
        losses, self._losses = self._losses, []
        if not losses:
            return None
        if len(losses) == 1:
            return losses[0]
        total = None  # added one by one: one operator per micro-batch where stacking takes four
        for loss in losses:
            if loss.dim():
                loss = loss.reshape(())
            if not loss.is_floating_point() or loss.element_size() < 4:
                loss = loss.float()  # a sum of bfloat16 losses would round at each addition
            total = loss if total is None else total + loss
        return total

    # --- the step boundary ---------------------------------------------------------------------------------------
    def _finish_step(self, now: float, **extra: Any) -> None:
        ending = self.step
        try:
            self._make_record(now, extra)
        except Exception:
            self.hook_failed("step boundary")
            self._advance(ending)
            return
        self._advance(ending)
        held_s = 0.0
        try:
            for seconds in self._call_in_step("at_boundary"):
                held_s += seconds or 0.0
            if now - self._last_flush >= self.options.publish_interval_s:
                self._flush(now)
        finally:  # also after a KeyboardInterrupt (`stop`, Ctrl-C), which a loop may catch and train on
            # From here on it is the next step, which pays for this boundary's work as the training does:
            # its time and optwatch's count from now. A pause does not.
            self._step_start = now + held_s
            self.own_s = time.perf_counter() - self._step_start

    def _make_record(self, now: float, extra: dict[str, Any]) -> None:
        self._no_optimizer_step_due = False
        self._gradients_ready(self._primary)
        loss = self._take_losses()
        step_time = now - self._step_start if self._step_start is not None else None
        samples = self._samples or self.batch_size
        grad_norm = self._grad_norm if self._grad_norm is not None else self._clip_norm
        bg_cpu = self.channel.cpu_s
        # The step record's fields written out: a dict display costs a third of make_record's call, and this
        # runs at every step.
        record = {
            "v": protocol.PROTOCOL_VERSION,
            "kind": protocol.STEP,
            "rank": self.rank,
            "time": time.time(),
            "step": self.step,
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": self.learning_rate(),
            "step_time_s": step_time,
            "data_wait_s": self._data_wait_s,
            "samples": samples,
            "samples_per_s": (samples / step_time) if samples and step_time else None,
            # Time until this rank reached backward(), where DDP's gradient all-reduce waits for the
            # slowest rank: the straggler is the rank for which this is longest.
            "to_backward_s": (self._backward_started - self._step_start)
            if self._backward_started is not None and self._step_start is not None
            else None,
            "optwatch_s": self.own_s,
            "optwatch_bg_s": bg_cpu - self._last_bg_cpu,
            "detailed": self.detailed,
            "detail_every": self.detail_every,
        }
        self._last_bg_cpu = bg_cpu
        if self._grad_part and self._grad_norm is not None:
            record["_sharded"] = True
        if self._clip_max is not None:
            record["clip_max_norm"] = self._clip_max
        if self._unknown_fetches:
            record["eval_batches"] = sum(f.count for f in self._unknown_fetches.values())
            record["eval_wait_s"] = sum(f.wait_s for f in self._unknown_fetches.values())
        if extra:
            record.update(extra)
        self.detail_every, self.next_detailed = self.governor.plan(self.step, self.own_s, step_time)
        self._call_in_step("after_step", record)
        self._hold(record)
        self._clear_step()

    def _hold(self, record: dict[str, Any]) -> None:
        """The new step record waits for the optimizers that step after the primary; the one before goes."""
        self._release_held()
        if self._after_primary or self._before_primary:
            record["losses"] = {self._name_of(self._primary): record["loss"], **self._other_losses}
            self._other_losses.clear()
        self._held = record
        if self._after_primary:
            self._stepped_since_boundary = weakref.WeakSet()
            self._release_held_when_complete()
        elif self._primary_stepped_once:
            self._release_held()  # one optimizer: nobody adds to the record
        # (The first record waits for the first optimizers after the primary, whom nobody knows yet.)
        self._primary_stepped_once = True

    def _release_held_when_complete(self) -> None:
        if self._held is not None and all(o in self._stepped_since_boundary for o in self._after_primary):
            if self._after_primary or self._primary_stepped_once:
                self._release_held()

    def _release_held(self) -> None:
        if self._held is not None:
            self._pending.append(self._held)
            self._held = None

    def _clear_step(self) -> None:
        self._losses = []
        self._scaled.clear()
        self._data_wait_s = 0.0
        self._samples = 0
        self._unknown_fetches.clear()
        self._backward_started = None
        self._gradients_final = False
        self._grad_norm = None
        self._grad_part = False
        self._clip_norm = None
        self._clip_max = None
        self._clip_params = []
        self._closure_loss_taken = False

    def _advance(self, ending: int) -> None:
        """The next step begins: its number, whether it is a detail step, and so its callback table."""
        if self.step == ending:
            self.step += 1
        self.detailed = self.next_detailed
        self._active = self._callbacks if self.detailed else self._light_callbacks

    def _flush(self, now: float | None = None) -> None:
        self._last_flush = now if now is not None else time.perf_counter()
        if self._pending:
            pending, self._pending = self._pending, []
            on_host = self.device is not None and self.device.type == "cpu"
            self.channel.submit(DeviceBatch(pending, on_host=on_host))

    def _announce_device(self, device: torch.device) -> None:
        self.device = device
        hello = self._hello()
        hello["device"] = str(device)
        if device.type == "cuda":
            hello["device_name"] = torch.cuda.get_device_name(device)
            hello["device_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        else:
            import platform

            hello["device_name"] = platform.processor() or platform.machine()
        self.publish([hello])

    # --- off the training thread ---------------------------------------------------------------------------------
    def _sentinel(self, records: list[dict[str, Any]]) -> None:
        """On the channel thread, with values read back: a non-finite loss or gradient norm brings every step
        back to being a detail step, and arms the forward check, so the next one is caught at its step."""
        if self.nonfinite_seen:
            return
        for record in records:
            if record.get("kind") == protocol.STEP and record.get("rank") == self.rank:
                for key in ("loss", "grad_norm"):
                    value = record.get(key)
                    if isinstance(value, float) and value - value != 0.0:  # NaN or inf
                        self.nonfinite_seen = True
                        self.pin_detail()
                        return

    def _sample_loop(self) -> None:
        from optwatch.probe.sampler import sample_system

        failed: set[str] = set()
        while not self._stop_sampler.wait(self.options.system_interval_s):
            started = time.thread_time()
            records = []
            try:
                system = protocol.make_record(protocol.SYSTEM, self.rank, step=self.step, **sample_system(self.device))
                system["dropped"] = self.channel.dropped
                if self.loader:
                    system["loader"] = self.loader
                records.append(system)
            except Exception:
                if "system" not in failed:
                    log.exception("optwatch: system sampling failed; training goes on")
                    failed.add("system")
                system = {}
            for name, callback in self._callbacks["sample"]:
                if name in failed:
                    continue
                try:
                    records.extend(callback(self, system))
                except Exception:
                    # Logged once and switched off: a broken collector must not spam or stop the others.
                    log.exception("optwatch: %s sampling failed; it is switched off", name)
                    failed.add(name)
            if records:
                self.channel.submit_records(records)
            self.channel.add_cpu(time.thread_time() - started)
