"""The `optwatch` command: run, attach, ls, ctl, replay."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

SUBCOMMANDS = ("run", "attach", "ls", "ctl", "replay")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
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


def build_parser() -> argparse.ArgumentParser:
    from optwatch.probe.options import parse_profile_at, parse_profile_every

    parser = argparse.ArgumentParser(
        prog="optwatch",
        description="Live diagnostics for PyTorch training, in the terminal.",
        epilog="`optwatch SCRIPT [ARGS...]` is short for `optwatch run SCRIPT [ARGS...]`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run a training script under optwatch")
    run.add_argument("--headless", action="store_true", help="no dashboard: pass output through, print summaries")
    run.add_argument("--record", metavar="PATH", help="write every record as a JSON line to PATH")
    run.add_argument(
        "--summary-every", metavar="S", type=_positive_float, default=5.0, help="headless summary interval (s)"
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
    run.add_argument("script", metavar="SCRIPT", help="the training script")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the script")

    ls = commands.add_parser("ls", help="list running jobs of this user on this machine")
    ls.add_argument("--json", action="store_true", help="print a JSON list")

    replay = commands.add_parser("replay", help="open a record file in the dashboard")
    replay.add_argument("path", metavar="RECORD")
    replay.add_argument("--headless", action="store_true", help="print the final summary instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"run": cmd_run, "ls": cmd_ls, "replay": cmd_replay}[args.command]
    try:
        return handler(args)
    except UsageError as exc:
        print(f"optwatch: {exc}", file=sys.stderr)
        return 2


class UsageError(Exception):
    """A problem with what the user asked for, reported in one line."""


def cmd_run(args: argparse.Namespace) -> int:
    from optwatch.probe.options import ProbeOptions

    if not os.path.isfile(args.script):
        raise UsageError(f"no such script: {args.script}")
    options = ProbeOptions(
        script=args.script, argv=args.args, profile_at=args.profile_at, profile_every=args.profile_every
    )

    from optwatch.session import ViewerSession
    from optwatch.store import RecordWriter
    from optwatch.supervisor import TrainingProcess

    writer = None
    if args.record:
        try:
            writer = RecordWriter(args.record)
        except OSError as exc:
            raise UsageError(f"cannot record to {args.record}: {exc}") from exc
    process = TrainingProcess(args.script, args.args, options.to_env())
    process.start()
    session = ViewerSession.for_process(process, writer=writer)
    try:
        if args.headless:
            from optwatch.headless import run_headless

            return run_headless(session, summary_every_s=args.summary_every)
        from optwatch.app.app import OptwatchApp

        app = OptwatchApp(session)
        detached = False
        try:
            app.run()
            detached = app.detached
        finally:
            if not detached:
                process.stop()
        if detached:
            print(f"optwatch: left {process.run_id} running (pid {process.pid}); `optwatch attach` to watch it again")
            return 0
        return process.exit_code() or 0
    finally:
        session.close()
        if process.poll() is not None:
            process.cleanup()


def cmd_ls(args: argparse.Namespace) -> int:
    from optwatch.wire import runtime

    jobs = runtime.list_jobs()
    if args.json:
        print(json.dumps([job.to_json() for job in jobs], indent=1))
        return 0
    if not jobs:
        print("no running optwatch jobs")
        return 0
    print(f"{'RUN':<36} {'PID':>7} {'RANKS':>5} {'STARTED':<19} SCRIPT")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time))
        print(f"{job.run_id:<36} {job.pid:>7} {job.ranks:>5} {started:<19} {job.script}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from optwatch import protocol
    from optwatch.store import Store, read_records

    store = Store()
    try:
        store.ingest(list(read_records(args.path)))
    except OSError as exc:
        raise UsageError(f"cannot read {args.path}: {exc.strerror}") from exc
    except protocol.ProtocolError as exc:
        raise UsageError(f"not an optwatch record file: {exc}") from exc
    if args.headless:
        from optwatch.headless import summary_line

        print(summary_line(store) or "no steps in this record")
        return 0
    from optwatch.app.app import OptwatchApp

    OptwatchApp.for_store(store).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
