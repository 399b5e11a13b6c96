"""Profiler windows on demand: ``torch.profiler`` over a few steps, summarised off the training thread.

A window is planned by ``--profile-at START:COUNT``, ``--profile-every N[:COUNT]`` or a request
(the dashboard's ``p``, or ``ProfilerPlugin.request_window`` for the control channel). At a step
boundary the profiler is prepared (the next step is its warm-up), at the following one it starts
recording (with module scopes), and COUNT steps later it stops. A background thread exports the
trace and waits for a helper process (``traces``) that summarises it, so the parsing never holds the
GIL the training thread needs; then it publishes a ``hotspots`` record.

With no window planned, ``after_step`` checks two attributes and compares two integers: no profiler
object exists and no hook is installed. The only work on the training thread is starting and
stopping the profiler; on CUDA, stopping waits once for the window's GPU work (torch's profiler needs
it finished to time it).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from optwatch import protocol
from optwatch.diagnose.hotspots import MODULE_SCOPE, module_label
from optwatch.options import DEFAULT_PROFILE_STEPS, MAX_PROFILE_STEPS, ProbeOptions
from optwatch.probe.plugin import ProbeContext, ProbePlugin
from optwatch.probe.traces import TraceStore, summarise_window, trace_root

log = logging.getLogger(__name__)

FINISH_TIMEOUT_S = 60.0  # at exit, how long the last window's summary may still take
HELPER_TIMEOUT_S = 600.0
_TAKEN_OVER = "the script's own torch.profiler ran during optwatch's window and ended it (one profiler at a time)"


@dataclass(frozen=True, order=True)
class Window:
    first: int
    """First recorded step; the step before it is the warm-up."""
    steps: int
    reason: str = "request"
    """``request`` (dashboard or control channel), ``cli`` (--profile-at) or ``periodic`` (--profile-every)."""

    @property
    def last(self) -> int:
        return self.first + self.steps - 1


def _compiling_check() -> Callable[[], bool]:
    """``torch.compiler.is_compiling`` where this torch has it (2.3+), else dynamo's, else never."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if check is None:
        try:
            from torch._dynamo import is_compiling as check
        except ImportError:
            return lambda: False
    return check


class ModuleScopes:
    """A ``record_function`` scope around every module's forward, for one window only.

    The model's modules are named by ``module_label`` (``layer1.conv1``, ``0 (Linear)``, the model itself
    by its class), any other module by its class. A fresh instance per window, so a scope left open by an
    exception in one window never unbalances the next.
    """

    def __init__(self, model: torch.nn.Module | None):
        self._names: dict[int, str] = {}
        # A compiled model would recompile for hooks; it gets no scopes (ops keep their DataLoader and
        # optimizer attribution).
        self._enabled = not hasattr(model, "_orig_mod")
        if model is not None and self._enabled:
            self._names = {
                id(module): module_label(name, type(module).__name__) for name, module in model.named_modules()
            }
        self._local = threading.local()
        self._handles: list[Any] = []
        self._compiling = _compiling_check()

    def install(self) -> ModuleScopes:
        if self._enabled:
            from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

            self._handles = [
                register_module_forward_pre_hook(self._enter),
                register_module_forward_hook(self._exit, always_call=True),
            ]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _stack(self) -> list[Any]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        if self._compiling():
            return
        name = self._names.get(id(module)) or type(module).__name__
        scope = torch.autograd.profiler.record_function(MODULE_SCOPE + name)
        scope.__enter__()
        self._stack().append(scope)

    def _exit(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._compiling():
            return
        stack = self._stack()
        if stack:
            stack.pop().__exit__(None, None, None)


class ProfilerPlugin(ProbePlugin):
    """Plans, runs and publishes profiler windows; ``request_window`` is safe from any thread."""

    name = "profiler"
    between_detail_steps = frozenset({"after_step"})  # a window starts and ends at any step

    def __init__(self, options: ProbeOptions):
        self._plans: list[Window] = sorted(Window(first, steps, "cli") for first, steps in options.profile_at)
        self._period: int | None = None
        if options.profile_every:
            self._period, steps = options.profile_every
            self._plans = sorted([*self._plans, Window(self._period, steps, "periodic")])
        self._due = self._next_due()
        self._requests: collections.deque[tuple[int, str]] = collections.deque()
        self._lock = threading.Lock()
        self._probe: ProbeContext | None = None
        self._traces: TraceStore | None = None
        self._window: Window | None = None
        """The window being warmed up or recorded (training thread writes, others only read)."""
        self._profile: Any = None
        self._recording = False
        self._wall_s = 0.0
        self._scopes: ModuleScopes | None = None
        self._device_used = False
        self._worker: threading.Thread | None = None
        self._held_last = False
        """The last step was a window's or its summary's: the budget leaves the next one out too."""
        self._closed = False
        self.idle_callbacks = self._idle_now()

    # --- the trigger, for the dashboard and the control channel -------------------------------------
    def request_window(self, steps: int = DEFAULT_PROFILE_STEPS, reason: str = "request") -> dict[str, Any]:
        """Profile ``steps`` steps from the next boundary but one; returns a reply for the asker."""
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_PROFILE_STEPS:
            return {"ok": False, "error": f"steps must be a whole number from 1 to {MAX_PROFILE_STEPS}, got {steps!r}"}
        if self._closed:
            return {"ok": False, "error": "the run is ending"}
        window = self._window
        if window is not None:
            return {"ok": False, "error": f"already profiling steps {window.first}-{window.last}"}
        with self._lock:
            if self._requests:
                return {"ok": False, "error": "a profiler window is already requested"}
            self._requests.append((steps, reason))
        self._note_idle()
        # The next boundary prepares the profiler, the step after it is the warm-up.
        first = (self._probe.step if self._probe is not None else 0) + 2
        return {
            "ok": True,
            "steps": [first, first + steps - 1],
            "message": f"profiling about steps {first}-{first + steps - 1}",
        }

    # --- plugin callbacks ----------------------------------------------------------------------------
    def install(self, probe: ProbeContext) -> None:
        self._probe = probe
        self._traces = TraceStore(trace_root(), probe.run_id, probe.rank)
        if self._due is not None and self._due <= 0:
            self._guarded(probe, 0, None)  # --profile-at 0:N or 1:N starts before the first step

    def after_step(self, probe: ProbeContext, record: dict[str, Any]) -> None:
        next_step = record["step"] + 1
        # A window and its summary (its thread) cost the steps: the budget leaves them out, a step past them
        # too (the summary's CPU comes in the next step's figure). Its cost spaced the checks to every 128th.
        busy = self._window is not None or self._summarising
        probe.budget_held = busy or self._held_last
        self._held_last = busy
        if self._window is None and not self._requests and (self._due is None or next_step < self._due):
            self._note_idle()  # (once the summary is done and a step past it: no call at a step's end again)
            return
        self._guarded(probe, next_step, record.get("step_time_s"))

    def close(self, probe: ProbeContext) -> None:
        self._closed = True
        window = self._window
        if window is not None:
            if self._recording and not torch.autograd.profiler._is_profiler_enabled:
                self._abandon(probe, _TAKEN_OVER, stop=False)  # see _advance
            elif self._recording:
                # The run ended inside the window: publish what was recorded.
                last = max(window.first, min(window.last, probe.step - 1))
                self._finish(probe, window, last, partial=last < window.last)
            else:
                self._window = self._profile = None  # only warmed up: nothing to show
        worker = self._worker
        if worker is not None:
            worker.join(FINISH_TIMEOUT_S)
            if worker.is_alive():
                log.warning("optwatch: the profiler summary took over %.0f s and is dropped", FINISH_TIMEOUT_S)

    # --- the window, on the training thread -------------------------------------------------------------
    def _guarded(self, probe: ProbeContext, next_step: int, step_time: float | None) -> None:
        try:
            self._advance(probe, next_step, step_time)
        except Exception as exc:  # a profiler failure must never stop the training
            log.exception("optwatch: profiler window failed; training goes on")
            self._abandon(probe, f"{type(exc).__name__}: {exc}")
        self._note_idle()

    @property
    def _summarising(self) -> bool:
        """The last window's summary is still being made, on its thread."""
        return self._worker is not None and self._worker.is_alive()

    def _idle_now(self) -> frozenset[str]:
        """The step's end, while no window is planned, requested or running: most steps then need no
        plugin at their end, which makes them cheapest (``ProbePlugin.between_detail_steps``)."""
        planned = self._window is not None or self._requests or self._due is not None
        # (and not while the budget is held: the step's end that lets it go must still come, else the
        # governor was left out of every step after the first profile)
        held = self._held_last or (self._probe is not None and self._probe.budget_held)
        if not (planned or self._summarising or held):
            return frozenset({"after_step"})
        return frozenset()

    def _note_idle(self) -> None:
        idle = self._idle_now()
        if idle != self.idle_callbacks:
            self.idle_callbacks = idle
            if self._probe is not None:
                self._probe.retabulate()

    def _advance(self, probe: ProbeContext, next_step: int, step_time: float | None) -> None:
        window = self._window
        if window is not None:
            if self._recording:
                if not torch.autograd.profiler._is_profiler_enabled:
                    # The script's own profiler ran meanwhile and ended the profiling session (there is one
                    # per process): exporting what is left of ours crashes the process in native code.
                    self._abandon(probe, _TAKEN_OVER, stop=False)
                    return
                self._wall_s += step_time or 0.0
                if next_step > window.last:
                    self._finish(probe, window, window.last)
            elif next_step >= window.first:
                self._record(probe, window)
            return
        if self._requests:
            with self._lock:
                steps, reason = self._requests.popleft()
            self._plans = sorted([*self._plans, Window(next_step + 1, steps, reason)])
        if self._worker is not None and self._worker.is_alive():
            self._due = next_step + 1  # one window at a time: the last one is still being summarised
            return
        plan = self._plans[0] if self._plans and self._plans[0].first - 1 <= next_step else None
        if plan is None:
            self._due = self._next_due()
            return
        self._plans.pop(0)
        if plan.first < next_step:  # late (a previous window was still being summarised): keep a warm-up step
            plan = Window(next_step + 1, plan.steps, plan.reason)
        if plan.reason == "periodic" and self._period:  # the next a whole period after this one's real start
            self._plans = sorted([*self._plans, Window(plan.first + self._period, plan.steps, "periodic")])
        self._due = self._next_due()
        self._window = plan
        self._profile = self._new_profile()
        self._profile.prepare_trace()
        if plan.first <= next_step:
            self._record(probe, plan)

    def _record(self, probe: ProbeContext, window: Window) -> None:
        self._profile.start_trace()
        self._recording = True
        self._wall_s = 0.0
        self._scopes = ModuleScopes(probe.find_model()).install()
        probe.publish(
            [
                protocol.make_record(
                    protocol.HOTSPOTS,
                    probe.rank,
                    status="profiling",
                    steps=[window.first, window.last],
                    reason=window.reason,
                )
            ]
        )

    def _finish(self, probe: ProbeContext, window: Window, last: int, partial: bool = False) -> None:
        if self._scopes is not None:
            self._scopes.remove()
            self._scopes = None
        profile, self._profile = self._profile, None
        self._window = None
        self._recording = False
        profile.stop_trace()
        summary = {
            "status": "done",
            "steps": [window.first, last],
            "reason": window.reason,
            "wall_s": round(self._wall_s, 6) if self._wall_s > 0 else None,
            "partial": partial,
        }
        self._worker = threading.Thread(
            target=self._publish, args=(probe, profile, summary), name="optwatch-profiler", daemon=True
        )
        self._worker.start()

    def _abandon(self, probe: ProbeContext, error: str, stop: bool = True) -> None:
        window = self._window
        if self._scopes is not None:
            self._scopes.remove()
            self._scopes = None
        if stop and self._recording and self._profile is not None:
            try:
                self._profile.stop_trace()
            except Exception:
                pass
        self._window = self._profile = None
        self._recording = False
        steps = [window.first, window.last] if window is not None else None
        probe.publish([protocol.make_record(protocol.HOTSPOTS, probe.rank, status="failed", steps=steps, error=error)])

    def _new_profile(self) -> Any:
        from torch.profiler import ProfilerActivity, profile, supported_activities

        # Kineto logs every start and stop on stderr, which is the script's; the user can set it back.
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        activities = [ProfilerActivity.CPU]
        # CUDA only when the script uses it: asking otherwise would create a CUDA context.
        self._device_used = (
            torch.cuda.is_available()
            and torch.cuda.is_initialized()
            and ProfilerActivity.CUDA in supported_activities()
        )
        if self._device_used:
            activities.append(ProfilerActivity.CUDA)
        return profile(activities=activities, record_shapes=True)

    def _next_due(self) -> int | None:
        """The boundary at which the earliest plan is prepared."""
        return self._plans[0].first - 1 if self._plans else None

    # --- the summary, on a background thread ------------------------------------------------------------
    def _publish(self, probe: ProbeContext, profile: Any, summary: dict[str, Any]) -> None:
        assert self._traces is not None
        first, last = summary["steps"]
        raw: Path | None = None
        try:
            raw = self._traces.raw_path(first, last)
            profile.export_chrome_trace(str(raw))
            job = {
                "raw": str(raw),
                "root": str(self._traces.root),
                "run_id": probe.run_id,
                "rank": probe.rank,
                "first": first,
                "last": last,
                "wall_s": summary["wall_s"],
                "device_used": self._device_used,
            }
            summary.update(_summarise(job))
        except Exception as exc:
            log.exception("optwatch: could not summarise the profiler window")
            summary.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if raw is not None:
                raw.unlink(missing_ok=True)
        probe.publish([protocol.make_record(protocol.HOTSPOTS, probe.rank, **summary)])


def _summarise(job: dict[str, Any]) -> dict[str, Any]:
    """Summarise a window in a helper process (no GIL shared with training); here if that fails."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the helper imports this optwatch
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "optwatch.probe.traces", json.dumps(job)],
            env=env,
            capture_output=True,
            text=True,
            timeout=HELPER_TIMEOUT_S,
        )
        if done.returncode == 0:
            return json.loads(done.stdout.strip().splitlines()[-1])
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    log.warning("optwatch: the trace summary helper failed (%s); summarising in the training process", reason)
    return summarise_window(job)


def profiler_of(probe: Any) -> ProfilerPlugin | None:
    """The probe's profiler plugin, for callers such as the control channel."""
    return next((plugin for plugin in probe.plugins if isinstance(plugin, ProfilerPlugin)), None)
