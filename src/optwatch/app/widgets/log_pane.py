"""The script's own stdout and stderr, newest at the bottom."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget
from textual.widgets import RichLog

from optwatch.store import Store

NOT_CAPTURED = (
    "(the script's output is not shown here: only a script started by `optwatch run` has it captured; this "
    "job writes it where it was started)"
)


class LogPane(RichLog):
    """Follows the store only while it is displayed.

    A RichLog that has not yet been on screen keeps every write in a queue until it learns its size, so a
    pane in a tab never opened held every line of a long run (about 0.45 KB each). Hidden, this pane
    takes nothing; shown again, it writes the newest ``max_lines`` of the lines the store still has.
    """

    def __init__(self, *, id: str | None = None, max_lines: int = 2000) -> None:
        super().__init__(id=id, max_lines=max_lines, wrap=True, markup=False, highlight=False)
        self._seen = 0
        self._store: Store | None = None
        self._noted = False

    def follow(self, store: Store) -> None:
        self._store = store
        if not self._displayed():
            return
        if not self._noted and getattr(getattr(self.app, "session", None), "output_captured", None) is False:
            self._noted = True  # an empty pane would look like a script that prints nothing
            self.write(Text(NOT_CAPTURED, style="dim italic"))
        records, self._seen = store.new_logs(self._seen)
        if self.max_lines:
            records = records[-self.max_lines :]
        if records:
            # One write for the lot: RichLog renders each write on its own (about half a millisecond).
            lines = [Text(r.get("line", ""), style="red" if r.get("stream") == "stderr" else "") for r in records]
            self.write(Text("\n").join(lines))

    def on_show(self) -> None:
        # A tab opened by a click or the arrow keys comes up between the app's redraws, which skip a store
        # that has not changed (a finished run): catch up now rather than at the next line.
        if self._store is not None:
            self.follow(self._store)

    def _displayed(self) -> bool:
        return all(node.display for node in self.ancestors_with_self if isinstance(node, Widget))
