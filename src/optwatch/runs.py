"""Every run's directory: its record (written by the job's hub), its summary and its profiler traces.

``./optwatch-runs/<run_id>/`` by default, ``$OPTWATCH_RUNS_DIR/<run_id>/`` when set; private to the user:

    record.jsonl.gz      every record of the run as JSON lines, gzip (flushed once a second: a crash, a kill -9
                         or a full disk loses at most the last second); record-2.jsonl.gz... after a hub restart
    run.json             what `optwatch runs` lists: script, start, steps, last loss, status, size
    rank0-steps...gz     profiler traces

No torch, no textual.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optwatch import protocol
from optwatch.wire import runtime

RUNS_DIR_ENV = "OPTWATCH_RUNS_DIR"
DEFAULT_RUNS_DIR = "optwatch-runs"
RECORD_NAME = "record.jsonl.gz"
SUMMARY_NAME = "run.json"
READ_CHUNK = 1 << 20
_PART = re.compile(r"record(?:-(\d+))?\.jsonl\.gz")


def runs_root() -> Path:
    """``$OPTWATCH_RUNS_DIR``, else ``./optwatch-runs`` (absolute, so a later chdir changes nothing)."""
    return Path(os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR).absolute()


def record_parts(directory: Path) -> list[Path]:
    """A run's record files in the order they were written (a restarted hub starts a new part)."""
    parts = {}
    for path in directory.glob("record*.jsonl.gz"):
        named = _PART.fullmatch(path.name)
        if named:
            parts[int(named.group(1) or 1)] = path
    return [parts[number] for number in sorted(parts)]


def next_record_path(directory: Path) -> Path:
    parts = record_parts(directory)
    return directory / (RECORD_NAME if not parts else f"record-{len(parts) + 1}.jsonl.gz")


# --- reading -------------------------------------------------------------------------------------------------
def gzip_lines(path: Path, damage: protocol.RecordDamage | None = None) -> Iterator[bytes]:
    """The whole lines of a gzip file, even one cut short (a job killed mid-write) or garbled: what it holds up
    to its last complete line, or up to the damage, never an error for the rest (``damage`` says what is
    missing). A line past ``protocol.MAX_LINE_BYTES`` is given as it stands, for the reader to refuse."""
    inflate = zlib.decompressobj(wbits=31)
    pending = b""
    offset = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            before = inflate.copy()
            try:
                data = inflate.decompress(chunk)
            except zlib.error as exc:
                data, at = _inflate_until_error(before, chunk)
                if damage is not None:
                    reason = str(exc).rsplit(": ", 1)[-1]
                    damage.broken = f"{reason} in its gzip data at byte {offset + at}"
                    if "incorrect data check" in reason:  # (the checksum at the end: garbled bytes can inflate)
                        damage.broken = f"its gzip checksum, at byte {offset + at}, says bytes before it were altered"
                yield from (line + b"\n" for line in (pending + data).split(b"\n")[:-1])
                return
            offset += len(chunk)
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            yield from (line + b"\n" for line in lines)
            if len(pending) > protocol.MAX_LINE_BYTES:
                yield pending  # a line with no end in sight: refused as too long, not held in memory
                return
            if inflate.eof:
                if pending:  # (a whole gzip stream whose text stops mid-line: the reader says it was cut)
                    yield pending
                return
    # A last line without its newline was being written when the file stopped: left out.
    if damage is not None:
        damage.unfinished = True


def _inflate_until_error(inflate: Any, chunk: bytes) -> tuple[bytes, int]:
    """What ``chunk`` inflates to up to its first bad byte, and that byte's place in it: one call on the whole
    chunk gives nothing of it when any part is bad."""
    out, at = [], 0
    try:
        for at in range(len(chunk)):  # noqa: B007 (``at`` is the answer)
            out.append(inflate.decompress(chunk[at : at + 1]))
    except zlib.error:
        pass
    return b"".join(out), at


def read_run_records(target: Path, report: Callable[[str], None] | None = None) -> Iterator[dict[str, Any]]:
    """Records of a record file (JSON lines, gzip or not) or of a run directory (all its parts, in order).

    A file damaged in part (lines that are not records, gzip data garbled or cut short) gives what it holds,
    and ``report`` gets a line saying what is missing; only a file that is not a record at all (none of its
    first lines is one) raises ProtocolError."""
    paths = record_parts(target) if target.is_dir() else [target]
    if not paths:
        raise FileNotFoundError(f"{target} holds no record ({RECORD_NAME})")
    summary = read_summary(target if target.is_dir() else target.parent)
    # A live run's last part is still being written: that its stream has no end yet is no damage.
    done = summary is None or RunEntry("", target, summary).status != "running"
    for index, path in enumerate(paths):
        damage = protocol.RecordDamage(str(path))
        with open(path, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        try:
            if gzipped:
                yield from protocol.read_record_lines(gzip_lines(path, damage), str(path), damage)
            else:
                with open(path, "rb") as handle:
                    yield from protocol.read_record_file(handle, str(path), damage)
        except protocol.ProtocolError:
            if damage.broken and not damage.skipped:  # nothing readable: the gzip data says why
                raise protocol.ProtocolError(f"{path}: {damage.broken}") from None
            raise
        last = index == len(paths) - 1
        # A part before the last one was left by a hub that died and was started again: its end is missing.
        warning = damage.warning(
            finished=last and done, steps_expected=summary.get("steps") if last and done and summary else None
        )
        if warning and report is not None:
            report(warning)


# --- listing -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunEntry:
    run_id: str
    directory: Path
    summary: dict[str, Any]
    note: str | None = None
    """What the figures of ``summary`` are not (read from the record without a run.json, a record cut short)."""

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``failed (exit N)``, ``stopped`` or ``ended`` (its hub died mid-run)."""
        status = str(self.summary.get("status") or "?")
        hub_pid = self.summary.get("hub_pid")
        if status == "running" and not (isinstance(hub_pid, int) and hub_pid > 0 and runtime.pid_alive(hub_pid)):
            return "ended"
        return status

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in record_parts(self.directory))

    @property
    def loss_text(self) -> str:
        """The run's last loss as every listing shows it: ``nan`` where the latest losses are not finite (the
        last finite one would hide that the run diverged), ``-`` where there is none."""
        if isinstance(self.summary.get("loss_nonfinite_from"), int):
            return "nan"
        loss = self.summary.get("last_loss")
        return f"{loss:.4g}" if protocol.finite(loss) else "-"


def read_summary(directory: Path) -> dict[str, Any] | None:
    """A run's run.json, or None where there is none to read."""
    try:
        summary = json.loads((directory / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def list_runs(root: Path | None = None) -> list[RunEntry]:
    """The runs under ``root``, oldest first: every directory with a run.json or a record. Without a readable
    run.json its figures are read from the record; a record shorter than run.json says gives the steps it
    holds; ``note`` says which."""
    root = root or runs_root()
    directories = {path.parent for path in root.glob(f"*/{SUMMARY_NAME}")}
    directories |= {path.parent for path in root.glob("*/record*.jsonl.gz") if _PART.fullmatch(path.name)}
    entries = [_entry(directory) for directory in directories]
    return sorted(entries, key=lambda e: (e.summary.get("start") or 0, e.run_id))


def _entry(directory: Path) -> RunEntry:
    summary = read_summary(directory)
    if summary is None:
        why = "unreadable" if (directory / SUMMARY_NAME).exists() else "missing"
        return RunEntry(
            directory.name, directory, summary_from_record(directory), f"run.json {why}: figures read from its record"
        )
    part = directory / str(summary.get("record") or RECORD_NAME)
    written = summary.get("size_bytes")
    try:
        cut = isinstance(written, int) and part.stat().st_size < written
    except OSError:
        cut = written is not None and written > 0  # the record is gone
    if not cut:
        return RunEntry(directory.name, directory, summary)
    held = summary_from_record(directory)
    if held.get("steps") == summary.get("steps") and held.get("last_loss") == summary.get("last_loss"):
        return RunEntry(directory.name, directory, summary)  # smaller, not cut: recompressed (gzip -9)
    note = f"its record ends early, at step {held['steps'] - 1}" if held.get("steps") else "its record holds no steps"
    note += f" (the run made {summary.get('steps', '?')})"
    figures = {key: held.get(key) for key in ("steps", "last_loss", "loss_nonfinite_from")}
    return RunEntry(directory.name, directory, {**summary, **figures}, note)


def summary_from_record(directory: Path) -> dict[str, Any]:
    """What run.json would say, read from a run's record (a run.json lost or cut): its start, script and
    arguments from the first hello, its steps and last loss as the hub counts them, how it ended."""
    summary: dict[str, Any] = {"run_id": directory.name, "status": "ended", "steps": 0, "last_loss": None}
    try:
        for record in read_run_records(directory):
            kind = record["kind"]
            if kind == protocol.HELLO and "script" not in summary:
                summary.update({k: record[k] for k in ("script", "argv", "world_size") if k in record})
                summary["start"] = record.get("time")
            elif kind == protocol.STEP and record.get("rank", 0) == 0:
                step, loss = record["step"], record.get("loss")
                summary["steps"] = max(summary["steps"], step + 1)
                if protocol.finite(loss):
                    summary["last_loss"] = loss
                    summary.pop("loss_nonfinite_from", None)
                elif isinstance(loss, float):
                    summary.setdefault("loss_nonfinite_from", step)
            elif kind == protocol.END and record.get("rank", 0) == 0:
                summary["exit_code"] = record.get("exit_code")
                summary["status"], _ = protocol.run_status([summary["exit_code"]])
    except (OSError, ValueError):  # no record, or not one: what was read stands
        pass
    return summary


def resolve(text: str, root: Path | None = None) -> Path:
    """A run by path (a record file or a run directory), id, or unique start of an id; ValueError says why not."""
    path = Path(text)
    if path.exists():
        return path
    root = root or runs_root()
    exact = root / text
    if text and "/" not in text and exact.is_dir():
        return exact
    matches = [entry.directory for entry in list_runs(root) if entry.run_id.startswith(text)] if text else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ValueError(f"no run or file {text!r} (runs are listed by `optwatch runs`, from {root})")
    raise ValueError(f"{text!r} names {len(matches)} runs; give more of the id: " + ", ".join(m.name for m in matches))


def write_summary(directory: Path, summary: dict[str, Any]) -> None:
    """run.json, replaced whole (a reader never sees half of it)."""
    partial = directory / f".{SUMMARY_NAME}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({**summary, "updated": time.time()}, handle, indent=1)
        os.replace(partial, directory / SUMMARY_NAME)
    except OSError:
        partial.unlink(missing_ok=True)  # (a full disk: no half-written file left beside the last whole one)
        raise
