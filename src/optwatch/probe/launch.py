"""Entry point of the instrumented training process: start the probe, then run the user's script as __main__.

The script sees what ``python script.py`` gives it: ``sys.argv``, an absolute ``__file__``, its own directory
(symbolic links resolved) as ``sys.path[0]``, and a traceback that starts at its own code.
"""

from __future__ import annotations

import optwatch

optwatch._drop_start_directory()  # (before optwatch's imports; the script's directory goes in by run_script)

import builtins  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from optwatch import protocol  # noqa: E402
from optwatch.launchers import Launch, module_of, module_script  # noqa: E402

FOLLOWER_WAIT_S = 10.0


def _script_frames(traceback, path: str):
    """The traceback from the script's first frame on (the launcher's and runpy's frames left out)."""
    start = traceback
    while start is not None and start.tb_frame.f_code.co_filename != path:
        start = start.tb_next
    return start or traceback


def _new_main(**attributes) -> types.ModuleType:
    """A fresh ``__main__`` module, as the interpreter makes it, in ``sys.modules`` under both its names:
    ``multiprocessing`` (imported before the script, by optwatch and torch) had named the launcher
    ``__mp_main__``, and what spawn and forkserver children sent back (a DataLoader worker's batch of a class
    the script defines) was looked for there."""
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, **attributes)  # (the module, as in python's __main__; not its dict)
    if sys.version_info < (3, 14):  # (the interpreter's __main__ starts with one; 3.14's makes it on demand)
        main.__dict__["__annotations__"] = {}
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main
    return main


def _run_as_main(path: str) -> None:
    """Run the file at ``path`` as the interpreter runs a script: a fresh ``__main__`` module, its code
    compiled under its absolute path (``runpy.run_path`` would also set ``sys.argv[0]`` to that path)."""
    from importlib.machinery import SourceFileLoader

    main = _new_main(
        __file__=path, __cached__=None, __loader__=SourceFileLoader("__main__", path), __package__=None, __spec__=None
    )
    with io.open_code(path) as source:
        code = compile(source.read(), path, "exec", dont_inherit=True)
    exec(code, main.__dict__)


def _module_details(module: str) -> tuple[Any, Any]:
    """(spec, code) of ``python -m module``: a package runs its ``__main__`` (a namespace package's too). Raises
    ImportError with python's words."""
    import runpy

    _, spec, code = runpy._get_module_details(module)  # (what python -m itself uses)
    return spec, code


def _run_module_as_main(spec: Any, code: Any) -> None:
    """Run a module's code as ``python -m`` does, in a fresh ``__main__`` (see ``_new_main``)."""
    main = _new_main(
        __file__=spec.origin, __cached__=spec.cached, __loader__=spec.loader, __package__=spec.parent, __spec__=spec
    )
    exec(code, main.__dict__)


def _trimming(hook: Callable[..., Any], path: str) -> Callable[..., Any]:
    """``hook`` given the traceback from the script's first frame on: for an exception the interpreter itself
    reports (an uncaught Ctrl-C, which must end the process as python's does)."""

    def trimmed(kind, value, traceback):
        traceback = _script_frames(traceback, path)
        if value is not None:  # (the interpreter's hook prints the exception's own traceback)
            value = value.with_traceback(traceback)
            sys.last_value, sys.last_traceback = value, traceback
            if sys.version_info >= (3, 12):
                sys.last_exc = value
        hook(kind, value, traceback)

    return trimmed


def _report(exc: BaseException, path: str) -> None:
    """An exception that ended the script, as the interpreter reports it: through the script's own excepthook
    if it set one, from the script's first frame, and kept in ``sys.last_value`` for its atexit handlers."""
    trimmed = _script_frames(exc.__traceback__, path)
    if trimmed is exc.__traceback__ and isinstance(exc, SyntaxError) and exc.filename == path:
        trimmed = None  # the script does not compile: python shows the line and no traceback at all
    exc = exc.with_traceback(trimmed)
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, trimmed
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    sys.excepthook(type(exc), exc, trimmed)


def ended_on_a_requested_stop(exc: BaseException) -> bool:
    """Whether the script ended on optwatch's ``stop``: its KeyboardInterrupt let through, or an exit raised
    while handling it (``except KeyboardInterrupt: save(); sys.exit(130)``; Lightning's graceful shutdown
    exits 1)."""
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, KeyboardInterrupt) and str(cause).startswith(protocol.STOPPED_BY_REQUEST):
            return True
        cause = cause.__context__
    return False


def run_script(script: str, args: list[str]) -> int:
    from optwatch.probe.start import start_probe

    module = module_of(script)
    if module is not None:
        sys.path.insert(0, os.getcwd())  # (python -m's first entry: the directory it is started in)
        try:
            spec, code = _module_details(module)
        except ImportError as exc:
            print(f"{sys.executable}: {exc}", file=sys.stderr)  # (as python -m says it)
            return 1
        path = spec.origin
        sys.argv = [path, *args]
    else:
        path = os.path.abspath(script)
        sys.argv = [script, *args]
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))  # (python script.py's first entry)
    probe = start_probe()
    exit_code: int = 0
    stopped_threads = _said_stops_in_threads()
    try:
        if module is not None:
            _run_module_as_main(spec, code)
        else:
            _run_as_main(path)
    except SystemExit as exc:
        exit_code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exit_code and ended_on_a_requested_stop(exc):
            exit_code = protocol.INTERRUPTED  # stopped as asked, whatever code the script's handling exits with
        if exit_code == 0 and stopped_threads:
            exit_code = protocol.INTERRUPTED  # (its training thread was stopped as asked: `sys.exit(main())`)
            raise SystemExit(exit_code) from None
        raise
    except Exception as exc:
        exit_code = 1
        probe.close(exit_code, error=protocol.error_line(exc))
        _report(exc, path)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        exit_code = protocol.INTERRUPTED  # Ctrl-C, or optwatch's `stop`
        if not ended_on_a_requested_stop(exc):
            # The interpreter reports it and ends on SIGINT, as python's does; from the script's frames on.
            sys.excepthook = _trimming(sys.excepthook, path)
            raise
        # Asked for, not a failure: one line instead of a traceback through the framework and optwatch's hooks
        # (the script's own handling of the interrupt has run).
        print(f"{exc}: the steps before it are complete", file=sys.stderr, flush=True)
        sys.exit(protocol.INTERRUPTED)
    except BaseException as exc:  # (a class of the script's own: python reports it, and exits 1)
        exit_code = 1
        probe.close(exit_code, error=protocol.error_line(exc))
        _report(exc, path)
        sys.exit(1)
    finally:
        if stopped_threads and exit_code == 0:
            exit_code = protocol.INTERRUPTED  # (the training thread was stopped as asked, the script ended after)
        probe.close(exit_code)  # (its end record says so)
    return exit_code


def _said_stops_in_threads() -> list[str]:
    """A script that trains in a thread of its own: optwatch's ``stop`` ends that thread, where the interpreter
    printed the interrupt's traceback through optwatch's hooks ("Exception in thread trainer"). It is said in
    one line instead, as in the main thread, and listed (the run then ends with 130). A hook the script sets
    itself takes over."""
    import threading

    stopped: list[str] = []
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        value = args.exc_value
        if value is not None and args.exc_type is KeyboardInterrupt and ended_on_a_requested_stop(value):
            name = args.thread.name if args.thread is not None else "?"
            print(f"{value}: the steps before it are complete (thread {name})", file=sys.stderr, flush=True)
            stopped.append(name)
            return
        before(args)

    threading.excepthook = hook
    return stopped


def run_as_rank(launch: Launch, script: str, args: list[str], viewer: list[str] | None = None) -> int:
    """Run the script as one rank of a launch (torchrun, srun): instrumented, in this process, with no
    dashboard. Rank 0 starts the job's hub with its probe, then, for ``viewer`` (``--headless``, ``--record``
    and their settings), the job's one viewer (``optwatch.follow``), which it waits for (a few seconds at
    most) once the script is done, so that the final summary comes before the launcher returns."""
    from optwatch.probe.start import start_probe

    probe = start_probe(launch.rank, launch.world_size)
    follower = None
    if launch.rank == 0 and viewer is not None:
        follower = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "optwatch.follow",
                f"--run-dir={probe.run_dir}",
                f"--job-pid={os.getpid()}",
                f"--world-size={launch.world_size}",
                *viewer,
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C stops the ranks through the launcher; the viewer sees them end
        )
    try:
        return run_script(script, args)
    except (KeyboardInterrupt, SystemExit) as exc:
        if launch.launcher != "torchrun" or launch.world_size < 2 or not ended_on_a_requested_stop(exc):
            raise
        # torchrun's agent takes a rank's non-zero exit for a failure: it would end the other ranks at once,
        # in their own handling of the stop (rank 0 saving its checkpoint), or restart the job. Every rank
        # stops at the same step, so each ends as a finished worker; the hub and the viewers say "stopped".
        if launch.rank == 0:
            print(
                "optwatch: stopped by request: each rank exits 0, so that torchrun lets every rank finish "
                "its own handling of the stop",
                file=sys.stderr,
                flush=True,
            )
        return 0
    finally:
        if follower is not None:
            try:
                follower.wait(FOLLOWER_WAIT_S)
            except subprocess.TimeoutExpired:
                pass  # it ends by itself once this process is gone


def main() -> None:
    if len(sys.argv) < 2 or (sys.argv[1] == "-m" and len(sys.argv) < 3):
        sys.exit("usage: python -m optwatch.probe.launch SCRIPT|-m MODULE [ARGS...]")
    if sys.argv[1] == "-m":
        sys.exit(run_script(module_script(sys.argv[2]), sys.argv[3:]))
    sys.exit(run_script(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
