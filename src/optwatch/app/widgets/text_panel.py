"""A bordered panel of short text lines; the System tab's panels build on it."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static


class TextPanel(Static):
    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="text-panel")
        self.border_title = title
        self.lines: list[str] = []
        """The plain text on screen, one entry per line, for tests."""

    def set_lines(self, lines: list[Text | str]) -> None:
        texts = [line if isinstance(line, Text) else Text(line) for line in lines]
        for text in texts:
            text.no_wrap = True
            text.overflow = "ellipsis"
        self.lines = [text.plain for text in texts]
        self.update(Group(*texts))
