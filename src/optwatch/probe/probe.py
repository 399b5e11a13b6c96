"""The probe: global hooks that turn a training loop into step records, at no host-device sync.

Zero-code mode (``optwatch run``) installs it before the user's script runs:
- a wrapper around ``torch.autograd.backward`` keeps the scalar loss, detached, on its device;
- the global optimizer step hooks mark step boundaries (a step is an optimizer step of the primary
  optimizer, or one that a GradScaler skipped for inf/NaN gradients, marked ``amp_overflow``; with no
  optimizer at all, a ``backward()`` on a scalar is a step);
- a wrapper around the DataLoader iterator measures data wait and batch size.
Device values are packed and read back once per publish interval (see ``readback``).
"""

from __future__ import annotations

import atexit
import logging
import math
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
from torch.optim.optimizer import register_optimizer_step_post_hook

try:
    from torch.amp import GradScaler
except ImportError:  # torch < 2.3
    from torch.cuda.amp import GradScaler

from optwatch import protocol
from optwatch.probe.options import ENV_HUB, ENV_RUN_DIR, ENV_RUN_ID, ENV_TOKEN, ProbeOptions
from optwatch.probe.plugin import ProbePlugin, as_optwatch_work
from optwatch.probe.readback import DeviceBatch
from optwatch.probe.vectors import as_vector
from optwatch.wire import runtime
from optwatch.wire.publisher import Publisher, tcp_endpoints

log = logging.getLogger(__name__)


# The detail-step governor (``Probe._plan_detail``): the fewest steps it judges optwatch's share over,
# and the widest spacing (the dashboard's phase and gradient charts still get a point every so often).
_DETAIL_WINDOW = 20
MAX_DETAIL_EVERY = 128
# The callbacks of every step, which a plugin may leave out between detail steps (``between_detail_steps``).
_PER_STEP = ("on_backward_start", "on_backward_end", "before_optimizer_step", "after_optimizer_step", "after_step")
_CALLBACKS = ("install", *_PER_STEP, "close")


def _batch_len(batch: Any, depth: int = 0) -> int | None:
    """Samples in a DataLoader batch: the leading dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.size(0)) if batch.dim() else None  # size(0): a nested tensor has no .shape
    if depth < 2:
        if isinstance(batch, (list, tuple)) and batch:
            return _batch_len(batch[0], depth + 1)
        if isinstance(batch, dict) and batch:
            return _batch_len(next(iter(batch.values())), depth + 1)
    return None


def learning_rate(lr: Any) -> float | torch.Tensor | None:
    """A param group's ``lr`` as one number (a device tensor stays one, read back later), or None when it
    is not one: a rate per dimension, a schedule object."""
    if isinstance(lr, torch.Tensor) and lr.device.type != "cpu":
        return lr.detach() if lr.numel() == 1 else None
    try:
        return float(lr) if lr is not None else None
    except (TypeError, ValueError, RuntimeError):
        return None


def _global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``grads`` together, in float32; the per-tensor norms in the gradients' own dtype (a
    norm may widen a dtype, never narrow it)."""
    return torch.linalg.vector_norm(as_vector(torch._foreach_norm(grads)).float())


class Probe:
    """Everything optwatch does inside one training process (one rank)."""

    def __init__(self, run_dir: Path, run_id: str, options: ProbeOptions, rank: int = 0, world_size: int = 1):
        self.run_dir = run_dir
        self.run_id = run_id
        self.options = options
        self.rank = rank
        self.world_size = world_size
        self.token: str | None = None
        hub_endpoint = None
        if options.listen:
            self.token = os.environ.get(ENV_TOKEN) or runtime.new_token()
        hub = os.environ.get(ENV_HUB)
        if hub and rank != 0:
            host, port = tcp_endpoints(hub)
            hub_endpoint = f"tcp://{host}:{port + 2}"
            self.token = os.environ.get(ENV_TOKEN)
        self.publisher = Publisher(
            run_dir,
            rank=rank,
            world_size=world_size,
            listen=options.listen if rank == 0 else None,
            token=self.token,
            hub_endpoint=hub_endpoint,
        )
        self.step = 0
        self.batch_size: int | None = None
        self.model: torch.nn.Module | None = None
        self._primary_optimizer: torch.optim.Optimizer | None = None
        self._params: list[torch.Tensor] = []
        self._params_key: tuple[tuple[int, int], ...] | None = None
        self._optimizers_seen = 0
        self._losses: list[torch.Tensor] = []
        self.measured_grad_norm: torch.Tensor | None = None
        """This step's global gradient norm when a plugin already measured it (on the device)."""
        self.training_thread: int | None = None
        """The thread that trains: the first to run a forward with gradients, then the one entering the
        trained model's forward (phase timing sees it) or calling ``backward()``, each step anew."""
        self.own_s = 0.0
        """Seconds optwatch's own code has run on the training thread so far in this step (hooks add to
        it): the step record's ``optwatch_s``, so that what optwatch costs the run is on screen too."""
        self.detailed = True
        """Whether this step runs the diagnostics that ``ProbeOptions.budget`` spaces out (the forward
        check, gradient norms and statistics, device phase timing): a "detail step". Decided at the
        previous step boundary (``next_detailed``), read by the plugins."""
        self.next_detailed = True
        self.detail_every = 1
        """Detail steps are the steps whose number is a multiple of this (1: every step)."""
        self.detail_pinned = False
        """Set after a non-finite value (by the publisher thread): every step is a detail step again, so that
        the next one is caught at the very step it happens."""
        self._window_own_s = 0.0
        self._window_time_s = 0.0
        self._window_steps = 0
        self._in_step = False
        self._stepped = False
        self._step_start: float | None = None
        self._data_wait_s = 0.0
        self._samples = 0
        self._backward_started: float | None = None
        self._pending: list[dict[str, Any]] = []
        self._last_flush = time.perf_counter()
        self._boundary_callbacks: list[Callable[[Probe], float | None]] = []
        self._undo: list[Callable[[], None]] = []
        self._closed = False
        self.device: torch.device | None = None
        """Where the trained parameters live, known from the first step on."""
        self._model_searched = False
        self._param_names: dict[int, str] | None = None
        from optwatch.probe.plugins import enabled

        self._broken_plugins: set[str] = set()
        self._failed_hooks: set[str] = set()
        """optwatch's own hooks that raised (each is logged once)."""
        self._callbacks: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
        """Per callback name, the working plugins that implement it (the base class's are no-ops)."""
        self._light_callbacks: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
        """The same for the steps between detail steps: those of the plugins that need it there."""
        self._active_callbacks = self._callbacks
        """This step's table: one of the two above."""
        self.plugins = enabled(options)
        self._sampler: threading.Thread | None = None
        self._stop_sampler = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Probe:
        self.publisher.start()
        if self.rank == 0:  # one job, one entry in `optwatch ls`: the hub's
            token_file = None
            if self.token:
                token_file = str(self.run_dir / "token")
                runtime.write_private_file(Path(token_file), self.token + "\n")
            runtime.JobInfo(
                run_id=self.run_id,
                pid=os.getpid(),
                script=self.options.script,
                argv=self.options.argv,
                run_dir=str(self.run_dir),
                start_time=time.time(),
                ranks=self.world_size,
                endpoints=self.publisher.endpoints,
                token_file=token_file,
            ).save()
        self.publisher.submit_records([self._hello()])
        if self.rank == 0 and self.world_size > 1:
            from optwatch.diagnose.straggler import StragglerWatch

            watch = StragglerWatch()
            self.publisher.on_tick(lambda publisher: watch.check(publisher.history.steps))
        self._install_hooks()
        self.retabulate()  # the list may have been changed in place since it was set
        self._call_plugins("install")
        self._sampler = threading.Thread(target=self._sample_loop, name="optwatch-sampler", daemon=True)
        self._sampler.start()
        atexit.register(self.close)
        return self

    def close(self, exit_code: int | None = None) -> None:
        """Flush everything still pending and close the sockets. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)  # else the exit handler keeps this probe, and the model, alive
        for undo in reversed(self._undo):
            undo()
        self._call_plugins("close")
        self._stop_sampler.set()
        self._flush()
        self.publisher.submit_records(
            [
                protocol.make_record(
                    protocol.END,
                    self.rank,
                    steps=self.step,
                    dropped=self.publisher.dropped,
                    exit_code=exit_code,
                )
            ]
        )
        self.publisher.close()
        # info.json stays: its dead pid tells `optwatch ls` to clean the directory up.
        for name in ("pub.sock", "ctl.sock", "hub.sock"):
            try:
                (self.run_dir / name).unlink()
            except OSError:
                pass

    def _hello(self) -> dict[str, Any]:
        return protocol.make_record(
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

    # --- the explicit API -----------------------------------------------------------------------
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
            self._primary_optimizer = optimizer
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

    def emit(self, record: dict[str, Any]) -> None:
        """Queue a record from the training thread; its tensor values are read back with the next batch."""
        self._pending.append(record)

    @property
    def plugins(self) -> list[ProbePlugin]:
        """The plugins, in the order their callbacks run (set, appended to or wrapped before ``start``,
        which tabulates their callbacks again)."""
        return self._plugins

    @plugins.setter
    def plugins(self, plugins: list[ProbePlugin]) -> None:
        self._plugins = list(plugins)
        self.retabulate()

    def retabulate(self) -> None:
        """Per callback, the working plugins that implement it, for detail steps and for the steps between
        (where a plugin gets only the ``between_detail_steps`` it names): made once, as several callbacks
        run at every step and most plugins leave most of them out. Made again when the plugins change, one
        is switched off, or one's ``idle_callbacks`` change."""

        def implementing(method: str, light: bool) -> list[tuple[str, Callable[..., Any]]]:
            chosen = []
            for plugin in self.plugins:
                if plugin.name in self._broken_plugins:
                    continue
                if getattr(type(plugin), method, None) is getattr(ProbePlugin, method, None):
                    continue
                if method in plugin.idle_callbacks:
                    continue
                if light and plugin.between_detail_steps is not None and method not in plugin.between_detail_steps:
                    continue
                chosen.append((plugin.name, getattr(plugin, method)))
            return chosen

        self._callbacks = {method: implementing(method, False) for method in _CALLBACKS}
        self._light_callbacks = {method: implementing(method, method in _PER_STEP) for method in _CALLBACKS}
        self._active_callbacks = self._callbacks if self.detailed else self._light_callbacks

    def _call_plugins(self, method: str, *args: Any) -> list[Any]:
        """Run one callback of every plugin that implements it (and, between two detail steps, needs it).
        A plugin that raises is switched off and logged once: optwatch must never break the training.
        (KeyboardInterrupt, a requested stop, goes through.)"""
        results = []
        for name, callback in self._active_callbacks[method]:
            try:
                results.append(callback(self, *args))
            except Exception:
                self.switch_off(name, method)
        return results

    def switch_off(self, name: str, where: str) -> None:
        """Switch a plugin off after it raised (call it inside the ``except``, whose traceback is logged):
        its callbacks stop and its hooks go, and the training goes on. Plugins call it from hooks of
        their own, which torch runs without the probe in between."""
        if name in self._broken_plugins:
            return
        self._broken_plugins.add(name)
        self.retabulate()
        log.exception("optwatch: %s failed in %s and is switched off; training goes on", name, where)
        if where != "close":
            self._close_broken(name)

    def _hook_failed(self, where: str, ending: int | None = None) -> None:
        """optwatch's own step accounting raised in one of its hooks (a bug, or a loop it does not expect;
        call it inside the ``except``): logged once per hook, this step's partial accounts dropped, and the
        training goes on (a KeyboardInterrupt, a requested stop, is no Exception and goes through).
        ``ending``: the step whose boundary failed, counted as done so later steps keep their numbers."""
        if where not in self._failed_hooks:
            self._failed_hooks.add(where)
            log.exception("optwatch: its %s failed; training goes on (this step may go unrecorded)", where)
        self._next_step(advance=ending is not None and self.step == ending)
        self._in_step = False
        self._step_start = time.perf_counter()
        self.own_s = 0.0

    def _close_broken(self, name: str) -> None:
        """A switched-off plugin takes its hooks away now: left in place they would go on running (and
        costing) at every module call, and keep the probe alive after ``close``."""
        for plugin in self.plugins:
            if plugin.name == name:
                try:
                    plugin.close(self)
                except Exception:
                    log.exception("optwatch: %s failed to close; its hooks may stay", name)

    def on_step_boundary(self, callback: Callable[[Probe], float | None]) -> None:
        """Run ``callback(probe)`` on the training thread after every step (controls use this). It returns
        the seconds it held the run (a pause), which are no part of the next step's time."""
        self._boundary_callbacks.append(callback)

    # --- hooks ----------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        # The wrappers hold the probe weakly: torch keeps references to what it saw patched in (caches of
        # overridable functions), which must not keep a closed probe and its model alive.
        live = weakref.ref(self)
        original_backward = torch.autograd.backward

        def backward(tensors, *args, **kwargs):
            probe = live()
            if probe is None or probe._closed:
                return original_backward(tensors, *args, **kwargs)
            is_loss = isinstance(tensors, torch.Tensor) and tensors.numel() == 1 and tensors.requires_grad
            if is_loss:
                started = time.perf_counter()
                try:
                    probe._on_backward(tensors, started)
                    for replacement in probe._call_plugins("on_backward_start", tensors):
                        if replacement is not None:
                            tensors = replacement
                except Exception:
                    probe._hook_failed("backward hook")
                probe.own_s += time.perf_counter() - started
            result = original_backward(tensors, *args, **kwargs)
            ending = None
            try:
                if is_loss and probe._active_callbacks["on_backward_end"]:  # none between detail steps
                    started = time.perf_counter()
                    probe._call_plugins("on_backward_end", tensors)
                    probe.own_s += time.perf_counter() - started
                if probe._optimizers_seen == 0 and probe._primary_optimizer is None and probe._losses:
                    ending = probe.step
                    probe._finish_step()
            except Exception:
                probe._hook_failed("backward hook", ending)
            return result

        torch.autograd.backward = backward
        self._undo.append(lambda: setattr(torch.autograd, "backward", original_backward))

        original_init = torch.optim.Optimizer.__init__

        def optimizer_init(optimizer, *args, **kwargs):
            probe = live()
            if probe is not None:
                probe._optimizers_seen += 1
            original_init(optimizer, *args, **kwargs)

        torch.optim.Optimizer.__init__ = optimizer_init
        self._undo.append(lambda: setattr(torch.optim.Optimizer, "__init__", original_init))

        from torch.optim.optimizer import register_optimizer_step_pre_hook

        original_scaler_step = GradScaler.step

        def scaler_step(scaler, optimizer, *args, **kwargs):
            # A GradScaler skips optimizer.step() when it finds inf/NaN gradients; that iteration is a step too.
            probe = live()
            if probe is None or probe._closed:
                return original_scaler_step(scaler, optimizer, *args, **kwargs)
            probe._stepped = False
            result = original_scaler_step(scaler, optimizer, *args, **kwargs)
            ending = None
            try:
                if not probe._stepped and scaler.is_enabled() and probe._is_primary(optimizer):
                    ending = probe.step
                    scale = scaler._scale.detach().clone() if isinstance(scaler._scale, torch.Tensor) else None
                    with as_optwatch_work():
                        probe._finish_step(amp_overflow=True, amp_scale=scale)
            except Exception:
                probe._hook_failed("GradScaler hook", ending)
            return result

        GradScaler.step = scaler_step
        self._undo.append(lambda: setattr(GradScaler, "step", original_scaler_step))

        pre = register_optimizer_step_pre_hook(self._pre_step)
        post = register_optimizer_step_post_hook(self._post_step)
        self._undo.extend([pre.remove, post.remove])

        from torch.utils.data.dataloader import _BaseDataLoaderIter

        original_next = _BaseDataLoaderIter.__next__

        def next_batch(iterator):
            started = time.perf_counter()
            batch = original_next(iterator)
            probe = live()
            if probe is not None:
                finished = time.perf_counter()
                try:
                    probe._on_batch(started, finished, batch)
                except Exception:
                    probe._hook_failed("DataLoader hook")
                probe.own_s += time.perf_counter() - finished
            return batch

        _BaseDataLoaderIter.__next__ = next_batch
        self._undo.append(lambda: setattr(_BaseDataLoaderIter, "__next__", original_next))

    def _on_batch(self, started: float, finished: float, batch: Any) -> None:
        if self._step_start is None:
            self._begin_first_step(started)
        self._data_wait_s += finished - started
        size = _batch_len(batch)
        if size:
            self._samples += size

    def _begin_first_step(self, now: float) -> None:
        """The first step begins at its first batch, or else at its backward(): what optwatch did before
        (checks of forwards before the training, say) is no part of it."""
        self._step_start = now
        self.own_s = 0.0

    def _on_backward(self, loss: torch.Tensor, now: float) -> None:
        self.training_thread = threading.get_ident()
        if self._step_start is None:
            self._begin_first_step(now)
        if self._backward_started is None:
            self._backward_started = now
        # Inside a closure-driven step (LBFGS) only the first evaluation is the step's loss.
        if self._in_step and self._losses:
            return
        self._losses.append(loss.detach())

    def _is_primary(self, optimizer: torch.optim.Optimizer) -> bool:
        if self._primary_optimizer is None:
            self._primary_optimizer = optimizer
        return optimizer is self._primary_optimizer

    def _pre_step(self, optimizer, args, kwargs) -> None:
        if self._is_primary(optimizer):
            started = time.perf_counter()
            self._in_step = True
            self._stepped = True
            try:
                if torch.autograd.profiler._is_profiler_enabled:  # as_optwatch_work's test, without its call
                    with as_optwatch_work():
                        self._call_plugins("before_optimizer_step", optimizer)
                else:
                    self._call_plugins("before_optimizer_step", optimizer)
            except Exception:
                self._hook_failed("optimizer step hook")
            self.own_s += time.perf_counter() - started

    def _post_step(self, optimizer, args, kwargs) -> None:
        if self._is_primary(optimizer):
            self._in_step = False
            ending = self.step
            try:
                if torch.autograd.profiler._is_profiler_enabled:
                    with as_optwatch_work():
                        self._after_optimizer_step(optimizer)
                else:
                    self._after_optimizer_step(optimizer)
            except Exception:
                self._hook_failed("optimizer step hook", ending)

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._active_callbacks["after_optimizer_step"]:  # none between detail steps
            started = time.perf_counter()
            self._call_plugins("after_optimizer_step", optimizer)
            self.own_s += time.perf_counter() - started
        self._finish_step()

    # --- the model -----------------------------------------------------------------------------------
    def find_model(self) -> torch.nn.Module | None:
        """The model being trained: the one given to ``watch``, else found once from the optimizer.

        Zero-code mode never sees the model, so at the first step it looks among live modules for the
        largest one whose parameters the primary optimizer trains. Cached; None when there is none.
        """
        if self.model is not None or self._model_searched or self._primary_optimizer is None:
            return self.model
        self._model_searched = True
        import gc

        trained = {id(p) for group in self._primary_optimizer.param_groups for p in group["params"]}
        best, best_size = None, (0, 0)
        for obj in gc.get_objects():
            if issubclass(type(obj), torch.nn.Module):  # type(): isinstance trips lazy deprecated objects
                params = [id(p) for p in obj.parameters()]
                # On a tie in parameters, the module with more submodules: a wrapper over its only child.
                size = (len(params), sum(1 for _ in obj.modules())) if params else (0, 0)
                if size > best_size and all(p in trained for p in params):
                    best, best_size = obj, size
        self.model = best
        return best

    def parameter_names(self) -> dict[int, str]:
        """``id(parameter) -> qualified name`` for the model's parameters (empty without a model)."""
        if self._param_names is None:
            model = self.find_model()
            if model is None:
                return {}
            self._param_names = {id(p): name for name, p in model.named_parameters()}
        return self._param_names

    # --- per step ---------------------------------------------------------------------------------
    def _parameters(self) -> list[torch.Tensor]:
        """The primary optimizer's parameters (else the model's): the list is kept while its param groups'
        lists are the same, as walking hundreds of parameters at every step shows on a host-bound loop."""
        if self._primary_optimizer is not None:
            groups = self._primary_optimizer.param_groups
            key = tuple((id(group["params"]), len(group["params"])) for group in groups)
            if key != self._params_key:
                self._params = [p for group in groups for p in group["params"]]
                self._params_key = key
            return self._params
        if self.model is not None:
            return list(self.model.parameters())
        return []

    def _grad_norm(self, params: list[torch.Tensor]) -> torch.Tensor | None:
        grads = [p.grad for p in params]
        try:
            return _global_norm(grads)  # the usual case in one call: every gradient there, dense, on one device
        except (TypeError, RuntimeError):  # a missing (frozen) or sparse gradient, several devices
            pass
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for grad in grads:
            if grad is not None and not grad.is_sparse:
                by_device.setdefault(grad.device, []).append(grad)
        device_norms = [_global_norm(device_grads) for device_grads in by_device.values()]
        if len(device_norms) <= 1:
            return device_norms[0] if device_norms else None
        first = device_norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(first, non_blocking=True) for n in device_norms]))

    def _learning_rate(self) -> float | torch.Tensor | None:
        if self._primary_optimizer is None or not self._primary_optimizer.param_groups:
            return None
        return learning_rate(self._primary_optimizer.param_groups[0].get("lr"))

    def _finish_step(self, **extra: Any) -> None:
        now = time.perf_counter()
        params = self._parameters() if self.detailed or self.device is None else []
        if self.device is None and params:
            self._announce_device(params[0].device)
        loss: torch.Tensor | None
        if not self._losses:
            loss = None
        elif len(self._losses) == 1:
            loss = self._losses[0]
        else:
            loss = torch.stack([t.reshape(()).float() for t in self._losses]).mean()
        step_time = now - self._step_start if self._step_start is not None else None
        samples = self._samples or self.batch_size
        grad_norm = self.measured_grad_norm
        if grad_norm is None and self.detailed:
            grad_norm = self._grad_norm(params)
        # make_record's fields written out: a dict display costs a third of the call with keywords, and
        # this runs at every step.
        record = {
            "v": protocol.PROTOCOL_VERSION,
            "kind": protocol.STEP,
            "rank": self.rank,
            "time": time.time(),
            "step": self.step,
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": self._learning_rate(),
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
            "detailed": self.detailed,
            "detail_every": self.detail_every,
        }
        if extra:
            record.update(extra)
        self.measured_grad_norm = None
        self._plan_detail(step_time)
        self._call_plugins("after_step", record)
        self._pending.append(record)
        self._next_step()
        held = 0.0
        try:
            for callback in self._boundary_callbacks:
                try:
                    held += callback(self) or 0.0
                except Exception:
                    log.exception("optwatch: a step-boundary callback failed; training goes on")
            if now - self._last_flush >= self.options.publish_interval_s:
                self._flush(now)
        finally:  # also after a KeyboardInterrupt (`stop`, Ctrl-C), which a loop may catch and train on
            # From here on it is the next step, which pays for this boundary's work (the record, the
            # plugins, the hand-over) as the training does: its time and optwatch's count from now. A
            # pause does not.
            self._step_start = now + held
            self.own_s = time.perf_counter() - self._step_start

    def _next_step(self, advance: bool = True) -> None:
        """The step's accounts cleared and, with ``advance``, the next step begun (its number, whether it is
        a detail step, and so its callback table)."""
        self._losses = []
        self._data_wait_s = 0.0
        self._samples = 0
        self._backward_started = None
        if advance:
            self.step += 1
            self.detailed = self.next_detailed
            self._active_callbacks = self._callbacks if self.detailed else self._light_callbacks

    def _plan_detail(self, step_time: float | None) -> None:
        """Space the detail steps so that optwatch's share of the step time stays within ``options.budget``.

        The share is measured, not modelled: over a window of at least ``_DETAIL_WINDOW`` steps and two
        spacings, optwatch's own time (``optwatch_s``) against the step time. Above the budget the
        spacing grows by the factor it is over (at most 8x at a time); under half of the budget, it
        halves. With share = fixed + detail / spacing, a halving from under half the budget cannot land
        above it, so the spacing settles instead of swinging.
        """
        budget = self.options.budget
        if self.detail_pinned or budget <= 0 or self.step + 1 < self.options.grad_full_cadence_steps:
            self.detail_every = 1
        elif step_time:
            self._window_own_s += self.own_s
            self._window_time_s += step_time
            self._window_steps += 1
            if self._window_steps >= max(_DETAIL_WINDOW, 2 * self.detail_every):
                share = self._window_own_s / self._window_time_s
                if share > budget:
                    factor = min(math.ceil(share / budget), 8)
                    self.detail_every = min(factor * self.detail_every, MAX_DETAIL_EVERY)
                elif share < budget / 2:
                    self.detail_every = max(self.detail_every // 2, 1)
                self._window_own_s = self._window_time_s = 0.0
                self._window_steps = 0
        self.next_detailed = (self.step + 1) % self.detail_every == 0

    def pin_detail(self) -> None:
        """Every step a detail step from now on (any thread): after a non-finite value, the next one must
        not fall between two checks."""
        self.detail_pinned = True

    def flush(self) -> None:
        """Hand what is pending to the publisher now (controls use this so acknowledgements are prompt)."""
        self._flush()

    def _flush(self, now: float | None = None) -> None:
        self._last_flush = now if now is not None else time.perf_counter()
        if self._pending:
            pending, self._pending = self._pending, []
            on_host = self.device is not None and self.device.type == "cpu"
            self.publisher.submit(DeviceBatch(pending, on_host=on_host))

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
        self.publisher.submit_records([hello])

    # --- background sampling ------------------------------------------------------------------------
    def _sample_loop(self) -> None:
        from optwatch.probe.sampler import sample_system

        failed: set[str] = set()
        while not self._stop_sampler.wait(self.options.system_interval_s):
            records = []
            try:
                record = protocol.make_record(protocol.SYSTEM, self.rank, step=self.step, **sample_system(self.device))
                record["dropped"] = self.publisher.dropped
                records.append(record)
            except Exception:
                if "system" not in failed:
                    log.exception("optwatch: system sampling failed; training goes on")
                    failed.add("system")
            for plugin in self.plugins:
                if plugin.name in failed:
                    continue
                try:
                    records.extend(plugin.sample(self))
                except Exception:
                    # Logged once and switched off: a broken collector must not spam or stop the others.
                    log.exception("optwatch: %s sampling failed; it is switched off", plugin.name)
                    failed.add(plugin.name)
            if records:
                self.publisher.submit_records(records)


def torchrun_run_id(script: str) -> str | None:
    """The run id every local rank of one torchrun launch agrees on, or None outside torchrun.

    The ranks of a node share their parent (the elastic agent) and the rendezvous settings, so the id
    is derived from them; rank 0 binds its sockets under it and the others find them there.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ and "LOCAL_RANK" not in os.environ:
        return None
    import hashlib

    key = (
        ":".join(os.environ.get(name, "") for name in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))
        + f":{os.getppid()}"
    )
    stem = runtime.new_run_id(script).rsplit("-", 3)[0]
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


_current: Probe | None = None
_current_lock = threading.Lock()


def current() -> Probe | None:
    return _current


def start_probe(rank: int | None = None, world_size: int | None = None) -> Probe:
    """The process's probe, started on first use from the environment `optwatch run` prepared."""
    global _current
    with _current_lock:
        if _current is not None:
            return _current
        options = ProbeOptions.from_env()
        run_id = os.environ.get(ENV_RUN_ID) or torchrun_run_id(options.script) or runtime.new_run_id(options.script)
        run_dir_env = os.environ.get(ENV_RUN_DIR)
        run_dir = runtime.ensure_private_dir(Path(run_dir_env)) if run_dir_env else runtime.make_run_dir(run_id)
        if rank is None:
            rank = int(os.environ.get("RANK", "0"))
        if world_size is None:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        _current = Probe(run_dir, run_id, options, rank=rank, world_size=world_size).start()
        return _current
