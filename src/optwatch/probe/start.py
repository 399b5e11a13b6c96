"""The one place where a training process's probe is built: its run, its hub, its plugins.

``start_probe`` reads what ``optwatch run`` left in the environment (the run directory, the options); in a
script started with plain ``python`` that calls ``optwatch.watch`` it makes a run of its own and starts
its hub. A Python process that the script starts (and that inherits this environment) is a run of its
own too, never a second rank 0 of this one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from types import FrameType

from optwatch import hub, launchers
from optwatch.options import (
    ENV_HUB,
    ENV_OUTPUT_PIPES,
    ENV_PROBE_PID,
    ENV_RUN_DIR,
    ENV_RUN_ID,
    ENV_TOKEN,
    ProbeOptions,
)
from optwatch.probe import notebook
from optwatch.probe.channel import Channel
from optwatch.probe.controls import ControlPlugin
from optwatch.probe.forward_check import ForwardCheckPlugin
from optwatch.probe.grads import GradientPlugin
from optwatch.probe.output import OutputKeeper
from optwatch.probe.plugin import ProbePlugin
from optwatch.probe.probe import Probe
from optwatch.probe.profiler import ProfilerPlugin
from optwatch.probe.telemetry import TelemetryPlugin
from optwatch.probe.waiting import WaitingPlugin
from optwatch.protocol import INTERRUPTED, STOPPED_BY_REQUEST, error_line
from optwatch.wire import runtime
from optwatch.wire.logs import pipes_from_env

log = logging.getLogger(__name__)


def build_plugins(options: ProbeOptions) -> list[ProbePlugin]:
    """The plugins, in the order their callbacks run."""
    profiler = ProfilerPlugin(options)  # always there for `p`; idle, it costs one comparison per step
    plugins: list[ProbePlugin] = [ControlPlugin(options.controls, profile=profiler.request_window), TelemetryPlugin()]
    if options.forward_check != "off":
        plugins.append(ForwardCheckPlugin(always=options.forward_check == "always"))
    plugins.append(profiler)
    if options.grad_every > 0:
        plugins.append(GradientPlugin(options))
    plugins.append(WaitingPlugin())  # (the sampler's only: nothing at a step)
    return plugins


def launch_run_id(script: str, launch: launchers.Launch | None) -> str | None:
    """The run id every local rank of one launch (torchrun, srun) agrees on, or None outside a launch."""
    if launch is None:
        return None
    import hashlib

    stem = runtime.new_run_id(script).rsplit("-", 3)[0]
    return f"{stem}-{hashlib.sha1(launch.job_key.encode()).hexdigest()[:10]}"


def _hub_starter(run_dir: Path, run_id: str, options: ProbeOptions, world_size: int, token: str | None):
    def start(wait: bool = True) -> None:
        hub.spawn(
            run_dir,
            run_id,
            world_size=world_size,
            listen=options.listen,
            token=token,
            job_pid=os.getpid(),
            script=options.script,
            argv=options.argv,
            runs_dir=options.runs_dir,
            wait=wait,
        )

    return start


def _hub_alive(run_dir: Path) -> bool:
    """Whether the run directory's hub is running (``optwatch run`` starts it before the training)."""
    info = runtime.read_job_info(run_dir)
    return info is not None and info.hub_pid is not None and runtime.pid_alive(info.hub_pid)


def make_probe(rank: int | None = None, world_size: int | None = None) -> Probe:
    # A process the script started inherits this environment: it is a run of its own.
    ours = os.environ.get(ENV_PROBE_PID) in (None, str(os.getpid()))
    in_a_run = ours and ENV_RUN_DIR in os.environ
    if ours:
        options = ProbeOptions.from_env()
    else:
        options = ProbeOptions(script=sys.argv[0] if sys.argv else "", argv=list(sys.argv[1:]))
    launch = launchers.detect()
    if rank is None:
        rank = launch.rank if launch is not None else int(os.environ.get("RANK", "0"))
    if world_size is None:
        world_size = launch.world_size if launch is not None else int(os.environ.get("WORLD_SIZE", "1"))
    remote = os.environ.get(ENV_HUB) if ours and rank != 0 else None
    token = os.environ.get(ENV_TOKEN)
    if in_a_run:
        run_id = os.environ.get(ENV_RUN_ID) or runtime.new_run_id(options.script)
        run_dir = runtime.ensure_private_dir(Path(os.environ[ENV_RUN_DIR]))
        if token is None and (run_dir / "token").exists():
            token = (run_dir / "token").read_text().strip()
    else:
        named = notebook.notebook_name() if launch is None else None
        if named is not None:  # (a notebook's kernel runs ipykernel_launcher: the run is named after the notebook)
            options.script, options.argv = named, []
        run_id = launch_run_id(options.script, launch) or runtime.new_run_id(options.script)
        run_dir = runtime.make_run_dir(run_id)
        if launch is None:
            _say_a_requested_stop_in_one_line()
            shell = notebook.running_shell()
            if shell is not None:
                notebook.say_a_requested_stop_in_one_line(shell)  # (IPython never calls sys.excepthook)
        if options.listen and token is None:
            token = runtime.new_token()
    starter = _hub_starter(run_dir, run_id, options, world_size, token) if rank == 0 and remote is None else None
    if starter is not None and not _hub_alive(run_dir):
        # A plain `python` run (or a job restarted in its run directory): its hub starts with it. Without
        # one the training goes on unwatched (the channel tries again); it is never the script's error.
        try:
            starter()
        except (hub.HubError, OSError) as exc:
            log.warning("optwatch: no hub for this run (%s); training goes on, unwatched for now", exc)
        else:
            said = runtime.where_to_attach(run_dir) if options.listen and not in_a_run else None
            if said:  # (a launch's rank 0 with --listen: `optwatch run` says it itself)
                print(said, file=sys.stderr, flush=True)
    os.environ[ENV_PROBE_PID] = str(os.getpid())
    if options.capture_output:
        OutputKeeper(run_dir, rank, pipes_from_env(os.environ.pop(ENV_OUTPUT_PIPES, ""))).start()
    channel = Channel(
        run_dir,
        rank=rank,
        remote_hub=runtime.tcp_address(remote) if remote else None,
        token=token,
        respawn=(lambda: starter(wait=False)) if starter is not None else None,
    )
    plugins = build_plugins(options)
    return Probe(run_dir, run_id, options, channel, plugins, rank=rank, world_size=world_size)


def _say_a_requested_stop_in_one_line() -> None:
    """A script run with plain ``python`` that calls ``optwatch.watch``: ``optwatch ctl RUN stop`` ends it with
    a KeyboardInterrupt raised in optwatch's hooks, which the interpreter printed as 30 lines of traceback
    through them, an optwatch crash to the eye. One line instead, as under ``optwatch run``; the exit status
    is the interrupt's (130) all the same, and any other exception goes to the hook the script has."""
    previous = sys.excepthook

    def excepthook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt) and str(value).startswith(STOPPED_BY_REQUEST):
            print(f"{value}: the steps before it are complete", file=sys.stderr, flush=True)
            return
        previous(kind, value, traceback)

    sys.excepthook = excepthook


_current: Probe | None = None
_current_lock = threading.Lock()


def current() -> Probe | None:
    """This process's probe, if it has one (a forked child has none of its own)."""
    probe = _current
    return probe if probe is not None and probe.owner_pid == os.getpid() else None


def start_probe(rank: int | None = None, world_size: int | None = None) -> Probe:
    """The process's probe, started on first use from the environment `optwatch run` prepared."""
    global _current
    with _current_lock:
        if current() is not None:
            return _current  # type: ignore[return-value]
        probe = make_probe(rank, world_size).start()
        import atexit

        atexit.register(_close_at_exit, probe, _main_module_frame())
        _current = probe
        return probe


def _main_module_frame() -> FrameType | None:
    """The frame that runs the script's own module code in the main thread (``python script.py``'s, ``-m``'s,
    ``-c``'s), kept for ``_close_at_exit``; None where there is none (an embedded interpreter)."""
    main = getattr(sys.modules.get("__main__"), "__dict__", None)
    frame = sys._current_frames().get(threading.main_thread().ident)
    found = None
    while frame is not None:  # (the outermost one: runpy's frames are above ``-m``'s)
        if frame.f_code.co_name == "<module>" and frame.f_globals is main:
            found = frame
        frame = frame.f_back
    return found


def _close_at_exit(probe: Probe, main_frame: FrameType | None) -> None:
    """The end record of a process whose probe ends with the interpreter (plain ``python`` calling
    ``optwatch.watch``; under ``optwatch run`` the launcher has closed it already, with the script's exit code).
    It said no exit code at all, and the hub read that as "finished (exit 0)", after an uncaught exception
    (exit 1) or ``sys.exit(3)`` alike. Now it says what an exit handler can know (docs/records.md): the
    script's code ran to its end (0), or an uncaught exception ended it (1, with its line; 130 for a Ctrl-C
    or a ``stop``); else, a ``SystemExit`` whose code the interpreter keeps from exit handlers, none (null)."""
    if probe.closed:
        return
    try:
        exit_code, error = _how_the_script_ended(main_frame)
    except Exception:  # (never the script's exit's business)
        exit_code, error = None, None
    probe.close(exit_code, error=error)


def _how_the_script_ended(main_frame: FrameType | None) -> tuple[int | None, str | None]:
    """(exit code, error line) from what the interpreter leaves for exit handlers: the script's module frame,
    stopped at its last instruction, and ``sys.last_value``, which it sets for an uncaught exception alone."""
    if main_frame is None:
        return None, None
    import dis

    returns = {i.offset for i in dis.get_instructions(main_frame.f_code) if i.opname.startswith("RETURN_")}
    if main_frame.f_lasti in returns:
        return 0, None  # its last statement done: python exits 0 (an exception in a thread leaves that so)
    uncaught = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if isinstance(uncaught, BaseException) and _went_through(uncaught, main_frame):
        if isinstance(uncaught, KeyboardInterrupt):
            return INTERRUPTED, None  # (python ends on SIGINT: 130 in a shell, as `optwatch run` says)
        return 1, error_line(uncaught)
    return None, None  # a SystemExit (sys.exit(N)), or a frame left by what the interpreter does not say


def _went_through(exc: BaseException, frame: FrameType) -> bool:
    """Whether ``exc`` was raised through ``frame`` (not an exception of some earlier prompt or debugger)."""
    traceback = exc.__traceback__
    while traceback is not None:
        if traceback.tb_frame is frame:
            return True
        traceback = traceback.tb_next
    return False
