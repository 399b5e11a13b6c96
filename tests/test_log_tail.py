"""The script's output as viewers read it from its rotating log files (`wire/logs.py`), against the probe's own
writer (`probe/output.py`): every byte in order, or how many files a reader that fell behind missed."""

from __future__ import annotations

import os

import pytest

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
