"""`optwatch runs`, `optwatch compare` and `optwatch export`: the recorded runs (``optwatch.runs``)."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optwatch import protocol, runs

COMMANDS = ("runs", "compare", "export")


class RunError(Exception):
    """A run that cannot be found or read, said in one line."""


def add_commands(commands: Any) -> None:
    listing = commands.add_parser("runs", help="list recorded runs (./optwatch-runs, or $OPTWATCH_RUNS_DIR)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.add_argument(
        "--dir",
        metavar="DIR",
        help=f"the runs directory (default: ${runs.RUNS_DIR_ENV}, else ./{runs.DEFAULT_RUNS_DIR})",
    )

    compare = commands.add_parser("compare", help="runs side by side: their curves by step and what differs")
    compare.add_argument("targets", nargs="+", metavar="RUN", help="run ids or prefixes, run directories, records")
    compare.add_argument("--headless", action="store_true", help="print the table instead of opening the dashboard")

    export = commands.add_parser("export", help="a run's step figures as CSV or TensorBoard scalars")
    export.add_argument("target", metavar="RUN", help="run id (or a unique prefix), run directory or record file")
    export.add_argument("--csv", metavar="PATH", help="one row per step and rank (- for standard output)")
    export.add_argument("--tensorboard", metavar="DIR", help="TensorBoard event files (needs the tensorboard package)")


def warn(text: str) -> None:
    print(f"optwatch: warning: {text}", file=sys.stderr)


def read(target: str, report: Callable[[str], None] = warn) -> tuple[list[dict[str, Any]], Path]:
    """A recorded run's records, with the path they came from; RunError says why not. What a record damaged in
    part is missing goes to ``report``, a line per file."""
    try:
        path = runs.resolve(target)
        return list(runs.read_run_records(path, report)), path
    except ValueError as exc:  # ProtocolError is one
        raise RunError(str(exc)) from None
    except OSError as exc:
        raise RunError(f"cannot read {target}: {exc.strerror or exc}") from None


def load(target: str, report: Callable[[str], None] = warn):
    """A recorded run's store, with the path it came from; RunError says why not."""
    from optwatch.store import Store

    records, path = read(target, report)
    store = Store()
    store.ingest(records)
    return store, path


# --- runs ------------------------------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    root = Path(args.dir).absolute() if args.dir else runs.runs_root()
    entries = runs.list_runs(root)
    if args.json:
        listing = [{**e.summary, "status": e.status, "size_bytes": e.size_bytes, "note": e.note} for e in entries]
        print(json.dumps(listing, indent=1))
        return 0
    if not entries:
        print(f"no recorded runs in {root}")
        return 0
    print(f"{'RUN':<36} {'STARTED':<16} {'STEPS':>8} {'LOSS':>9} {'STATUS':<16} {'SIZE':>8}  SCRIPT")
    for entry in entries:
        summary = entry.summary
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.get("start") or 0))
        status = entry.status + ("*" if entry.note else "")
        print(
            f"{entry.run_id:<36} {started:<16} {summary.get('steps', 0):>8} {entry.loss_text:>9} {status:<16} "
            f"{_size(entry.size_bytes):>8}  {summary.get('script', '')}"
        )
    for entry in entries:
        if entry.note:
            print(f"* {entry.run_id}: {entry.note}")
    return 0


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return str(count)


# --- compare ---------------------------------------------------------------------------------------------
def cmd_compare(args: argparse.Namespace) -> int:
    from optwatch.comparison import compare_runs

    if len(args.targets) < 2:
        raise RunError(f"compare takes two runs or more (one run: optwatch replay {args.targets[0]})")
    loaded = [load(target) for target in args.targets]
    comparison = compare_runs([(path.name.removesuffix(".jsonl.gz"), store) for store, path in loaded])
    if args.headless:
        print(comparison.table_text())
        return 0
    from optwatch.app.compare_app import CompareApp

    CompareApp(comparison).run()
    return 0


# --- export ----------------------------------------------------------------------------------------------
STEP_COLUMNS = ("loss", "grad_norm", "lr", "step_time_s", "samples_per_s", "data_wait_s", "optwatch_s")


def cmd_export(args: argparse.Namespace) -> int:
    if not args.csv and not args.tensorboard:
        raise RunError("say what to write: --csv PATH and/or --tensorboard DIR")
    records, _ = read(args.target)
    steps = [r for r in records if r.get("kind") == protocol.STEP]
    metrics = [r for r in records if r.get("kind") == "metric"]
    # Both destinations checked before either is written: a bad second one leaves no first one behind.
    if args.csv and args.csv != "-":
        _check_csv_target(Path(args.csv))
    if args.tensorboard:
        _check_tensorboard_target(Path(args.tensorboard))
    if args.csv:
        _write_csv(args.csv, steps)
    if args.tensorboard:
        _write_tensorboard(Path(args.tensorboard), steps, metrics)
    return 0


def _check_csv_target(target: Path) -> None:
    if target.is_dir():
        raise RunError(f"cannot write {target}: it is a directory; give a file name")
    if not target.parent.is_dir():
        why = "is a file" if target.parent.exists() else "does not exist"
        raise RunError(f"cannot write {target}: directory {target.parent} {why}")


def _check_tensorboard_target(directory: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise RunError("--tensorboard needs the tensorboard package: pip install 'optwatch[tensorboard]'") from None
    if directory.exists() and not directory.is_dir():
        raise RunError(f"cannot write TensorBoard files in {directory}: it is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot write TensorBoard files in {directory}: {exc.strerror or exc}") from None


def _write_csv(target: str, steps: list[dict[str, Any]]) -> None:
    to_stdout = target == "-"
    if to_stdout:
        _csv_rows(sys.stdout, steps)
        return
    path = Path(target)
    if path.exists() and not path.is_file():  # a FIFO or a device (/dev/stdout): written as it is
        _write_csv_to(path, path, steps)
        return
    # Written aside and renamed into place: a failure halfway leaves no half file, nor a file it replaced cut.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        _write_csv_to(partial, path, steps)
        os.replace(partial, path)
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()


def _write_csv_to(path: Path, target: Path, steps: list[dict[str, Any]]) -> None:
    try:
        with open(path, "w", newline="") as handle:
            _csv_rows(handle, steps)
    except OSError as exc:
        raise RunError(f"cannot write {target}: {exc.strerror or exc}") from None


def _csv_rows(handle: Any, steps: list[dict[str, Any]]) -> None:
    optimizers = sorted({name for s in steps for name in (s.get("losses") or {})})
    try:
        writer = csv.writer(handle)
        writer.writerow(["rank", "step", "time", *STEP_COLUMNS, *(f"loss:{name}" for name in optimizers)])
        for step in steps:
            losses = step.get("losses") or {}
            writer.writerow(
                [step.get("rank", 0), step["step"], step.get("time"), *(step.get(c) for c in STEP_COLUMNS)]
                + [losses.get(name) for name in optimizers]
            )
        handle.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit


def _write_tensorboard(directory: Path, steps: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    def event(record: dict[str, Any], values: Any) -> Event:
        """The record's finite ``(tag, value)`` pairs as one event at its step."""
        scalars = [Summary.Value(tag=tag, simple_value=v) for tag, v in values if protocol.finite(v)]
        return Event(wall_time=record.get("time") or 0.0, step=record["step"], summary=Summary(value=scalars))

    by_rank: dict[int, list[dict[str, Any]]] = {}
    for record in steps:
        by_rank.setdefault(record.get("rank", 0), []).append(record)
    # The writer writes on a thread of its own: a full disk there printed that thread's traceback before the
    # one-line message, and left a file cut short. Its error is kept for the message, and what it wrote goes.
    failed: list[BaseException] = []
    before = threading.excepthook
    threading.excepthook = lambda args: failed.append(args.exc_value) if args.exc_value else None
    written = set(directory.rglob("events.out.tfevents.*")) if directory.exists() else set()
    try:
        for rank, records in sorted(by_rank.items()):
            writer = EventFileWriter(str(directory if len(by_rank) == 1 else directory / f"rank{rank}"))
            for record in records:
                values = [(name, record.get(name)) for name in STEP_COLUMNS]
                values += [(f"loss/{name}", v) for name, v in (record.get("losses") or {}).items()]
                writer.add_event(event(record, values))
            for record in metrics if rank == min(by_rank) else ():
                writer.add_event(event(record, (record.get("values") or {}).items()))
            writer.close()
            if failed:
                raise failed[0]
    except OSError as exc:  # a full disk halfway
        for path in set(directory.rglob("events.out.tfevents.*")) - written if directory.exists() else ():
            path.unlink(missing_ok=True)
        raise RunError(f"cannot write TensorBoard files in {directory}: {exc.strerror or exc}") from None
    finally:
        threading.excepthook = before
