"""The script's own stdout and stderr, newest at the bottom."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from optwatch.store import Store


class LogPane(RichLog):
    def __init__(self, *, id: str | None = None, max_lines: int = 2000) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True, markup=False, highlight=False)
        self._seen = 0

    def follow(self, store: Store) -> None:
        records, self._seen = store.new_logs(self._seen)
        for record in records:
            style = "red" if record.get("stream") == "stderr" else ""
            self.write(Text(record.get("line", ""), style=style))
