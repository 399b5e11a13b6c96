"""The `optwatch` command: run, attach, ls, ctl, replay; runs, compare and export in ``runs_cli``."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import shlex
import signal
import sys
import time
import zipfile
from pathlib import Path

from optwatch import launchers, runs_cli
from optwatch.runs import runs_root

SUBCOMMANDS = ("run", "attach", "ls", "ctl", "replay", "runs", "compare", "export")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _checked(parse):
    """An argparse type from a parser that raises ValueError with a message for the user."""

    def check(text: str):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    check.__name__ = parse.__name__
    return check


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {text!r}")
    return value


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more MiB, got {text!r}")
    return value


def _percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentage such as 0.5, got {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage from 0 to 100, got {text!r}")
    return value


def _token_arguments(command: argparse.ArgumentParser) -> None:
    given = command.add_mutually_exclusive_group()
    given.add_argument(
        "--token-file",
        metavar="PATH",
        help="read the job's token for HOST:PORT from PATH (else from $OPTWATCH_TOKEN; `optwatch ls` on the "
        "job's machine shows it)",
    )
    given.add_argument("--token", help="the token itself: other users can read it in `ps`; prefer --token-file")


def _web_arguments(command: argparse.ArgumentParser) -> None:
    web = command.add_argument_group("the dashboard in a browser")
    web.add_argument(
        "--web", action="store_true", help="serve the dashboard to a browser, at a URL with a token (Ctrl+C stops it)"
    )
    web.add_argument(
        "--port", metavar="P", type=_port, help="the page's port (default 8000, or a free one if taken; 0: a free one)"
    )
    web.add_argument(
        "--web-host",
        metavar="HOST",
        help="serve on HOST instead of 127.0.0.1: anyone who reaches it can try the token, which crosses the network "
        "in clear (plain HTTP); from another machine forward the port over SSH instead (ssh -L P:localhost:P HOST)",
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A mistake on the command line in one line, with where to read more: argparse's usage before it
        (8 lines for `optwatch run`) buried the error."""
        # ARGS (REMAINDER) counts as required to argparse, though a script may well take no arguments.
        if message.startswith("the following arguments are required:"):
            message = message.replace(", ARGS", "")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from optwatch.diagnose.gradients import parse_override
    from optwatch.options import FORWARD_CHECK_MODES, ProbeOptions, parse_profile_at, parse_profile_every

    parser = _Parser(
        prog="optwatch",
        description="Live diagnostics for PyTorch training, in the terminal.",
        epilog="`optwatch SCRIPT [ARGS...]` is short for `optwatch run SCRIPT [ARGS...]`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # No abbreviations: argparse reads every argument, the script's too, before SCRIPT's REMAINDER takes
    # them, and a script's `--n 72` was taken for an ambiguous prefix of optwatch's own flags.
    run = commands.add_parser("run", help="run a training script under optwatch", allow_abbrev=False)
    run.add_argument("--headless", action="store_true", help="no dashboard: pass output through, print summaries")
    run.add_argument("--record", metavar="PATH", help="write every record as a JSON line to PATH")
    run.add_argument(
        "--no-record",
        action="store_true",
        help="keep no record of the run (by default it goes to ./optwatch-runs/RUN_ID/, or $OPTWATCH_RUNS_DIR)",
    )
    run.add_argument(
        "--summary-every",
        metavar="S",
        type=_positive_float,
        default=5.0,
        help="headless summary interval (s, default %(default)g)",
    )
    run.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="also accept viewers over TCP (token required; port 0 picks a free one; the stream uses PORT+1)",
    )
    run.add_argument(
        "--nproc-per-node", metavar="N", type=_positive_int, help="run N ranks with torchrun (DDP) under one dashboard"
    )
    run.add_argument(
        "--control",
        metavar="COMMAND@STEP",
        action="append",
        default=[],
        help="apply COMMAND so it is in effect for step STEP (repeatable), e.g. lr=0.001@20, amp=on@30",
    )
    run.add_argument(
        "--profile-at",
        metavar="START:COUNT",
        type=_checked(parse_profile_at),
        action="append",
        default=[],
        help="profile steps START..START+COUNT-1 (COUNT defaults to 5; may be repeated)",
    )
    run.add_argument(
        "--profile-every",
        metavar="N[:COUNT]",
        type=_checked(parse_profile_every),
        help="profile COUNT steps (default 3) every N steps, at most 10%% of the steps",
    )
    run.add_argument(
        "--budget",
        metavar="PERCENT",
        type=_percent,
        default=ProbeOptions.budget * 100,
        help="share of the step time optwatch may take (default %(default)g%%): above it the per-layer statistics, "
        "phase timing and forward check run on every Nth step only (0: every step, whatever it costs)",
    )
    grads = run.add_argument_group("gradient diagnostics (docs/gradients.md)")
    grads.add_argument(
        "--grad-every",
        metavar="N",
        type=_count,
        default=ProbeOptions.grad_every,
        help="per-layer gradient statistics every N detail steps (default %(default)s; 0: off)",
    )
    grads.add_argument(
        "--grad-threshold",
        metavar="NAME=VALUE",
        type=_checked(parse_override),
        action="append",
        default=[],
        help="change an alert threshold, e.g. exploding_factor=20 (repeatable)",
    )
    grads.add_argument(
        "--grad-update-mb",
        metavar="MB",
        type=_megabytes,
        default=ProbeOptions.grad_update_mb,
        help="memory for the weight copy behind update ratios (default %(default)g; 0: no update ratios)",
    )
    grads.add_argument(
        "--forward-check",
        choices=FORWARD_CHECK_MODES,
        default="auto",
        help="check module outputs for NaN/Inf, to name the module where one is born: from the first non-finite "
        "loss or gradient norm on (auto, the default), on every step from the first whatever --budget (always, at the "
        "cost of a hook on every module call), or never (off)",
    )
    grads.add_argument(
        "--no-forward-check",
        dest="forward_check",
        action="store_const",
        const="off",
        help="the same as --forward-check off",
    )
    _web_arguments(run)
    run.add_argument("script", metavar="SCRIPT", help="the training script, or -m MODULE (as python -m runs it)")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the script")

    attach = commands.add_parser("attach", help="watch a running job (all its ranks), with its recent history")
    attach.add_argument("target", nargs="?", metavar="RUN", help="run id (or a unique prefix), or HOST:PORT")
    _token_arguments(attach)
    attach.add_argument("--headless", action="store_true", help="no dashboard: print summaries")
    attach.add_argument("--record", metavar="PATH", help="write every record as a JSON line to PATH")
    attach.add_argument("--duration", metavar="S", type=_positive_float, help="stop after S seconds (exit 0)")
    attach.add_argument(
        "--summary-every",
        metavar="S",
        type=_positive_float,
        default=5.0,
        help="headless summary interval (s, default %(default)g)",
    )
    _web_arguments(attach)

    ctl = commands.add_parser("ctl", help="steer a running job: lr=V, lr*=F, lr[G]=V, amp=on|off, ...")
    ctl.add_argument("target", metavar="RUN", help="run id (or a unique prefix), or HOST:PORT")
    ctl.add_argument("commands", nargs="+", metavar="COMMAND")
    _token_arguments(ctl)
    ctl.add_argument("--no-wait", action="store_true", help="do not wait for the job to apply the commands")
    ctl.add_argument(
        "--timeout", metavar="S", type=_positive_float, default=15.0, help="how long to wait (s, default %(default)g)"
    )

    ls = commands.add_parser("ls", help="list running jobs of this user on this machine")
    ls.add_argument("--json", action="store_true", help="print a JSON list")

    replay = commands.add_parser("replay", help="open a recorded run in the dashboard")
    replay.add_argument(
        "path", metavar="RUN", help="run id (or a unique prefix, see `optwatch runs`), run directory or record file"
    )
    replay.add_argument("--headless", action="store_true", help="print the final summary instead")
    runs_cli.add_commands(commands)
    for command in commands.choices.values():
        command.set_defaults(command_parser=command)  # a mistake in a command's options is said with its name
    parser.set_defaults(run_options=set(run._option_string_actions))
    return parser


def _misplaced_option(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """What to say when the command line starts with an option: `optwatch --headless train.py`."""
    option = argv[0].partition("=")[0]
    if option in parser.get_default("run_options"):
        return f"{option} is an option of `optwatch run`, and goes after it: optwatch run {shlex.join(argv)}"
    return (
        f"unknown option {option}: options go after the command, e.g. optwatch run --headless SCRIPT "
        "(`optwatch --help` lists the commands)"
    )


def _mistyped_command(word: str) -> str | None:
    """The command ``word`` is a slip for (`optwatch rnu`), where it names no file and reads as a command
    rather than a path: else it is a script, run or said missing as any."""
    if "/" in word or "." in word or os.path.exists(word):
        return None
    return next(iter(difflib.get_close_matches(word, SUBCOMMANDS, n=1)), None)


def _keep_a_leading_double_dash(args: argparse.Namespace, argv: list[str]) -> None:
    """argparse drops a ``--`` right after SCRIPT (``optwatch run train.py -- --lr 1``): the script's, as
    ``python train.py -- --lr 1`` gives it, put back."""
    script_args = getattr(args, "args", None)
    if script_args is None or getattr(args, "script", None) is None:
        return
    at = len(argv) - len(script_args) - 1  # where "--" stands, if argparse took one away
    if at >= 1 and argv[at] == "--" and argv[at - 1] == args.script:
        args.args = ["--", *script_args]


def _module_as_script(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``optwatch run [OPTIONS] -m package.module ARGS``: ``-m`` where SCRIPT goes, with its module, made one
    argument, ``-m package.module`` (argparse takes an argument with a space for a positional one)."""
    if not argv or argv[0] != "run":
        return argv
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    index = 1
    while index < len(argv):
        token = argv[index]
        if token == "-m":
            if index + 1 < len(argv):
                return [*argv[:index], launchers.module_script(argv[index + 1]), *argv[index + 2 :]]
            return argv
        action = run._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("-") else None
        if action is None:
            return argv  # SCRIPT, or a mistake argparse will name
        index += 1 if action.nargs == 0 or "=" in token else 2
    return argv


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "-m":
        argv.insert(0, "run")  # (`optwatch -m pkg.train`, as `optwatch train.py`)
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        meant = _mistyped_command(argv[0])
        if meant:
            print(f"optwatch: no such script: {argv[0]} (did you mean `optwatch {meant}`?)", file=sys.stderr)
            return 2
        argv.insert(0, "run")
    parser = build_parser()
    argv = _module_as_script(argv, parser)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        print(f"optwatch: {_misplaced_option(parser, argv)}", file=sys.stderr)
        return 2
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    _keep_a_leading_double_dash(args, argv)
    if args.command is None:
        parser.print_help()
        return 2
    from optwatch.wire.runtime import RuntimeDirError

    handler = {
        "run": cmd_run,
        "attach": cmd_attach,
        "ctl": cmd_ctl,
        "ls": cmd_ls,
        "replay": cmd_replay,
        "runs": runs_cli.cmd_runs,
        "compare": cmd_compare,
        "export": runs_cli.cmd_export,
    }[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # here, where a reader gone is a quiet end, not at the interpreter's exit
        return code
    except (UsageError, RuntimeDirError, runs_cli.RunError) as exc:
        print(f"optwatch: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `optwatch runs | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 0


class UsageError(Exception):
    """A problem with what the user asked for, reported in one line."""


def _open_writer(path: str | None):
    from optwatch.store import RecordWriter

    if not path:
        return None
    try:
        return RecordWriter(path)
    except OSError as exc:
        raise UsageError(f"cannot record to {path}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` stands for is this machine's own (127.0.0.1, ::1, localhost)."""
    import ipaddress
    import socket

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return False  # "*", an interface name: ZeroMQ binds them to the network
    return bool(addresses) and all(ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addresses)


def _bindable_host(host: str) -> bool:
    """Whether ZeroMQ can bind ``host``: ``*``, a name or address that resolves, or an interface's name."""
    import socket

    if host == "*":
        return True
    try:
        socket.getaddrinfo(host, None)
        return True
    except (OSError, UnicodeError):
        return host in {name for _, name in socket.if_nameindex()}


def _say_where_to_attach(process) -> None:
    from optwatch.wire.runtime import where_to_attach

    said = where_to_attach(process.run_dir)
    if said:
        print(said, file=sys.stderr, flush=True)


def _warn_when_listening_beyond_loopback(listen: str) -> None:
    from optwatch.wire.runtime import tcp_address

    try:
        host, port = tcp_address(listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if not _bindable_host(host):
        raise UsageError(f"--listen {listen}: unknown host {host!r} (give an address of this machine, e.g. 127.0.0.1)")
    launch = launchers.detect()
    if not is_loopback(host) and (launch is None or launch.rank == 0):  # once per job, not once per rank
        first, second = (port, port + 1) if port else ("PORT", "PORT+1")
        print(
            f"optwatch: warning: --listen {listen} is reachable from the network, guarded by the token "
            f"alone (the traffic is encrypted, but anyone there can try); listen on 127.0.0.1 and forward "
            f"the ports over SSH instead (ssh -L {first}:localhost:{first} -L {second}:localhost:{second} HOST)",
            file=sys.stderr,
        )


def _check_scheduled_controls(scheduled_controls: list[str]) -> None:
    """A ``--control`` that cannot be read is a usage error; one whose command would be refused, a warning."""
    from optwatch import controls

    for scheduled in scheduled_controls:
        try:
            command, step = controls.parse_scheduled(scheduled)
        except controls.CommandError as exc:
            raise UsageError(str(exc)) from exc
        except Exception as exc:  # a bug in the parser: a usage error still, not a traceback
            raise UsageError(f"--control {scheduled[:80]!r} cannot be read: {type(exc).__name__}") from None
        try:
            controls.parse(command)
        except controls.CommandError as exc:
            # Not fatal: it is refused at its step, with an event record, like any bad command.
            print(f"optwatch: warning: --control {scheduled} will be refused: {exc}", file=sys.stderr)
        except Exception as exc:
            raise UsageError(f"--control {scheduled[:80]!r} cannot be read: {type(exc).__name__}") from None


def _probe_options(args: argparse.Namespace):
    from optwatch.diagnose.gradients import Thresholds
    from optwatch.options import ProbeOptions

    try:
        Thresholds().with_overrides(dict(args.grad_threshold))
    except ValueError as exc:
        raise UsageError(f"--grad-threshold: {exc}") from None
    return ProbeOptions(
        script=args.script,
        argv=args.args,
        listen=args.listen,
        controls=args.control,
        profile_at=args.profile_at,
        profile_every=args.profile_every,
        grad_every=args.grad_every,
        budget=args.budget / 100,
        grad_update_mb=args.grad_update_mb,
        grad_thresholds=dict(args.grad_threshold),
        forward_check=args.forward_check,
        runs_dir=None if args.no_record else str(runs_root()),
    )


def _check_script(script: str, args: list[str]) -> None:
    """A script to run, or the reason there is none, in words (`optwatch run python train.py` is a common
    first try: the interpreter is optwatch's to start). A module (``-m pkg.train``) is found as python -m
    finds it, in the training process: a missing one is said there, as python says it."""
    if launchers.module_of(script) is not None:
        return
    if os.path.isdir(script):
        raise UsageError(f"{script} is a directory, not a script")
    interpreter = os.path.basename(script).startswith("python")
    if os.path.isfile(script):
        with open(script, "rb") as source:
            interpreter = interpreter and source.read(4) == b"\x7fELF"
        if not interpreter and zipfile.is_zipfile(script):
            raise UsageError(f"{script} is a zip application: optwatch runs a script file (its __main__.py, unzipped)")
        if not interpreter:
            return
    if interpreter and args:
        raise UsageError(f"optwatch run takes the script, not the interpreter: optwatch run {shlex.join(args)}")
    raise UsageError(f"no such script: {script}")


def cmd_run(args: argparse.Namespace) -> int:
    from optwatch.options import ENV_OPTIONS, ENV_TOKEN

    _check_script(args.script, args.args)
    check_web_arguments(args)
    _headless_without_a_terminal(args)
    if args.listen:
        _warn_when_listening_beyond_loopback(args.listen)
    _check_scheduled_controls(args.control)
    options = _probe_options(args)

    launch = launchers.detect()
    if launch is not None:
        # A rank of a launch (torchrun, srun): instrument this process and run the script here; no dashboard.
        from optwatch.probe.launch import run_as_rank

        try:
            viewer = launchers.viewer_arguments(
                launch, args.headless, args.record, args.summary_every, nproc_per_node=args.nproc_per_node
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if viewer is not None and args.record:
            _open_writer(args.record).close()  # a path it cannot write is refused now, before the training
        os.environ.setdefault(ENV_OPTIONS, options.to_env())
        return run_as_rank(launch, args.script, args.args, viewer)

    from optwatch.hub import HubError
    from optwatch.session import ViewerSession
    from optwatch.supervisor import TrainingProcess
    from optwatch.wire import runtime

    writer = _open_writer(args.record)
    token = (os.environ.get(ENV_TOKEN) or runtime.new_token()) if args.listen else None
    process = TrainingProcess(
        args.script, args.args, options, nproc_per_node=args.nproc_per_node, token=token, keeps_stdin=args.headless
    )
    try:
        process.start()
    except HubError as exc:
        process.cleanup()
        raise UsageError(f"cannot start the job's hub: {exc}") from exc
    if args.listen:
        _say_where_to_attach(process)
    if args.web:
        try:
            serve_web(args, process.run_id)
        finally:
            if process.poll() is None:
                print(f"optwatch: left {process.run_id} running (pid {process.pid}); `optwatch attach` to watch it")
            else:
                process.cleanup()
        return process.exit_code() or 0
    session = ViewerSession.for_process(process, writer=writer, pass_output=args.headless)
    recorded = _where_recorded(options.runs_dir, process.run_id)
    try:
        if args.headless:
            from optwatch.headless import run_headless

            if recorded:
                print(recorded, file=sys.stderr, flush=True)
            return run_headless(session, summary_every_s=args.summary_every)
        return _run_dashboard(session, process, recorded)
    finally:
        session.close()
        if process.poll() is not None:
            process.cleanup()


def _where_recorded(runs_dir: str | None, run_id: str) -> str:
    """``the run is recorded in DIR``, where its hub began the record; else that it is not (a read-only or full
    runs directory said it was recorded, and nothing was)."""
    if not runs_dir:
        return ""
    from optwatch.runs import SUMMARY_NAME

    directory = Path(runs_dir) / run_id
    if (directory / SUMMARY_NAME).exists():
        return f"optwatch: the run is recorded in {directory}"
    return f"optwatch: warning: the run is not recorded: its hub cannot write in {runs_dir} (the training goes on)"


def cmd_compare(args: argparse.Namespace) -> int:
    _headless_without_a_terminal(args)  # (the table as text, where the dashboard would wait for keys for ever)
    return runs_cli.cmd_compare(args)


def _headless_without_a_terminal(args: argparse.Namespace) -> None:
    """No terminal to draw on (``nohup optwatch train.py > log &``, ``sbatch --wrap``, a pipe): the dashboard
    would wait for keys for ever, with the script's output in no log. Headless instead, said once."""
    if args.headless or getattr(args, "web", None) or launchers.detect() is not None:
        return
    if os.environ.get("TEXTUAL_DRIVER"):
        return  # a page of `--web`'s: Textual draws through its driver (textual-serve's pipes), not a terminal
    streams = {"stdin": sys.stdin, "stdout": sys.stdout, "stderr": sys.stderr}  # (Textual draws on stderr)
    which = next((name for name, stream in streams.items() if stream is None or not stream.isatty()), None)
    if which is None:
        return
    print(
        f"optwatch: no terminal for the dashboard ({which} is not one): headless instead"
        + (" (`optwatch attach` from a terminal shows the dashboard)" if args.command == "run" else ""),
        file=sys.stderr,
        flush=True,
    )
    args.headless = True


def _run_dashboard(session, process, recorded: str) -> int:
    """The dashboard on the job ``optwatch run`` started: quitting stops the run, detaching leaves it."""
    from optwatch.app.app import OptwatchApp
    from optwatch.protocol import INTERRUPTED

    app = OptwatchApp(session)
    detached = failed = False

    def stop_with_the_training() -> None:
        # A scheduler's or `kill`'s SIGTERM, passed on: the script's own handler runs (a checkpoint) and
        # `optwatch run` ends with the training, as `python script.py` would, not at once, leaving it unwatched.
        app.exit_when_the_run_ends = True
        if process.poll() is not None:
            app.exit()

    try:
        with process.passing_signals((signal.SIGTERM, stop_with_the_training)):
            app.run()
        detached = app.detached
        # A bug of the dashboard's own is no reason to end the training: it goes on, attachable.
        failed = (bool(app.return_code) or app._exception is not None) and process.poll() is None
    finally:
        if not (detached or failed):
            process.stop()
    if recorded:
        print(f"{recorded} (optwatch replay {process.run_id})", file=sys.stderr)
    if failed:
        print(
            f"optwatch: the dashboard failed; the run {process.run_id} goes on (pid {process.pid}): "
            f"optwatch attach {process.run_id}",
            file=sys.stderr,
        )
        return 1
    if detached:
        print(f"optwatch: left {process.run_id} running (pid {process.pid}); `optwatch attach` to watch it again")
        return 0
    ending = session.ending_line()
    if ending:
        print(ending, file=sys.stderr)
    elif session.exit_code() not in (None, 0, INTERRUPTED):
        _show_the_traceback(session)
    return session.exit_code() or 0  # the script's, as with `python script.py`: 130 after q, y (a Ctrl-C)


def _show_the_traceback(session) -> None:
    """A script that failed under the dashboard: its last traceback (or last lines of stderr) on the terminal the
    dashboard leaves, where `python script.py` would have left it, not only in the Log tab. From the lines the
    dashboard has (the log files go with the job's hub)."""
    records, _ = session.store.new_logs(0)
    lines = [str(r.get("line", "")) for r in records if r.get("stream") == "stderr"]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    shown = lines[starts[-1] :] if starts else lines[-20:]
    if shown:
        print(f"optwatch: the script failed (exit {session.exit_code()}); the end of its stderr:", file=sys.stderr)
        print("\n".join(shown), file=sys.stderr)


def resolve_job(target: str | None):
    """The job a user means by RUN (an id or unique prefix), or the only job when RUN is omitted."""
    from optwatch.wire import runtime

    if target is not None and not target.strip():
        # A prefix that matches every job: `optwatch ctl "$RUN" stop` with RUN unset must not pick one.
        raise UsageError("RUN is empty: give a run id or a unique prefix of one (see `optwatch ls`)")
    jobs = runtime.list_jobs()
    if target is None:
        if len(jobs) == 1:
            return jobs[0]
        if not jobs:
            raise UsageError("no running optwatch jobs here (start one with `optwatch run`)")
        listing = ", ".join(job.run_id for job in jobs)
        raise UsageError(f"{len(jobs)} jobs are running; say which: {listing}")
    matches = [job for job in jobs if job.run_id == target] or [job for job in jobs if job.run_id.startswith(target)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no running job matches {target!r} (see `optwatch ls`)")
    raise UsageError(f"{target!r} matches several jobs: {', '.join(job.run_id for job in matches)}")


def token_of(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token for a TCP target and where it came from: --token (with a warning), --token-file or
    $OPTWATCH_TOKEN."""
    from optwatch.options import ENV_TOKEN

    if args.token is not None:
        print(
            f"optwatch: warning: a token given with --token is visible to other users of this machine (`ps`); "
            f"set {ENV_TOKEN} or use --token-file instead",
            file=sys.stderr,
        )
        return args.token, "given with --token"
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(errors="replace").strip()
        except OSError as exc:
            raise UsageError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
        return token, f"read from --token-file {args.token_file}"
    return os.environ.get(ENV_TOKEN) or None, f"from ${ENV_TOKEN}"


def is_tcp_target(target: str | None) -> bool:
    return bool(target) and target.rpartition(":")[2].isdigit() and ":" in target


def connect(target: str | None, token: str | None, token_source: str = "given"):
    """A Feed to the job, checked to answer (and to accept our token: a UsageError if not) before anything
    is shown."""
    from optwatch.wire.runtime import tcp_address
    from optwatch.wire.subscriber import HUB_ANSWER_S, AuthenticationError, Feed, NoAnswer, RequestError

    job = None
    if is_tcp_target(target):
        if not token:
            raise UsageError(
                "attaching over TCP needs the job's token (shown by `optwatch ls` on its machine): "
                "set OPTWATCH_TOKEN or give --token-file"
            )
        try:
            host, port = tcp_address(target)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
        address = f"[{host}]" if ":" in host else host
        feed = Feed(f"tcp://{address}:{port + 1}", f"tcp://{address}:{port}", token=token)
    else:
        job = resolve_job(target)
        feed = Feed(job.endpoints["pub"], job.endpoints["ctl"])
    try:
        feed.request("endpoints", timeout_s=HUB_ANSWER_S)
    except AuthenticationError:
        feed.close()
        raise UsageError(
            f"the job at {target} refused the token {token_source}: a wrong token (`optwatch ls` on the job's "
            "machine shows the right one)"
        ) from None
    except RequestError as exc:
        feed.close()
        where = target or job.run_id
        what = f"within {HUB_ANSWER_S:.0f} s" if isinstance(exc, NoAnswer) else f"({exc})"
        hint = "; is the job still running, and is this its port? (`optwatch ls` on its machine)" if job is None else ""
        raise Unanswered(f"no answer from the job at {where} {what}{hint}") from exc
    return feed, job


class Unanswered(Exception):
    """Nothing answered at the job's address (gone, a wrong port, a hub too busy)."""


def connect_or_say_why(args: argparse.Namespace):
    """``connect`` for a command: (feed, job), or None after telling the user why nothing answered."""
    try:
        return connect(args.target, *token_of(args))
    except Unanswered as exc:
        print(f"optwatch: {exc}", file=sys.stderr)
        return None


def check_web_arguments(args: argparse.Namespace) -> None:
    if args.web:
        if args.headless or args.record:
            raise UsageError(f"--web serves the dashboard: it takes no --{'headless' if args.headless else 'record'}")
    elif args.port is not None or args.web_host is not None:
        raise UsageError(f"{'--port' if args.port is not None else '--web-host'} goes with --web")


def serve_web(args: argparse.Namespace, target: str, token: str | None = None) -> None:
    """The dashboard of the job ``target`` in a browser (``--web``), until Ctrl+C."""
    try:
        from optwatch.web import server as web
    except ImportError as exc:
        raise UsageError(f"--web needs textual-serve ({exc.name} is missing): pip install 'optwatch[web]'") from None
    host = args.web_host or "127.0.0.1"
    if not is_loopback(host):
        port = args.port or "P"
        print(
            f"optwatch: warning: --web-host {host} serves the dashboard, and control of the run, to anyone who can "
            f"reach it, guarded by the token alone, and the page is plain HTTP: the token crosses the network in "
            f"clear. Serve on 127.0.0.1 and forward the port over SSH instead (ssh -L {port}:localhost:{port} HOST)",
            file=sys.stderr,
        )

    def announce(url: str) -> None:
        print(f"optwatch: the dashboard of {target} is at {url}", flush=True)
        print("optwatch: Ctrl+C stops serving; the run goes on", flush=True)

    try:
        duration_s = getattr(args, "duration", None)  # attach has --duration, run has not
        web.serve(target, host=host, port=args.port, token=token, duration_s=duration_s, announce=announce)
    except (OSError, OverflowError) as exc:
        port = args.port if args.port is not None else "8000 or a free port"
        raise UsageError(f"cannot serve on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None


def attach_web(args: argparse.Namespace) -> int:
    token, source = token_of(args)
    try:
        feed, job = connect(args.target, token, source)
    except Unanswered as exc:
        print(f"optwatch: {exc}", file=sys.stderr)
        return 1
    feed.close()  # each page's dashboard attaches by itself
    serve_web(args, job.run_id if job else args.target, token)
    return 0


def attached_session(feed, job, writer=None):
    """A viewer's session on a job it attached to, knowing whether the job's output is captured: only a
    script `optwatch run` started has its log files in the run directory (a script that calls
    ``optwatch.watch`` writes to its own terminal). Over TCP that cannot be seen from here."""
    from optwatch.session import ViewerSession
    from optwatch.wire.logs import log_name

    captured = (Path(job.run_dir) / log_name("stdout", 0)).exists() if job is not None else None
    return ViewerSession(feed, writer=writer, output_captured=captured)


def cmd_attach(args: argparse.Namespace) -> int:
    check_web_arguments(args)
    if args.web:
        return attach_web(args)
    _headless_without_a_terminal(args)
    connection = connect_or_say_why(args)
    if connection is None:
        return 1
    feed, job = connection
    session = attached_session(feed, job, _open_writer(args.record))
    session.attached_over_tcp = args.target if is_tcp_target(args.target) else None
    try:
        if args.headless:
            from optwatch.headless import run_headless

            return run_headless(session, summary_every_s=args.summary_every, duration_s=args.duration)
        from optwatch.app.app import OptwatchApp

        OptwatchApp(session, mode="attach").run()
        return 0
    finally:
        session.close()


def cmd_ctl(args: argparse.Namespace) -> int:
    """Send commands; wait until the job says at which step each is in effect (or why it refused)."""
    from optwatch import protocol
    from optwatch.wire.subscriber import HUB_ANSWER_S, NoAnswer, RequestError

    connection = connect_or_say_why(args)
    if connection is None:
        return 1
    feed, _ = connection
    failed = False
    said: dict[int, str] = {}  # each command's outcome, printed in the order the commands were given
    waiting: dict[str, int] = {}
    try:
        for index, text in enumerate(args.commands):
            try:
                reply = feed.request("control", timeout_s=HUB_ANSWER_S, command=text, source="ctl")
            except NoAnswer:
                said[index] = (
                    f"{text}: unknown: the job's hub did not answer within {HUB_ANSWER_S:.0f}s; it may still "
                    "apply the command (`optwatch attach` shows the job's events)"
                )
                failed = True
                continue
            except RequestError as exc:
                said[index] = f"{text}: rejected: {exc}"
                failed = True
                continue
            waiting[reply["id"]] = index
        deadline = time.monotonic() + (0 if args.no_wait else args.timeout)
        ended = False
        while waiting and not ended and time.monotonic() < deadline:
            for record in feed.poll(0.2):
                if record.get("kind") == protocol.END and record.get("rank", 0) == 0:
                    ended = True  # (no step boundary will come: no need to wait out the timeout)
                if record.get("kind") != protocol.EVENT or record.get("id") not in waiting:
                    continue
                if record.get("rank", 0) != 0:
                    continue
                index = waiting.pop(record["id"])
                text = args.commands[index]
                reason = f" ({record['reason']})" if record.get("reason") else ""
                if record.get("status") == "accepted":
                    said[index] = f"{text}: accepted, in effect from step {record.get('effective_step')}{reason}"
                else:
                    said[index] = f"{text}: rejected: {record.get('reason')}"
                    failed = True
        for index in waiting.values():
            text = args.commands[index]
            if args.no_wait:
                said[index] = f"{text}: queued; the job has not reached a step boundary yet"
                continue
            failed = True  # (not accepted: what it would be is unknown, and a script must not read success)
            said[index] = (
                f"{text}: not applied: the run ended first"
                if ended
                else f"{text}: queued, not applied within {args.timeout:.0f}s (is the job between steps?)"
            )
    finally:
        for index in sorted(said):  # (also those known when a Ctrl-C cut the wait short)
            print(said[index])
        feed.close()
    return 1 if failed else 0


def jobs_listing() -> list[dict]:
    """What `optwatch ls --json` prints: each live job of this user, with its token (the files are the user's)."""
    from optwatch.wire import runtime

    listing = []
    for job in runtime.list_jobs():
        entry = job.to_json()
        entry["token"] = job.token()
        listing.append(entry)
    return listing


def cmd_ls(args: argparse.Namespace) -> int:
    from optwatch.wire import runtime

    if args.json:
        print(json.dumps(jobs_listing(), indent=1))
        return 0
    jobs = runtime.list_jobs()
    if not jobs:
        print("no running optwatch jobs")
        return 0
    print(f"{'RUN':<34} {'PID':>7} {'RANKS':>5} {'STARTED':<19} {'ENDPOINT':<22} SCRIPT")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time))
        endpoint = job.endpoints.get("tcp", "local").removeprefix("tcp://")
        print(f"{job.run_id:<34} {job.pid:>7} {job.ranks:>5} {started:<19} {endpoint:<22} {job.script}")
        if job.paused:
            print(f"{'':<34} {paused_text(job.paused)}")
        if job.token():
            print(f"{'':<34} token: {job.token()}")
    return 0


def paused_text(paused: dict) -> str:
    """``paused by dashboard since 14:02:11 (until 14:12:11)``: who holds a job, since when, for how long."""

    def clock(when: object) -> str:
        return time.strftime("%H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"

    text = f"paused by {paused.get('by') or '?'} since {clock(paused.get('since'))}"
    if paused.get("until"):
        text += f" (until {clock(paused['until'])})"
    else:
        text += " (until resumed: `optwatch ctl RUN resume`)"
    return text


def cmd_replay(args: argparse.Namespace) -> int:
    warnings: list[str] = []

    def report(text: str) -> None:
        runs_cli.warn(text)
        warnings.append(text)

    try:
        store, _ = runs_cli.load(args.path, report)
    except runs_cli.RunError as exc:
        raise UsageError(f"not an optwatch record file: {exc}" if Path(args.path).is_file() else str(exc)) from exc
    _headless_without_a_terminal(args)
    if args.headless:
        from optwatch.headless import replay_lines

        print("\n".join(replay_lines(store)))
        return 0
    from optwatch.app.app import OptwatchApp

    app = OptwatchApp.for_store(store)
    for text in warnings:  # shown once the dashboard is up (the line above is hidden behind it until it ends)
        app.notify(text, title="record damaged", severity="warning", timeout=60, markup=False)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
