"""The script's output as viewers read it from its rotating log files (`wire/logs.py`), against the probe's own
writer (`probe/output.py`): every byte in order, or how many files a reader that fell behind missed; and the
lines the run's record keeps of it, against what `optwatch run --headless` passed through."""

from __future__ import annotations

import json
import os

import pytest

from conftest import SCRIPTS, optwatch
from optwatch import protocol, runs
from optwatch.probe import output
from optwatch.wire.logs import LogTail


class Writer:
    """The probe's writer of a stream's log file, fed by a pipe of this test's instead of the script's fd."""

    def __init__(self, path, monkeypatch):
        monkeypatch.setattr(output, "MAX_LOG_BYTES", 4)  # (rotations every 4 bytes)
        read_end, write_end = os.pipe()
        self.stream = output._Stream(write_end, path)  # (takes the pipe's write end over as its "fd")
        os.close(read_end)

    def write(self, data: bytes) -> None:
        self.stream._write(data)


@pytest.mark.parametrize("late", [False, True], ids=["from the start", "joined late"])
def test_a_reader_two_rotations_behind_reads_every_file_still_kept(tmp_path, monkeypatch, late):
    path = tmp_path / "stdout.log"
    writer = Writer(path, monkeypatch)
    writer.write(b"AAAA")
    tail = LogTail(path, "stdout", tail_bytes=64 if late else None)
    assert tail.read() == b"AAAA"
    writer.write(b"BBBB")  # A rotated to stdout.log.1
    writer.write(b"CCCC")  # B rotated to stdout.log.1, A gone (this reader holds it open)
    read = b"".join(iter(tail.read, b""))
    assert read == b"BBBBCCCC" and tail.missed_files == 0


def test_a_reader_three_rotations_behind_says_what_it_missed(tmp_path, monkeypatch):
    path = tmp_path / "stdout.log"
    writer = Writer(path, monkeypatch)
    writer.write(b"AAAA")
    tail = LogTail(path, "stdout")
    assert tail.read() == b"AAAA"
    for data in (b"BBBB", b"CCCC", b"DDDD"):
        writer.write(data)
    assert b"".join(iter(tail.read, b"")) == b"CCCCDDDD" and tail.missed_files == 1


def test_a_file_ends_at_a_lines_end_so_a_reader_after_a_gap_starts_at_a_lines_start(tmp_path, monkeypatch):
    """Files rotated where a write ended, within a line: a reader that jumped files it had missed began with the
    tail of a line whose start was gone (`optwatch run --headless | slow reader` printed a line of `yyyy`
    where every line starts with its number), joined to the unfinished line it had read before."""
    path = tmp_path / "stdout.log"
    writer = Writer(path, monkeypatch)
    writer.write(b"1\n2")
    tail = LogTail(path, "stdout")
    assert tail.read() == b"1\n2"
    for data in (b"2\n3", b"3\n4", b"4\n5", b"5\n6\n"):  # each past the 4 bytes a file holds
        writer.write(data)
    read = b"1\n2" + b"".join(iter(tail.read, b""))
    assert tail.missed_files == 1
    assert read == b"1\n22\n55\n6\n"  # lines 33 and 44 missed; every line shown is one the script wrote


def test_the_record_keeps_long_lines_whole_and_says_where_a_longer_one_is_cut(tmp_path):
    """Lines were cut at 4096 bytes without a word, a character split into U+FFFD at the cut: a Trainer's
    ``log_history`` printed at the end (16 KB of JSON) could not be read back from the record, the only copy
    of the output a dashboard run keeps. The script's output as `optwatch run --headless` passes it through,
    byte for byte, is the truth."""
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    done = optwatch("run", "--headless", str(SCRIPTS / "long_lines.py"), env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.split("\n")
    [entry] = runs.list_runs(tmp_path)
    logs = [r for r in runs.read_run_records(entry.directory) if r["kind"] == protocol.LOG]
    lines = [r["line"] for r in logs if r["stream"] == "stdout"]
    history, long_line = printed[0], printed[1]
    assert lines[0] == history and len(history.encode()) > 15_000
    assert json.loads(lines[0])[-1]["step"] == 159
    # Past the bound: its head, up to the last whole character within 64 KiB, then what was left out.
    head = long_line.encode()[: 64 * 1024].decode("utf-8", "ignore")
    assert lines[1] == f"{head} … [{len(long_line.encode()) - len(head.encode())} more bytes cut]"
    assert "\ufffd" not in lines[1] and len(head.encode()) == 64 * 1024 - 1
    # The bar, still under way a second before its line ended, was shown then: its newest drawing.
    bar = next(r for r in logs if r["line"] == "progress 300/300")
    after = next(r for r in logs if r["line"] == "after the bar")
    assert after["time"] - bar["time"] > 0.5 and not any("\r" in line for line in lines)
    assert printed[-1] == "last words" and lines[-1] == "last words"  # no newline at the end: a line all the same


def test_the_hub_holds_fewer_lines_of_output_where_they_are_long():
    """Lines up to 64 KiB whole: the hub's history for late viewers, 500 lines, would hold 32 MiB of them; it
    keeps the newest under its bound in characters instead, and 500 short ones as before."""
    from optwatch.hub.history import LOG_HISTORY, LOG_HISTORY_CHARS, History

    history = History()
    for number in range(LOG_HISTORY):
        line = f"{number} " + "x" * (64 * 1024)
        history.add(protocol.make_record(protocol.LOG, -1, stream="stdout", line=line))
    kept = [r["line"] for r in history.records() if r["kind"] == protocol.LOG]
    assert sum(map(len, kept)) <= LOG_HISTORY_CHARS and kept[-1].startswith(f"{LOG_HISTORY - 1} ")
    assert [int(line.split()[0]) for line in kept] == list(range(LOG_HISTORY - len(kept), LOG_HISTORY))
    for number in range(LOG_HISTORY):
        history.add(protocol.make_record(protocol.LOG, -1, stream="stdout", line=f"short {number}"))
    assert len([r for r in history.records() if r["kind"] == protocol.LOG]) == LOG_HISTORY
