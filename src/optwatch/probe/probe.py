"""The probe's kernel: what a step is, and the step record that says what it did, at no host-device sync.

``hooks.TorchHooks`` tells the probe where the training loop is; the probe turns that into one ``step``
record per step of the primary optimizer and calls its plugins (``plugin.ProbePlugin``) at each point of
the step. The rules (the README's "Instrumenting" says them to users):

- A step is one ``step()`` of the primary optimizer: the one given to ``watch``, else the first that steps;
  an optimizer made later over some of its parameters replaces it when it steps (a new one at a phase change);
  a step a GradScaler skipped for inf/NaN gradients counts (``amp_overflow``). With no optimizer at all, a
  ``backward()`` on a scalar is a step.
- Optimizers that step after the primary on the same backward's gradients, over other parameters of the
  model (Muon for the matrices and AdamW for the rest), are its partners: the step is theirs together. It
  ends when the last of them has stepped, and its gradient norm, layers and updates cover all their
  parameters.
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
import gc
import logging
import os
import socket
import statistics
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from optwatch import protocol
from optwatch.options import ProbeOptions
from optwatch.probe import notebook, sharding
from optwatch.probe.batches import BatchAccounts
from optwatch.probe.channel import Channel
from optwatch.probe.core_wait import CoreWait
from optwatch.probe.dispatch import Dispatch
from optwatch.probe.governor import DetailGovernor
from optwatch.probe.hooks import KnownNorms, TorchHooks
from optwatch.probe.losses import OptimizerNames, StepLosses, StepRecords
from optwatch.probe.model import (
    compiled_whole,
    global_norm,
    largest_module,
    largest_module_holding,
    largest_module_of,
    learning_rate_of,
    names_in_main,
    params_of,
    smallest_module_holding,
)
from optwatch.probe.plugin import ProbePlugin, being_traced
from optwatch.probe.readback import DeviceBatch
from optwatch.probe.sampler import Sampler
from optwatch.summary import own_seconds

log = logging.getLogger(__name__)
ERROR_CHARS = 300
"""The most of an end record's ``error`` (the exception's first line, as a traceback's last)."""

LOSS_JUMP = 10.0
"""A loss this many times the recent median (and far outside their spread) makes optwatch look closer."""
LOOK_CLOSER_STEPS = 100
"""Steps that are all detail steps after a loss jumped, whatever the budget's spacing."""
IDLE_FLUSH_S = 2.0
"""No step boundary for this long, with steps noted and not recorded: they are recorded (``_flush_when_idle``)."""
MODEL_SEARCH_SPACING = 20.0
"""A new model (the script dropped the primary) is looked for only if the last look was this many times its
own duration ago: the walk over every live object takes at most a twentieth of the training's time. Its duration
is the thread's CPU time in it: on a busy machine its wall time doubled with the waits for a core (70 ms of walk
read 190 ms), and a k-fold run's third fold went unnamed."""


_live_probes: weakref.WeakSet[Probe] = weakref.WeakSet()


def _wraps_another(optimizer: torch.optim.Optimizer) -> bool:
    """``optimizer`` is SAM's shape: it holds another over the same parameters and steps through it in two
    passes (``first_step``, ``second_step``). Not any wrapper: Lookahead's or LightningOptimizer's
    ``zero_grad`` before a step is a skipped batch's, as the optimizer's own is."""
    if not (callable(getattr(optimizer, "first_step", None)) and callable(getattr(optimizer, "second_step", None))):
        return False
    groups = optimizer.param_groups
    first = groups[0]["params"][0] if groups and groups[0]["params"] else None
    for value in vars(optimizer).values():
        if isinstance(value, torch.optim.Optimizer) and value is not optimizer:
            inner = value.param_groups
            if inner is groups or (
                first is not None and inner and inner[0]["params"] and inner[0]["params"][0] is first
            ):
                return True
    return False


def _forked() -> None:
    for probe in list(_live_probes):
        probe._forked()


os.register_at_fork(after_in_child=_forked)


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
        self.first_step = 0
        """The number of the first step this process makes: a run resumed from a checkpoint goes on from its
        framework's global step (``start_at``). Whatever it is, the first steps are this process's first."""
        self.batch_size: int | None = None
        self.model: torch.nn.Module | None = None
        self.device: torch.device | None = None
        self._device_facts: dict[str, Any] = {}
        """What the hello says of the device, once known (``_announce_device``)."""
        self.training_thread: int | None = None
        self.started_in = threading.get_ident()
        self._started_at = time.perf_counter()
        self._held = False
        """optwatch holds the run at a step boundary (a pause, a command applied): no wait of the training's."""
        self._new_model = False
        """The primary was dropped and a new optimizer took over: the step's record says ``new_model``."""
        self._in_backward_sq: torch.Tensor | None = None
        """Optimizer-in-backward: the squares of the norms of the gradients stepped so far in the step."""
        self.torch_threads: int | None = None
        self.budget_held = False
        """A profile window or its summary costs the steps now (``ProbeContext.budget_held``)."""
        self.nonfinite_seen = False
        self.clip_measures = False
        self.governor = DetailGovernor(options.budget, options.grad_full_cadence_steps)
        self.detailed = True
        self.next_detailed = True
        self.detail_every = 1
        self._planned_every = 1
        """The spacing the step under way was planned under (the record's ``detail_every``): a flush in the step
        may tell the governor of light steps and change ``detail_every`` before the step ends."""
        self.backward_end_needed = True
        """Whether ``backward_ended`` has anything to do (``HookTarget``): kept up to date here, so that the
        usual step (an optimizer, no closure, no plugin at the end of backward) pays for no call there."""
        self.own_s = 0.0
        """Seconds optwatch's own code has run on the training thread so far in this step (the step
        record's ``optwatch_s``); its background threads' CPU time is ``optwatch_bg_s``."""
        # optimizers
        self._primary_ref: weakref.ref[torch.optim.Optimizer] | None = None
        """The primary, weakly: once the script drops it (the next fold of a k-fold, the next model of a sweep),
        the next optimizer to step is the primary."""
        self._optimizers_made = 0
        self._made: list[weakref.ref[torch.optim.Optimizer]] = []
        """The optimizers made and alive, newest last: before the first step, which one a clip's parameters are."""
        self._name_of = OptimizerNames(self._model_of)
        self._made_watched: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        """The optimizers made while the probe watched (``optimizer_made``)."""
        self._schedulers: list[weakref.ref[Any]] = []
        """The LR schedulers made so far, weakly (refs, not a WeakSet: a scheduler class may be unhashable)."""
        self._stepping: torch.optim.Optimizer | None = None
        self._inner_stepping: torch.optim.Optimizer | None = None
        """An optimizer stepping inside ``_stepping``'s step (one that another wraps)."""
        self._others_apart: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        """Optimizers that stepped and train none of the primary's parameters (a GAN's other network)."""
        self._partners: list[weakref.ref[torch.optim.Optimizer]] = []
        """Optimizers that step after the primary on the same backward's gradients: one step with it."""
        self._partners_due: set[int] = set()
        """The partners (ids) yet to step before the step under way ends; empty when none is."""
        self._deferred_extra: dict[str, Any] = {}
        self._primary_stepped_last = False
        """The primary stepped and no loss was backpropagated since: an optimizer stepping now is a partner."""
        self._model_given = False
        self._names_from: torch.nn.Module | None = None
        """Where the parameters are named from when no model was found (``find_model``)."""
        self._searched_at = 0.0
        self._search_s = 0.0
        """When the model was last looked for, and how long that took (``find_model``)."""
        self._scaler_stepping: torch.optim.Optimizer | None = None
        self._stepped = False
        self._params: list[torch.Tensor] = []
        self._params_key: tuple[tuple[int, int], ...] | None = None
        self._param_ids: frozenset[int] = frozenset()
        self._model_searched = False
        self._param_names: dict[int, str] | None = None
        self._names_key: tuple[tuple[int, int], ...] | None = None
        """The primary's parameters (``_params_key``) the names were last checked against."""
        # this step's accounts
        self._losses = StepLosses()
        self._batches = BatchAccounts()
        self._core_wait = CoreWait()
        self._step_start: float | None = None
        self._backward_started: float | None = None
        self._gradients_final = False
        self._grad_norm: torch.Tensor | None = None
        self._grad_part = False
        """``_grad_norm`` is this rank's part of a sharded model's (``probe.sharding``), for the hub to combine."""
        self._norm_part = sharding.NormPart()
        self._clip_norm: Any = None
        """The 2-norm of the step's gradients before clipping, from the clips of the step's parameters: one that
        clipped them all, or those that clipped them in disjoint parts (an encoder's, a decoder's)."""
        self._clip_max: Any = None
        self._clip_params: list[torch.Tensor] = []
        self._clips: list[tuple[list[torch.Tensor], bool]] = []
        """The clips under way that measure a 2-norm: their parameters, and whether they are the step's."""
        self._clip_parts: list[torch.Tensor] = []
        self._clip_covered: set[int] = set()
        """The parameters (ids) clipped in parts so far in the step, and their parts' norms."""
        self._clip_part_max: float | None = None
        self._clipped_whole = False
        """The step's gradients are clipped: a later clip of them measures clipped gradients."""
        self._gradients_backward: float | None = None
        """The start of the step's last backward when its gradients were taken (``_gradients_ready``): a clip
        after another backward (one per micro-batch) is of the gradients the step takes, not those."""
        self._whole_clip: tuple[tuple[int, int, int], frozenset[int]] | None = None
        """The last clip found to hold every one of the step's parameters (its length, first and last) and the
        parameters it held them for: the same clip at the next step is known at a glance."""
        self._measured_norms: torch.Tensor | None = None
        """The step's per-gradient norms, when a plugin measured them for a clip (``share_grad_norms``)."""
        self._shared_norms: KnownNorms | None = None
        """Per-gradient norms a plugin measured for the clip about to run (``share_grad_norms``)."""
        self._handed_norms: KnownNorms | None = None
        """Those the clip now running was handed."""
        self._no_optimizer_step_due = False
        # records
        self._records = StepRecords(self._name_of)
        self._idle_flush: Any = None
        """The module pre-hook that records the steps held back by a pause, at the training thread's next call."""
        self._idle_flush_armed = 0.0
        self._light_steps: list[tuple] = []
        """Steps between detail steps that no plugin needed at their end: their raw values, made into step
        records at the next flush or detail step (``_record_light_steps``), in order."""
        self._step_fields: dict[str, Any] = {}
        self._last_flush = time.perf_counter()
        self._handing_over = threading.Lock()
        """Held while records are taken and handed to the channel, on the training thread or, in a long wait,
        the sampler's (``_flush_when_idle``): so they reach the channel in the order they were made."""
        # the precision trained in (``_note_step_precision``)
        self._autocast_entries = 0
        self._autocast_dtype: torch.dtype | None = None
        self._compiled_autocast = False
        """torch.compile compiled an autocast into the training's code (the script's ``with`` inside it)."""
        self._weights_dtype: torch.dtype | None = None
        self._entries_mark = 0
        """``_autocast_entries`` at the end of the last step (``_note_step_precision``)."""
        self._under_autocast = False
        # a loss that jumps (``_loss_jumped``, on the channel thread)
        self._recent_losses: collections.deque[float] = collections.deque(maxlen=48)
        self._loss_bar: tuple[float, float] | None = None
        """The recent losses' median, and how far from it a loss must be to have jumped."""
        self._losses_seen = 0
        self._last_bg_cpu = 0.0
        self._tables_stale = False
        # plugins
        self._dispatch = Dispatch(self, plugins)
        self._failed_hooks: set[str] = set()
        self._hooks = TorchHooks(self)
        self._sampler = Sampler(
            self,
            channel,
            callbacks=lambda: self._dispatch.every["sample"],
            loader=lambda: self._batches.loader,
            worker_pids=self._batches.worker_pids,
            interval_s=options.system_interval_s,
            tick=self._flush_when_idle,
        )
        self.closed = False
        """Once closed, or in a forked child (``_forked``): the hooks only call what they wrap."""
        self._unfollow_cells: Callable[[], None] | None = None
        """Takes away the notebook's cell events (``probe.notebook``), in a notebook's kernel."""
        self._between_cells = False
        """A notebook's cell started in the step under way: the kernel idled in it (its record says so)."""

    # --- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Probe:
        self.channel.on_ready(self._sentinel)
        self.channel.start()
        self.publish([self._hello()])
        self._hooks.install()
        self.retabulate()  # the list may have been changed in place since it was set
        self._dispatch.call("install")
        self._sampler.start()
        shell = notebook.running_shell()
        if shell is not None:
            self._unfollow_cells = notebook.follow_cells(shell, self._cell_started, self._cell_ended)
        _live_probes.add(self)
        atexit.register(self.close)
        return self

    def __repr__(self) -> str:
        # (a notebook cell ending with `optwatch.watch(...)` shows it)
        return f"<optwatch run {self.run_id}: `optwatch attach {self.run_id}` to watch it>"

    def _cell_started(self) -> None:
        """A notebook's cell starts (IPython's ``pre_run_cell``): the step under way, begun in an earlier cell,
        holds the kernel's idle time; its record says ``between_cells``, which the verdict leaves out (it read as
        host-bound: 'a step that took 6113x the median (34.7 s): work between training steps'). Marking it keeps
        it off the light path, which makes no record."""
        if self._step_start is not None and not self.closed:
            self._between_cells = self._tables_stale = True

    def _cell_ended(self) -> None:
        """A notebook's cell ended (IPython's ``post_run_cell``, on the thread that ran it)."""
        if not self.closed:
            self._dispatch.call("cell_ended")

    def _forked(self) -> None:
        """In a child forked from the training process (a DataLoader worker, a script's own fork): this probe
        is the parent's; the child's hooks pass straight through and it never closes the parent's run."""
        self.closed = True

    def close(self, exit_code: int | None = None, error: str | None = None) -> None:
        """Flush everything still pending and say the rank ended (``error``: what ended the script, where it
        raised: ``RuntimeError: the batch was bad``). Safe to call twice; a no-op in a fork."""
        if self.closed:
            return
        self.closed = True
        atexit.unregister(self.close)  # else the exit handler keeps this probe, and the model, alive
        self._hooks.remove()
        if self._unfollow_cells is not None:
            self._unfollow_cells()
        self._dispatch.call("close")
        self._sampler.stop()
        handle, self._idle_flush = self._idle_flush, None
        if handle is not None:
            handle.remove()
        if self._no_optimizer_step_due:
            self._finish_step(time.perf_counter())
        if self._partners_due:
            self._end_together(time.perf_counter())
        if self._light_steps:
            with self._handing_over:
                self._record_light_steps()
        self._records.release()
        self._flush()
        end = protocol.make_record(
            protocol.END, self.rank, steps=self.step, dropped=self.channel.dropped, exit_code=exit_code
        )
        if error:
            end["error"] = error[:ERROR_CHARS]
        self.channel.submit_records([end])
        self.channel.close()
        self._core_wait.close()

    def _hello(self) -> dict[str, Any]:
        """What this rank is: sent at the start, and again (the newest wins) once it knows its device or the
        step it starts from."""
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
            first_step=self.first_step,
        )
        record.update(self._device_facts)
        settle = self.options.grad_full_cadence_steps if self.options.budget > 0 else 0
        record["diagnosis"] = {
            "grad_thresholds": self.options.grad_thresholds,
            "forward_check": self.options.forward_check,
            "settled_from": self.first_step + settle,
        }
        return record

    def start_at(self, step: int) -> None:
        """Number this process's steps from ``step`` (a run resumed at its framework's global step), so that
        optwatch's step is the one the framework logs. Only before the first step: once steps are numbered,
        they stay as they are (said in the log)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"start_step must be a whole number of steps, 0 or more; got {step!r}")
        if step == self.first_step:
            return
        if self._step_start is not None:  # (set when the first step begins)
            log.warning("optwatch: start_step=%d comes after the first step; the steps keep their numbers", step)
            return
        self.step = self.first_step = step
        self.publish([self._hello()])

    # --- the explicit API -------------------------------------------------------------------------------
    def attach(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        batch_size: int | None = None,
        start_step: int | None = None,
    ) -> Probe:
        if start_step is not None:
            self.start_at(start_step)
        if model is not None:
            if self._trains_another_model(model):
                # watch() again for a model built anew (a notebook's next cell, the next trial): a new model,
                # as when the script drops the primary for one (``_elect``); the first loss of the new model
                # was an exploding alert against the last one's baselines.
                self._new_primary(new_model=True)
            self.model = model
            self._model_given = True
            self._param_names = None
        if optimizer is not None:
            self._primary = optimizer
            if optimizer not in self._made_watched:  # (made watched: its schedulers were too, after it)
                self._schedulers_made_before()
        if batch_size is not None:
            if batch_size <= 0:
                raise ValueError(f"batch_size must be positive, got {batch_size}")
            self.batch_size = batch_size
        return self

    def _trains_another_model(self, model: torch.nn.Module) -> bool:
        """``model`` holds none of the parameters trained so far (after a first step): a model built anew."""
        if self.step == self.first_step:
            return False
        if self.model is not None:
            trained = {id(param) for param in self.model.parameters()}
        else:
            trained = set(self._param_ids)
        return bool(trained) and not any(id(param) in trained for param in model.parameters())

    def log(self, **metrics: float) -> None:
        """Publish named values (eval accuracy, perplexity...) tagged with the current step."""
        self._publish_metrics(self.step, metrics)

    def log_after_step(self, **metrics: float) -> None:
        """Publish named values of the model the last finished step left (a framework's evaluation between
        steps), tagged with that step, as the framework's own loggers tag them."""
        self._publish_metrics(max(self.step - 1, self.first_step), metrics)

    def log_at_step(self, step: int, /, **metrics: float) -> None:
        """Publish named values tagged with ``step``, where a framework's loggers tag them with one of their own
        (Lightning's validation in the middle of an accumulated step: the step under way)."""
        self._publish_metrics(step, metrics)

    def _publish_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        values = {}
        for name, value in metrics.items():
            values[name] = value.detach() if isinstance(value, torch.Tensor) else float(value)
        self.emit(protocol.make_record("metric", self.rank, step=step, values=values))

    # --- ProbeContext ------------------------------------------------------------------------------------
    @property
    def plugins(self) -> list[ProbePlugin]:
        return self._dispatch.plugins

    @plugins.setter
    def plugins(self, plugins: list[ProbePlugin]) -> None:
        self._dispatch.replace(plugins, self.detailed)
        self._note_backward_end()

    @property
    def primary_optimizer(self) -> torch.optim.Optimizer | None:
        return self._primary

    @property
    def primary_name(self) -> str | None:
        if self._primary is None or not (self._records.others or self._partners):
            return None
        return self._name_of(self._primary)

    def partner_optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return [(self._name_of(partner), partner) for partner in self._live_partners()]

    def emit(self, record: dict[str, Any]) -> None:
        self._records.emit(record)

    def publish(self, records: list[dict[str, Any]]) -> None:
        self.channel.submit_records(records)

    def flush(self) -> None:
        self._flush()

    def send_decision(self, decision: dict[str, Any]) -> None:
        self.channel.send_decision(decision)

    def report_grad_norm(self, norm: torch.Tensor | None, part: bool = False) -> None:
        self._grad_norm = norm
        self._grad_part = part

    def share_grad_norms(
        self,
        grads: list[torch.Tensor],
        norms: list[torch.Tensor],
        seconds: float = 0.0,
        vector: torch.Tensor | None = None,
    ) -> None:
        self._shared_norms = KnownNorms(grads, norms, seconds, vector)
        self._measured_norms = vector

    def charge(self, started: float) -> None:
        self.own_s += time.perf_counter() - started

    def pin_detail(self) -> None:
        self.governor.pinned = True
        self._detail_at_once()

    def _look_closer(self) -> None:
        """Every step a detail step for the next ``LOOK_CLOSER_STEPS`` (any thread: a loss that jumped)."""
        self.governor.close_look_until = self.step - self.first_step + LOOK_CLOSER_STEPS
        self._detail_at_once()

    def _detail_at_once(self) -> None:
        # The step now running ends with a record and a plan (every step), not as a light step until the next
        # detail step the old spacing planned, up to 128 steps on.
        self.detail_every = 1

    def set_step_fields(self, **fields: Any) -> None:
        self._step_fields = {**self._step_fields, **fields}  # a new mapping: steps made so far keep theirs

    @property
    def median_step_s(self) -> float | None:
        return self.governor.median_step_s

    @property
    def held(self) -> bool:
        return self._held

    @property
    def waiting_since(self) -> float | None:
        if self._held or self.closed:
            return None
        started = self._step_start
        return self._started_at if started is None else started

    def learning_rate(self, optimizer: torch.optim.Optimizer | None = None) -> float | torch.Tensor | None:
        optimizer = optimizer or self._primary
        if optimizer is None or not optimizer.param_groups:
            return None
        return learning_rate_of(optimizer.param_groups[0].get("lr"))

    def parameters(self) -> list[torch.Tensor]:
        if self._primary is not None:
            groups = self._primary.param_groups if not self._partners else self._together_groups()
            key = tuple((id(group["params"]), len(group["params"])) for group in groups)
            if key != self._params_key:
                self._params = [p for group in groups for p in group["params"]]
                self._param_ids = frozenset(map(id, self._params))
                self._params_key = key
            return self._params
        if self.model is not None:
            return list(self.model.parameters())
        # Before the first optimizer step: the parameters of the optimizer that holds what the script clips (a
        # clip of a part, or of parts one by one, is not all the step trains), else what it clips.
        first = self._clip_params[0] if self._clip_params else None
        for ref in reversed(self._made):
            optimizer = ref()
            params = params_of(optimizer) if optimizer is not None else []
            if any(p is first for p in params):
                return params
        return self._clip_params

    def find_model(self) -> torch.nn.Module | None:
        """The model being trained: the one given to ``watch``, else found once from the optimizer.

        Zero-code mode never sees the model, so at the first step it looks among live modules for the
        largest one whose parameters the primary optimizer trains. Cached; None when there is none.
        """
        if self.model is not None or self._model_searched or self._primary is None:
            return self.model
        self._model_searched = True
        started = time.thread_time()
        self.model = largest_module_of(self._primary, *self._live_partners())
        # No model holds all the primary's parameters and no others' trained ones (Muon's matrices, or
        # AdamW's embedding, head and gains, before the other is seen stepping beside it): they are named
        # from the largest module that holds them, as they will be once it is.
        params = self.parameters()
        held = {id(p) for p in self.model.parameters()} if self.model is not None else set()
        whole = self.model is not None and all(id(p) in held for p in params)
        self._names_from = None if whole else largest_module_holding(params)
        self._searched_at = time.perf_counter()
        self._search_s = time.thread_time() - started
        return self.model

    def _live_partners(self) -> list[torch.optim.Optimizer]:
        return [partner for partner in (ref() for ref in self._partners) if partner is not None]

    def _together_groups(self) -> list[dict[str, Any]]:
        """The param groups of the primary and of its partners, in the order they step."""
        assert self._primary is not None
        groups = list(self._primary.param_groups)
        for partner in self._live_partners():
            groups.extend(partner.param_groups)
        return groups

    def _is_partner(self, optimizer: torch.optim.Optimizer) -> bool:
        return any(ref() is optimizer for ref in self._partners)

    def _joins_as_partner(self, optimizer: torch.optim.Optimizer) -> bool:
        """``optimizer``, not the primary and training none of its parameters, steps right after it on the
        gradients of the same backward (Muon's matrices, then AdamW's embeddings and gains): it is a partner
        from now on, its parameters measured with the primary's and the model found again to hold them all."""
        if not self._primary_stepped_last:
            return False
        if not any(p.grad is not None for p in params_of(optimizer)):
            return False
        self._partners.append(weakref.ref(optimizer))
        self._params_key = None
        if not self._model_given:
            self._forget_model(look_again=True)
        return True

    def _forget_model(self, look_again: bool) -> None:
        """The model found, and the names of its parameters, are no longer the training's: looked for again
        at the next need (``look_again``), else left unknown."""
        self.model, self._param_names, self._names_from = None, None, None
        self._model_searched = not look_again

    def schedulers(self) -> list[Any]:
        """The LR schedulers made so far that are still alive."""
        return [scheduler for scheduler in (ref() for ref in self._schedulers) if scheduler is not None]

    def parameter_names(self) -> dict[int, str]:
        if self._primary is not None:
            self.parameters()  # (keeps the primary's parameters' key up to date)
        if self._param_names is None:
            model = self.find_model()
            if self._names_from is not None:
                model = self._names_from
            if model is None:
                return {}
            named = getattr(model, "_orig_mod", model)  # (torch.compile's wrapper: its model's own names)
            self._param_names = {id(p): name for name, p in named.named_parameters()}
            self._names_key = self._params_key
            trained = self._params if self._primary is not None else []
            unnamed = [p for p in trained if id(p) not in self._param_names]
            if unnamed:  # (the model found holds only a part: heads made apart from their trunk were "(unnamed)")
                from_main = names_in_main(trained)
                if len(from_main) > len(trained) - len(unnamed):
                    self._param_names = from_main
        elif self._names_key != self._params_key and self._primary is not None:
            # The primary's parameters changed (add_param_group: a backbone unfrozen after its head): named
            # from a module that holds them all when the model found first holds only some.
            self._names_key = self._params_key
            params = self._params
            if any(id(p) not in self._param_names for p in params):
                holder = smallest_module_holding(params)
                if holder is not None:
                    self._param_names = {id(p): name for name, p in holder.named_parameters()}
        return self._param_names

    # --- plugins ---------------------------------------------------------------------------------------
    def retabulate(self) -> None:
        if self.training_thread is not None and threading.get_ident() != self.training_thread:
            self._tables_stale = True  # the training thread reads the tables: it retabulates at its step's end
            return
        self._tables_stale = False
        self._dispatch.tabulate(self.detailed)
        self._note_backward_end()

    def _note_backward_end(self) -> None:
        """``backward_end_needed`` again, after what it depends on changed: the callback table, the optimizer
        stepping (a closure's backward ends its gradients), or no optimizer yet (each backward is a step)."""
        self.backward_end_needed = bool(
            self._dispatch.active["on_backward_end"]
            or self._stepping is not None
            or (self._primary is None and self._optimizers_made == 0)
        )

    def switch_off(self, plugin: str, where: str) -> None:
        self._dispatch.switch_off(plugin, where)

    def hook_failed(self, where: str) -> None:
        """optwatch's own accounting raised in one of its hooks (a bug, or a loop it does not expect): logged
        once per hook; this step's partial accounts are dropped and the training goes on."""
        if where not in self._failed_hooks:
            self._failed_hooks.add(where)
            log.exception("optwatch: its %s failed; training goes on (this step may go unrecorded)", where)
        self._clear_step()
        self._stepping = None
        self._note_backward_end()
        self._step_start = time.perf_counter()
        self.own_s = 0.0

    # --- HookTarget: batches -------------------------------------------------------------------------------
    def batch_taken(self, iterator: Any, started: float, finished: float, batch: Any) -> None:
        if self._no_optimizer_step_due:
            self._finish_step(started)
        elif self._partners_due:
            self._end_together(started)  # a partner that did not step this time
        self._batches.taken(iterator, started, finished, batch)
        if self._dispatch.active["on_batch"]:
            self._dispatch.call_in_step("on_batch")
        self.own_s += time.perf_counter() - finished

    def loader_started(self, loader: Any, iterator: Any) -> None:
        self._batches.loader_started(loader, iterator)

    @property
    def loader(self) -> dict[str, Any]:
        """Settings of the DataLoader the training iterates, for the verdict's advice."""
        return self._batches.loader

    def _begin_first_step(self, now: float) -> None:
        """The first step begins at its first consumed batch, or else at its backward(): what optwatch did
        before (checks of forwards before the training, a sanity check's validation) is no part of it."""
        self._step_start = now
        self.own_s = 0.0
        self._last_bg_cpu = self.channel.cpu_s  # what the threads did before the training is no step's
        self._core_wait.since_last()  # (the first step's wait for a core counts from here)

    # --- HookTarget: backward ------------------------------------------------------------------------------
    def backward_starting(self, tensors: Any, weight: torch.Tensor | None = None) -> Any:
        now = time.perf_counter()
        if self._no_optimizer_step_due:
            self._finish_step(now)
        elif self._partners_due:
            self._end_together(now)  # a partner that did not step this time
        self._primary_stepped_last = False
        self.training_thread = threading.get_ident()
        fetched = self._batches.consumed()
        if self._step_start is None:
            self._begin_first_step(fetched if fetched is not None else now)
        is_loss = isinstance(tensors, torch.Tensor) and tensors.numel() == 1 and tensors.requires_grad
        replacement = None
        if not is_loss and isinstance(tensors, (list, tuple)) and tensors:
            # torch.autograd.backward([loss_a, loss_b]): the gradients of their sum, and so is the loss.
            if all(isinstance(t, torch.Tensor) and t.numel() == 1 and t.requires_grad for t in tensors):
                self._backward_started = now
                for tensor in tensors:
                    self._losses.backpropagated(tensor, in_closure=self._stepping is not None)
        elif is_loss:
            self._backward_started = now  # (the step's last: where DDP syncs under no_sync accumulation)
            self._losses.backpropagated(
                tensors, in_closure=self._stepping is not None, weight=weight, new_batch=fetched is not None
            )
            for replaced in self._dispatch.call_in_step("on_backward_start", tensors):
                if replaced is not None:
                    replacement = replaced
        self.own_s += time.perf_counter() - now
        return replacement

    def loss_scaled(self, scaled: torch.Tensor, loss: torch.Tensor) -> None:
        self._losses.scaled(scaled, loss)

    def backward_ended(self, tensors: Any) -> None:
        if not (isinstance(tensors, torch.Tensor) and tensors.numel() == 1 and tensors.requires_grad):
            return
        started = time.perf_counter()
        if self._dispatch.active["on_backward_end"]:
            self._dispatch.call_in_step("on_backward_end", tensors)
        if self._stepping is not None and self._stepping is self._primary and self._losses.closure_loss_taken:
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
        self._gradients_backward = self._backward_started
        if optimizer is None and self._optimizers_made == 0 and self.model is None and not self._model_searched:
            # No optimizer: the model is the largest module whose parameters all got gradients.
            self._model_searched = True
            self.model = largest_module(lambda param: param.grad is not None)
        if self.device is None:
            params = self.parameters()
            device = params[0].device if params else self._losses.device
            if device is not None:
                self._announce_device(device)
        self.clip_measures = clip_measures
        self._dispatch.call_in_step("on_gradients", optimizer)
        if self._grad_norm is None and not clip_measures and self.detailed:
            params = self.parameters()
            grads = [p.grad for p in params]
            if sharding.is_sharded(grads):
                self.report_grad_norm(self._norm_part(params, self.world_size), part=True)
            else:
                self._grad_norm = global_norm(grads)

    def clipping(self, parameters: Any, by_norm: bool) -> KnownNorms | None:
        started = time.perf_counter()
        params = list(parameters) if not isinstance(parameters, torch.Tensor) else [parameters]
        # Whose clip: told by its first trained parameter (a fine-tuning script clips model.parameters(), whose
        # first ones are frozen and in no optimizer: taken for another model's clip, the norm came after it).
        first = next((param for param in params if param.requires_grad), None) if params else None
        the_steps = first is not None and (self._primary is None or id(first) in self._param_ids or not self._param_ids)
        if the_steps:
            if self._gradients_final and self._gradients_backward != self._backward_started and self._stepping is None:
                # A backward since the gradients were taken (a clip per micro-batch, a common slip): the step
                # takes these, so the plugins measure them again, and this clip's norm is the step's so far.
                self._gradients_final = False
                self._clip_norm = self._clip_max = None
                self._clip_parts, self._clip_covered, self._clipped_whole = [], set(), False
            self._clip_params = params
            self._gradients_ready(self._primary, clip_measures=by_norm)
        if by_norm:
            self._clips.append((params, the_steps))
        # For this clip only: a second clip in the step sees gradients the first one scaled.
        shared, self._shared_norms = self._shared_norms, None
        self._handed_norms = shared
        self.own_s += time.perf_counter() - started
        return shared

    def clipped(self, total_norm: Any, max_norm: Any) -> None:
        handed, self._handed_norms = self._handed_norms, None
        if handed is not None and handed.taken:
            self.own_s -= handed.seconds  # the clip's own work, done for it: it computed no norms
        params, the_steps = self._clips.pop() if self._clips else (None, True)
        if not the_steps or self._clipped_whole:
            return  # another model's clip (a GAN's generator's), or a second clip of gradients clipped already
        if not (isinstance(total_norm, torch.Tensor) and total_norm.numel() == 1):
            return
        norm = sharding.replicated_value(total_norm.detach())
        try:
            clip_max = float(max_norm)
        except (TypeError, ValueError):
            clip_max = None
        if params is None or (self._param_ids and self._holds_the_steps(params)):
            self._clip_norm, self._clip_max, self._clipped_whole = norm, clip_max, True
            return
        # A part of the step's parameters, or the step's parameters not yet known (before the first optimizer
        # step): the norm is the step's once parts that do not overlap hold them all (``_clip_parts_norm``).
        ids = set(map(id, params))
        if ids & self._clip_covered:
            return  # (gradients a clip before this one scaled)
        self._clip_covered |= ids
        self._clip_parts.append(norm)
        self._clip_part_max = clip_max if len(self._clip_parts) == 1 else None
        if self._param_ids:
            self._clip_parts_norm()

    def _clip_parts_norm(self) -> None:
        """The parts clipped so far hold all the step's parameters: their norms make the step's."""
        parts = self._clip_parts
        if not self._param_ids <= self._clip_covered or any(part.device != parts[0].device for part in parts):
            return
        if len(parts) == 1:  # (a clip of them all before the first optimizer step named them)
            self._clip_norm, self._clip_max = parts[0], self._clip_part_max
        else:
            with torch.no_grad():
                self._clip_norm = torch.linalg.vector_norm(torch.stack([part.to(parts[0].dtype) for part in parts]))
        self._clipped_whole = True

    def _holds_the_steps(self, params: list[torch.Tensor]) -> bool:
        """Whether a clip of ``params`` clips every parameter of the step's (the primary optimizer's, with its
        partners'): known at a glance for the clip of the step before."""
        key = (len(params), id(params[0]) if params else 0, id(params[-1]) if params else 0)
        whole = self._whole_clip
        if whole is not None and whole[0] == key and whole[1] is self._param_ids:
            return True
        if not self._param_ids <= set(map(id, params)):
            return False
        self._whole_clip = (key, self._param_ids)
        return True

    # --- HookTarget: optimizers ----------------------------------------------------------------------------------
    @property
    def _primary(self) -> torch.optim.Optimizer | None:
        ref = self._primary_ref
        return ref() if ref is not None else None

    @_primary.setter
    def _primary(self, optimizer: torch.optim.Optimizer | None) -> None:
        self._primary_ref = weakref.ref(optimizer) if optimizer is not None else None

    def optimizer_made(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizers_made += 1
        self._made_watched.add(optimizer)
        if self._primary is None:
            self._made = [ref for ref in self._made if ref() is not None] + [weakref.ref(optimizer)]
        self._name_of.made(optimizer)
        self._note_backward_end()

    def _schedulers_made_before(self) -> None:
        """The LR schedulers made before optwatch watched (``watch()`` called after them, Lightning's callback
        at the training's start), found once among the live objects: a learning-rate command moves their
        schedules too, so that what they report (Lightning's LearningRateMonitor) is the rate used."""
        for obj in gc.get_objects():
            # (type(), not isinstance(): no object's own __class__ runs, a deprecated proxy's warning with it)
            if issubclass(type(obj), (LRScheduler, ReduceLROnPlateau)):
                self.scheduler_made(obj)

    def scheduler_made(self, scheduler: Any) -> None:
        self._schedulers = [ref for ref in self._schedulers if ref() is not None and ref() is not scheduler]
        self._schedulers.append(weakref.ref(scheduler))  # (once: ReduceLROnPlateau may one day call both)

    def autocast_entered(self, device_type: str, dtype: torch.dtype, compiling: bool) -> None:
        if self.device is not None and device_type != self.device.type:
            return  # an autocast for another device: not the training's
        self._autocast_dtype = dtype
        if compiling:
            self._compiled_autocast = True  # from now on in the compiled code, never entered again
        else:
            self._autocast_entries += 1

    def optimizer_step_starting(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._stepping is not None and optimizer is not self._stepping:
            # Stepped inside another's step: the optimizer that ZeroRedundancyOptimizer, Lookahead or SAM wrap
            # is part of their step, not a second optimizer with a loss of its own.
            self._inner_stepping = optimizer
            return
        started = time.perf_counter()
        self._inner_stepping = None  # (an inner step that raised never ended)
        if self._partners_due and (optimizer is self._primary or not self._is_partner(optimizer)):
            self._end_together(started)  # a partner that did not step this time
        if optimizer is not self._primary:
            self._elect(optimizer)
            if optimizer is not self._primary and not self._is_partner(optimizer):
                self._joins_as_partner(optimizer)
        self._stepping = optimizer
        self.backward_end_needed = True  # a closure may call backward now
        self._stepped = True
        self._losses.closure_loss_taken = False
        if self._hooks.backwards_running and self._partners and (optimizer is self._primary or self._partners_due):
            self._measure_in_backward(optimizer)  # (before _gradients_ready, which it stands in for)
        if optimizer is self._primary:
            # (The step hooks get step()'s arguments with the optimizer first.)
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
            if not callable(closure):
                self._gradients_ready(optimizer)
            self._dispatch.call_in_step("before_optimizer_step", optimizer)
        self.own_s += time.perf_counter() - started

    def optimizer_step_ended(self, optimizer: torch.optim.Optimizer) -> None:
        if optimizer is self._inner_stepping:
            self._inner_stepping = None
            return
        started = time.perf_counter()
        self._stepping = None
        if optimizer is self._primary:
            self._gradients_ready(optimizer)  # a closure that never called backward
            self._primary_stepped_last = True
            if self._partners and self._await_partners():
                self.own_s += time.perf_counter() - started
                return
            self._end_together(started)
        elif self._partners_due and self._is_partner(optimizer):
            self._partners_due.discard(id(optimizer))
            if not self._partners_due:
                self._end_together(started)
            else:
                self.own_s += time.perf_counter() - started
        elif self._is_partner(optimizer):
            self.own_s += time.perf_counter() - started  # (its first step: the primary's step ended before it)
        else:
            self._note_backward_end()
            self._other_optimizer_stepped(optimizer)
            self.own_s += time.perf_counter() - started

    def _measure_in_backward(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer stepped from a gradient hook, inside ``backward()`` (optimizer-in-backward, as torchtune
        does it: one optimizer per parameter, each gradient freed once its step is taken): no moment holds the
        step's gradients together, so each one's share of the norm is taken at its own step and the step's
        norm is their sum (``_end_together``). The per-layer checks, which need them together, are left out.
        Only once partners are known: the first step has the primary's part alone, as any partners' first
        (and a single optimizer stepped from a hook is measured as any other)."""
        self._gradients_final = True  # (the plugins' checks and the probe's own norm would see one gradient)
        if not self.detailed:
            return
        grads = [p.grad for p in params_of(optimizer)]
        if sharding.is_sharded(grads):
            return  # (a sharded model's parts are the hub's to add up: not in this path)
        norm = global_norm(grads)
        if norm is not None:
            squared = norm.float().square()
            self._in_backward_sq = squared if self._in_backward_sq is None else self._in_backward_sq + squared

    def _await_partners(self, **extra: Any) -> bool:
        """The primary has stepped: the step ends when its partners have too. False if none is alive."""
        self._partners = [ref for ref in self._partners if ref() is not None]
        self._partners_due = {id(ref()) for ref in self._partners}
        self._deferred_extra = extra
        return bool(self._partners_due)

    def _end_together(self, started: float) -> None:
        """The primary and its partners have stepped (or a partner did not step this time): the step ends."""
        self._partners_due.clear()
        if self._in_backward_sq is not None:  # (each optimizer's share of the norm: the step's, all stepped)
            self._grad_norm, self._in_backward_sq = self._in_backward_sq.sqrt(), None
        if self._deferred_extra:  # the primary's step that a GradScaler skipped
            extra, self._deferred_extra = self._deferred_extra, {}
            self._finish_step(started, **extra)
            return
        self._dispatch.call_in_step("after_optimizer_step", self._primary)
        now = time.perf_counter()
        self.own_s += now - started
        self._finish_step(now)  # (which notes what backward's end needs, for the next step)

    def gradients_reset(self, owner: torch.optim.Optimizer | torch.nn.Module) -> None:
        """The script throws away the gradients of what it backpropagated since the last step (a step it
        skipped: a NaN or spike guard, ``zero_grad(); continue``): so do the step's loss and measures."""
        if self._stepping is not None or not (self._losses.pending or self._gradients_final):
            return  # the usual case (after a step, before a backward); or a closure's, inside the step
        if self._partners_due:
            return  # between the primary's step and its partners': the step is under way, not skipped
        if self._no_optimizer_step_due:
            return  # no optimizer: the backward was the step (its update made by hand), ended at the next
        if isinstance(owner, torch.optim.Optimizer) and _wraps_another(owner):
            # SAM's first_step: the weights moved for a second pass whose gradients the step applies, as under
            # its step(closure): no step skipped, and the loss is the first pass's (the one SAM's users log).
            self._losses.held = True
            return
        if self._primary is not None:
            if isinstance(owner, torch.nn.Module):
                first = next(owner.parameters(), None)
                self.parameters()  # (keeps the primary's parameter ids up to date)
                if first is None or id(first) not in self._param_ids:
                    return  # another model's gradients (a GAN's other network, a teacher)
            elif owner is not self._primary:
                return
        started = time.perf_counter()
        self._clear_gradients()
        self.own_s += time.perf_counter() - started

    def scaler_step_starting(self, optimizer: torch.optim.Optimizer) -> None:
        self._stepped = False

    def scaler_stepped(self, scaler: Any, optimizer: torch.optim.Optimizer) -> None:
        """GradScaler skipped ``optimizer.step()`` for inf/NaN gradients: that iteration is a step too."""
        if self._stepped or not scaler.is_enabled():
            return
        now = time.perf_counter()
        if self._partners_due and self._is_partner(optimizer):
            self._partners_due.discard(id(optimizer))  # a partner's step skipped: it stepped, as far as the step goes
            if not self._partners_due:
                self._end_together(now)
            return
        if self._partners_due:
            self._end_together(now)
        if optimizer is not self._primary:
            self._elect(optimizer)
        if optimizer is not self._primary:
            if not self._is_partner(optimizer) and not self._joins_as_partner(optimizer):
                self._other_optimizer_stepped(optimizer)
            return
        scale = scaler._scale.detach().clone() if isinstance(scaler._scale, torch.Tensor) else None
        self._gradients_ready(optimizer)
        self._primary_stepped_last = True
        if self._partners and self._await_partners(amp_overflow=True, amp_scale=scale):
            return
        self._finish_step(now, amp_overflow=True, amp_scale=scale)

    def _elect(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer``, not the primary, steps: it becomes the primary if there is none yet, or if it trains
        some of the primary's parameters. That is a new optimizer the script made to go on training the model
        (at a phase change, to unfreeze a backbone): the old one, which the script dropped, steps no more, and
        optwatch neither keeps it alive nor stops counting steps with it."""
        if self._primary is not None:
            if optimizer in self._others_apart:
                return
            self.parameters()  # (keeps the primary's parameter ids up to date)
            if not any(id(p) in self._param_ids for p in params_of(optimizer)):
                self._others_apart.add(optimizer)
                return
            self._new_primary(new_model=False)
            if self.model is None:
                self._model_searched = False  # (looked for again from the new one's parameters)
        elif self._primary_ref is not None:
            # The script dropped the primary: a new model is trained from here on (the next fold, the next
            # model of a sweep), found again from the new primary unless ``watch`` named it. A new optimizer
            # for the same model is no new model.
            old = {id(param) for param in self.model.parameters()} if self.model is not None else set()
            self._new_primary(new_model=not any(id(param) in old for param in params_of(optimizer)))
            if not self._model_given:
                # Looked for again, unless models come and go faster than the walk over every live object
                # pays for (a new model for each task, Reptile's: 90 ms of walk to a 5 ms step): their
                # parameters then go unnamed.
                since = time.perf_counter() - self._searched_at
                self._forget_model(look_again=since >= MODEL_SEARCH_SPACING * self._search_s)
        self._primary = optimizer

    def _new_primary(self, new_model: bool) -> None:
        """The optimizers kept apart and the partners were the last primary's: measured against the new one from
        now on. A new model (none of the last one's parameters) says so in its step record, and the diagnosis
        starts its baselines over (the last trial's are not this model's); ``_tables_stale`` keeps the step off
        the light path, where no record is made."""
        self._others_apart = weakref.WeakSet()
        self._partners = []
        if new_model:
            self._new_model = self._tables_stale = True

    def _other_optimizer_stepped(self, optimizer: torch.optim.Optimizer) -> None:
        self._records.other_stepped(optimizer, self._losses.take(by_other=True), self._primary)

    def _model_of(self, optimizer: torch.optim.Optimizer) -> torch.nn.Module | None:
        return self.find_model() if optimizer is self._primary else largest_module_of(optimizer)

    # --- the step boundary ---------------------------------------------------------------------------------------
    def _finish_step(self, now: float, **extra: Any) -> None:
        ending = self.step
        if not self._batches.consumed_in_step:
            # Gradients without a backward() (torch.autograd.grad, then p.grad = g): the step trained on its batch.
            fetched = self._batches.consumed()
            if self._step_start is None and fetched is not None:
                self._begin_first_step(fetched)
        if self._autocast_entries != self._entries_mark or self._under_autocast:
            self._note_step_precision()
        if (
            not self.detailed
            and (ending + 1 - self.first_step) % self.detail_every  # (the governor counts from the first step)
            and not self._dispatch.active["after_step"]
            and not self._dispatch.active["at_boundary"]
            and not self.commands
            and not extra
            and not self._tables_stale
            and not self._grad_part
            and not self._records.others
            and not self._batches.other_fetches
        ):
            self._note_light_step(now)
            return
        self._held = True  # (optwatch's own work from here to the next step: no wait of the training's)
        try:
            self._make_record(now, extra)
        except Exception:
            self._held = False
            self.hook_failed("step boundary")
            self._advance(ending)
            return
        self._advance(ending)
        held_s = 0.0
        try:
            if self._tables_stale:
                self.retabulate()
            holding = time.perf_counter()
            try:
                for seconds in self._dispatch.at_boundary(bool(self.commands)):
                    held_s += seconds or 0.0
            except BaseException:
                # An interrupt at the boundary (Ctrl-C in a pause, which the controls end): the time there was
                # held, as a pause's, not optwatch's own (a pause interrupted read as optwatch taking 80%).
                held_s = time.perf_counter() - holding
                raise
            if now - self._last_flush >= self.options.publish_interval_s:
                self._flush(now)
        finally:  # also after a KeyboardInterrupt (`stop`, Ctrl-C), which a loop may catch and train on
            self._held = False
            # From here on it is the next step, which pays for this boundary's work as the training does:
            # its time and optwatch's count from now. A pause does not.
            self._step_start = now + held_s
            self.own_s = time.perf_counter() - self._step_start

    def _note_step_precision(self) -> None:
        """At a step's end: it trained under autocast if a training forward entered one since the last step's
        end (the script's own, or optwatch's ``amp=on`` entered at the boundary), or if one is compiled into
        its code; the step field ``precision`` changes with the very step that changed."""
        entered = self._autocast_entries != self._entries_mark
        self._entries_mark = self._autocast_entries
        under = entered or self._compiled_autocast
        if under != self._under_autocast and self.device is not None:
            self._set_precision(under)

    @property
    def under_autocast(self) -> bool:
        return self._under_autocast

    def _set_precision(self, under_autocast: bool) -> None:
        self._under_autocast = under_autocast
        if under_autocast and self._autocast_dtype is not None:
            precision = f"{dtype_name(self._autocast_dtype)} autocast"
        elif self._weights_dtype is not None:
            precision = dtype_name(self._weights_dtype)
        else:
            return
        if self._step_fields.get("precision") != precision:
            self.set_step_fields(precision=precision)

    def _note_light_step(self, now: float) -> None:
        """The end of a step between detail steps that no plugin needs: its raw values only, no record yet
        (what the step's end costs shows as much again in the training's own work: the fewer objects it
        touches, the less). A next step that must be a detail step, a plugin that wants the step's end, a
        command waiting, another optimizer's or an evaluation's batches to add: those take ``_make_record``."""
        self._no_optimizer_step_due = False
        self._light_steps.append(self._step_values(now))
        self._planned_every = self.detail_every  # (what made the next step a light one too: before any flush)
        self._clear_step()
        self.step += 1
        self._note_backward_end()
        if now - self._last_flush >= self.options.publish_interval_s:
            self._flush(now)
        self._step_start = now
        self.own_s = time.perf_counter() - now

    def _step_grad_norm(self) -> Any:
        """The step's global gradient norm before clipping: measured, else given by its clips, else (clips of
        only some of its parameters) made from the per-gradient norms measured for them; None between detail
        steps without a clip of them all."""
        if self._grad_norm is not None:
            return self._grad_norm
        if self._clip_norm is None and self._clip_parts:
            self.parameters()  # (the step's parameters, known now that its optimizer has stepped)
            self._clip_parts_norm()  # (sets ``_clip_max`` too, which the step's values read next)
        if self._clip_norm is not None or self._measured_norms is None:
            return self._clip_norm
        if len(self._measured_norms) != len(self.parameters()):
            return None  # measured for the clip of a part, before the step's parameters were known
        with torch.no_grad():
            return torch.linalg.vector_norm(self._measured_norms)

    def _step_values(self, now: float) -> tuple:
        """The step ending at ``now``, as ``_step_record`` takes it (a tuple: made at every step)."""
        step_start, backward_started = self._step_start, self._backward_started
        return (
            self.step,
            now,
            self._losses.take(),
            self._step_grad_norm(),
            self._clip_max,
            self.learning_rate(),
            now - step_start if step_start is not None else None,
            self._batches.data_wait_s,
            self._batches.samples,
            # Time until this rank reached its last backward(), where DDP's gradient all-reduce waits for
            # the slowest rank (under accumulation with no_sync, the first backward comes before a slow
            # rank's later micro-batches): the straggler is the rank for which this is longest.
            backward_started - step_start if backward_started is not None and step_start is not None else None,
            self.own_s,
            self._core_wait.since_last(),
            self._planned_every,
            self._step_fields,
        )

    def _step_record(self, values: tuple, detailed: bool, bg_s: float, wall_offset: float) -> dict[str, Any]:
        """The step record of ``_step_values``; ``wall_offset``: ``time.time()`` less ``time.perf_counter()``."""
        (step, ended, loss, grad_norm, clip_max, lr, step_time, data_wait_s, samples, to_backward_s, own_s,
         core_wait_s, detail_every, fields) = values  # fmt: skip
        samples = samples or self.batch_size
        # The fields written out: a dict display costs a third of a call that makes one field by field.
        record = {
            "v": protocol.PROTOCOL_VERSION,
            "kind": protocol.STEP,
            "rank": self.rank,
            "time": ended + wall_offset,
            "step": step,
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr,
            "step_time_s": step_time,
            "data_wait_s": data_wait_s,
            "samples": samples,
            "samples_per_s": (samples / step_time) if samples and step_time else None,
            "to_backward_s": to_backward_s,
            "optwatch_s": own_s,
            "optwatch_bg_s": bg_s,
            "core_wait_s": core_wait_s,
            "detailed": detailed,
            "detail_every": detail_every,
            **fields,
        }
        if clip_max is not None:
            record["clip_max_norm"] = clip_max
        return record

    def _record_light_steps(self) -> None:
        """The step records of the light steps noted since the last, in order, with the governor told of
        each as it would have been at its end. Under ``_handing_over``: the sampler's thread records them too,
        in a long wait (``_flush_when_idle``). The list is emptied in place, never swapped: a step the training
        thread appends meanwhile (``_note_light_step`` takes no lock) lands after those taken, and stays."""
        noted = self._light_steps
        light = noted[: len(noted)]
        del noted[: len(light)]
        bg_cpu = self.channel.cpu_s
        offset = time.time() - time.perf_counter()
        last = len(light) - 1
        for index, values in enumerate(light):
            # The background threads' time since the last record goes with the last light step.
            bg_s = bg_cpu - self._last_bg_cpu if index == last else 0.0
            record = self._step_record(values, False, bg_s, offset)
            self.detail_every, _ = self._plan(record, False)
            self._records.add(record, self._primary)
        self._last_bg_cpu = bg_cpu

    def _plan(self, record: dict[str, Any], detailed: bool) -> tuple[int, bool]:
        """The governor told of the step ``record`` is of: (the spacing now, whether the next step is a detail
        step). What the budget weighs is what the live figure shows, the threads' time too (a detail step's
        records are most of what they read back and send)."""
        if self.budget_held:  # (a profile someone asked for: not the checks' cost)
            return self.governor.plan(record["step"] - self.first_step, 0.0, None, detailed)
        own_s = own_seconds(record)  # (on a busy machine, without the slices other programs took from its lines)
        return self.governor.plan(record["step"] - self.first_step, own_s, record["step_time_s"], detailed)

    def _make_record(self, now: float, extra: dict[str, Any]) -> None:
        if self._light_steps:
            with self._handing_over:
                self._record_light_steps()
        self._no_optimizer_step_due = False
        self._gradients_ready(self._primary)
        bg_cpu = self.channel.cpu_s
        record = self._step_record(
            self._step_values(now), self.detailed, bg_cpu - self._last_bg_cpu, time.time() - time.perf_counter()
        )
        self._last_bg_cpu = bg_cpu
        if self._grad_part and self._grad_norm is not None:
            record["_sharded"] = True
        self._batches.add_eval_batches(record)
        if self._new_model:
            record["new_model"], self._new_model = True, False
        if self._between_cells:
            record["between_cells"], self._between_cells = True, False
        if extra:
            record.update(extra)
        self.detail_every, self.next_detailed = self._plan(record, self.detailed)
        self._planned_every = self.detail_every
        self.torch_threads = torch.get_num_threads()  # on this thread: the sampler's own may differ
        self._dispatch.after_step(record, self.detailed or self.next_detailed)
        self._records.add(record, self._primary)
        self._clear_step()

    def _clear_step(self) -> None:
        self._batches.clear()
        self._backward_started = None
        self._clear_gradients()

    def _clear_gradients(self) -> None:
        """What the step's backward passes gave: their losses, and the gradients' measures."""
        self._losses.clear()
        self._gradients_final = False
        self._grad_norm = None
        self._grad_part = False
        self._clip_norm = None
        self._clip_max = None
        self._clip_params = []
        if self._clip_parts or self._clips:
            self._clip_parts, self._clip_covered, self._clips = [], set(), []
        self._clipped_whole = False
        self._measured_norms = None
        self._in_backward_sq = None
        self._shared_norms = None
        self._handed_norms = None

    def _advance(self, ending: int) -> None:
        """The next step begins: its number, whether it is a detail step, and so its callback table."""
        if self.step == ending:
            self.step += 1
        self.detailed = self.next_detailed
        self._dispatch.select(self.detailed)
        self._note_backward_end()

    def _flush(self, now: float | None = None) -> None:
        self._last_flush = now if now is not None else time.perf_counter()
        self._hand_over(on_host=self.device is not None and self.device.type == "cpu", light_steps=True)

    def _hand_over(self, on_host: bool, light_steps: bool) -> None:
        """The records ready to go (after the light steps' records, with ``light_steps``), to the channel (on
        the training thread, or the sampler's in a long wait)."""
        with self._handing_over:
            if light_steps and self._light_steps:
                self._record_light_steps()
            pending = self._records.take_ready()
            if pending:
                self.channel.submit(DeviceBatch(pending, on_host=on_host))

    def _flush_when_idle(self) -> None:
        """On the sampler thread: steps noted and not yet recorded, and no step boundary for ``IDLE_FLUSH_S`` (an
        evaluation without a DataLoader, work after the loop): the training thread records them at its next
        module call, so that the views do not stand still on an older step. A hook not taken by then (no module
        call: a sleep, a notebook's kernel between cells; or one traced by torch.compile) is let go, and on the
        CPU this thread records them itself."""
        on_host = self.device is not None and self.device.type == "cpu"
        if on_host and self._records.has_ready and time.perf_counter() - self._last_flush >= IDLE_FLUSH_S:
            # Steps recorded before a wait (an evaluation, a sleep, a hung collective) go out now, not at the
            # next boundary: the views showed step 11 while the header said "no step since step 15". On the
            # CPU their values are final; a device's are left to the training thread (a copy queued behind a
            # hung collective would never end).
            self._hand_over(on_host=True, light_steps=False)
        handle = self._idle_flush
        if handle is not None:
            if time.perf_counter() - self._idle_flush_armed > IDLE_FLUSH_S:
                self._idle_flush = None
                handle.remove()
                if on_host and not self.closed:
                    # A sleep after the loop showed step 180 of 199 for as long as it slept.
                    self._hand_over(on_host=True, light_steps=True)
            return
        started, model = self._step_start, self.model
        idle = started is not None and time.perf_counter() - started >= IDLE_FLUSH_S
        if model is not None and compiled_whole(model):
            # (A global hook would warn the script, or be traced: on a device its steps wait for the next boundary.)
            if on_host and idle and self._light_steps and not self.closed:
                self._hand_over(on_host=True, light_steps=True)
            return
        if self._light_steps and idle:
            self._idle_flush_armed = time.perf_counter()
            self._idle_flush = register_module_forward_pre_hook(self._flush_at_a_module_call)

    def _flush_at_a_module_call(self, module: torch.nn.Module, args: Any) -> None:
        if being_traced() or threading.get_ident() != self.training_thread:
            return
        handle, self._idle_flush = self._idle_flush, None
        if handle is None:
            return
        handle.remove()  # (one module call on torch's slow path)
        if self._light_steps and not self.closed:
            self._flush()

    def _announce_device(self, device: torch.device) -> None:
        self.device = device
        self._weights_dtype = weights_dtype(self.parameters())
        self._set_precision(self._autocast_entries > 0 or self._compiled_autocast)  # the first step's too
        self.governor.host_paced = device.type == "cpu"
        facts: dict[str, Any] = {"device": str(device)}
        if device.type == "cuda":
            facts["device_name"] = torch.cuda.get_device_name(device)
            facts["device_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
        else:
            facts["device_name"] = cpu_name()
        self._device_facts = facts
        self.publish([self._hello()])

    # --- off the training thread ---------------------------------------------------------------------------------
    def _sentinel(self, records: list[dict[str, Any]]) -> None:
        """On the channel thread, with values read back: a non-finite loss or gradient norm brings every step
        back to being a detail step, and arms the forward check, so the next one is caught at its step; a
        loss that jumped (a learning rate far too high, a bad batch) brings them back for ``LOOK_CLOSER_STEPS``,
        so that the gradient rules see what follows, whatever the budget's spacing was."""
        if self.nonfinite_seen:
            return
        for record in records:
            if record.get("kind") == protocol.STEP and record.get("rank") == self.rank:
                if record.get("new_model"):  # (the last model's losses are no bar for this one's)
                    self._recent_losses.clear()
                    self._loss_bar = None
                for key in ("loss", "grad_norm"):
                    value = record.get(key)
                    if isinstance(value, float) and value - value != 0.0:  # NaN or inf
                        self.nonfinite_seen = True
                        self.pin_detail()
                        return
                loss = record.get("loss")
                if isinstance(loss, float) and self._loss_jumped(loss):
                    self._look_closer()

    def _loss_jumped(self, loss: float) -> bool:
        """``loss`` is away from the recent losses' median by ``LOSS_JUMP - 1`` times their usual size
        (median of |loss|), either way (a critic's loss diving far below 0; a positive loss: ``LOSS_JUMP``
        times the median), and far outside their spread (MAD). The bar is refreshed every 16 losses: at
        thousands of steps a second this runs on a thread that shares the GIL with the training."""
        recent = self._recent_losses
        recent.append(loss)
        self._losses_seen += 1
        if self._losses_seen % 16 == 0 or self._loss_bar is None:
            if len(recent) < 20:
                return False
            median = statistics.median(recent)
            spread = statistics.median(abs(value - median) for value in recent)
            size = statistics.median(abs(value) for value in recent)
            self._loss_bar = (median, max((LOSS_JUMP - 1) * size, 9 * spread))
        median, allowed = self._loss_bar
        return allowed > 0 and abs(loss - median) > allowed


def cpu_name() -> str:
    """The CPU's model ("AMD EPYC 7R13 Processor") from /proc/cpuinfo, else the machine ("x86_64"). Not
    ``platform.processor()``: it runs ``uname -p`` in a subprocess, whose start resets the warnings registry
    (a warning the script had been shown once came again)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.partition(":")[2].strip()
                    if name:
                        return name
    except OSError:
        pass
    return platform.machine()


def weights_dtype(params: list[torch.Tensor]) -> torch.dtype | None:
    """The floating (or complex) dtype that holds most of the trained weights (None: none)."""
    sizes: dict[torch.dtype, int] = {}
    for param in params:
        if param.is_floating_point() or param.is_complex():
            sizes[param.dtype] = sizes.get(param.dtype, 0) + param.numel()
    return max(sizes, key=sizes.__getitem__) if sizes else None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
