"""Typed messages from the feed worker thread to the dashboard."""

from __future__ import annotations

from textual.message import Message


class FeedUpdated(Message):
    """New records are in the store. A newer one replaces an unhandled older one, so floods never queue."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, FeedUpdated)


class RunExited(Message):
    """The training process exited and its last records are in."""

    def __init__(self, exit_code: int | None) -> None:
        super().__init__()
        self.exit_code = exit_code
