"""The script's output, as the hub reads it from a log file, cut into the lines of its ``log`` records.

A line is kept whole up to ``LINE_MAX_BYTES`` (a Trainer's ``log_history`` printed at the end of a run is
tens of KiB on one line, and the record is the only copy of the output a dashboard run keeps); a longer one
keeps its head, cut between two characters, and says what it left out: ``… [N more bytes cut]``. What the hub
holds of a line under way is bounded by the same figure, however long the line grows before its newline.
A line that a progress bar redraws with ``\\r`` and never ends is shown in pieces, its newest drawing each.
"""

from __future__ import annotations

LINE_MAX_BYTES = 64 * 1024
"""A line of output kept whole up to this (in UTF-8): 16 times the 4 KiB lines were cut at, unmarked."""
REDRAWN_PIECE_BYTES = 4096
"""A line redrawn with ``\\r`` (tqdm's bar) and not ended yet is shown once this much of it has come."""


def cut_mark(left_out: int) -> str:
    """What a line cut at ``LINE_MAX_BYTES`` ends with."""
    return f" … [{left_out} more bytes cut]"


class OutputLines:
    """One log file's bytes in, its complete lines out (as text)."""

    def __init__(self) -> None:
        self._pending = b""
        """The line under way: all of it so far, or its head once it is past ``LINE_MAX_BYTES``."""
        self._left_out = 0
        """Bytes of the line under way past its head, counted and dropped until its newline comes."""

    @property
    def pending(self) -> bool:
        return bool(self._pending or self._left_out)

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        if self._left_out:  # a line past its head: dropped (and counted) up to its end
            end = data.find(b"\n")
            if end < 0:
                self._left_out += len(data)
                return lines
            self._left_out += end
            lines.append(self._text(self._pending))
            self._pending, self._left_out, data = b"", 0, data[end + 1 :]
        *complete, rest = (self._pending + data).split(b"\n")
        lines += [self._text(line) for line in complete]
        self._pending = b""
        if len(rest) > REDRAWN_PIECE_BYTES and b"\r" in rest.rstrip(b"\r"):
            lines.append(self._text(rest))  # a bar redrawn in place with no end: its newest drawing, now
        elif len(rest) > LINE_MAX_BYTES:
            head = _character_start(rest, LINE_MAX_BYTES)
            self._pending, self._left_out = rest[:head], len(rest) - head
        else:
            self._pending = rest
        return lines

    def end(self) -> list[str]:
        """The last line, where the output ended without a newline."""
        return self.feed(b"\n") if self.pending else []

    def _text(self, line: bytes) -> str:
        # A line redrawn with \r (tqdm's bar) as a terminal leaves it: its last drawing, not every one.
        line = line.rstrip(b"\r").rsplit(b"\r", 1)[-1]
        left_out, self._left_out = self._left_out, 0
        if len(line) > LINE_MAX_BYTES:
            head = _character_start(line, LINE_MAX_BYTES)
            left_out += len(line) - head
            line = line[:head]
        text = line.decode("utf-8", "replace")
        return text + cut_mark(left_out) if left_out else text


def _character_start(data: bytes, at: int) -> int:
    """``at``, or the start of the UTF-8 character ``at`` falls in (a cut there splits no character)."""
    start = at
    while start > at - 3 and start > 0 and (data[start] & 0xC0) == 0x80:  # a continuation byte
        start -= 1
    return start
