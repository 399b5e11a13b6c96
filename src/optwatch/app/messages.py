"""Typed messages from the feed worker thread to the dashboard."""

from __future__ import annotations

from textual.message import Message


class FeedUpdated(Message):
    """New records are in the store. A newer one replaces an unhandled older one, so floods never queue."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FeedUpdated)


class RunExited(Message):
    """The training process exited and its last records are in."""

    def __init__(self, exit_code: int | None, killed_by: str | None = None, ending: str | None = None) -> None:
        super().__init__()
        self.exit_code = exit_code
        self.killed_by = killed_by
        """The signal that ended it (``SIGKILL``), when one did."""
        self.ending = ending
        """How it ended, in one line, where that is news (``ViewerSession.ending_line``)."""


class CommandAnswered(Message):
    """The job's immediate answer to a command sent from the dashboard (queued, or refused and why)."""

    def __init__(self, command: str, reply: dict) -> None:
        super().__init__()
        self.command = command
        self.reply = reply


class RecordingStopped(Message):
    """Writing the record file failed (a full disk...); the run and the dashboard go on without it."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason
