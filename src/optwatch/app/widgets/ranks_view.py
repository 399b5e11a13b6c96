"""The Ranks tab: every rank side by side for a few ranks; for many, their spread in a few lines, the worst
ranks in the table, and any one rank on demand.

Keys (with the table focused): ``enter`` shows the highlighted rank's figures against the median of all
ranks, ``#`` asks for a rank by number, ``escape`` closes it, ``t`` orders the table by another figure.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable

from optwatch.app.widgets.rank_detail import RankDetail
from optwatch.app.widgets.rank_prompt import RankPrompt
from optwatch.app.widgets.ranks_summary import RanksSummary
from optwatch.app.widgets.ranks_table import ALL_RANKS_SHOWN, WORST_ROWS, RanksTable
from optwatch.diagnose.ranks import RankFigures, overview, rank_figures
from optwatch.diagnose.straggler import StragglerFinding, find_straggler
from optwatch.store import Store
from optwatch.summary import RECENT_STEPS

MANY_RANKS_REDRAW_S = 1.0
"""Beyond ALL_RANKS_SHOWN ranks the tab is redrawn at most this often: every rank's window is read."""


def read_ranks(store: Store, rank: int | None) -> tuple[list[RankFigures], StragglerFinding | None, dict[str, Any]]:
    """Every rank's figures, the rank that straggles now (if one does), and ``rank``'s hello. The straggler is
    judged on the steps shown, by the rule its alert follows: the alert comes once an episode, and a mark
    that went with it left the table 200 steps later, while the rank still straggled."""
    with store.lock:
        recent = {
            number: list(itertools.islice(reversed(state.steps), RECENT_STEPS))[::-1]
            for number, state in sorted(store.ranks.items())
            if state.steps
        }
        figures = [rank_figures(number, steps, store.ranks[number].last_system) for number, steps in recent.items()]
        state = store.ranks.get(rank) if rank is not None else None
        hello = dict(state.hello) if state is not None else {}
    return figures, find_straggler(recent), hello


class RanksView(Vertical):
    BINDINGS = [
        Binding("t", "next_order", "Sort ranks", show=False),
        Binding("number_sign", "choose_rank", "Rank…", show=False),
        Binding("escape", "close_rank", "Close rank", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="ranks-view")
        self.selected: int | None = None
        """The rank looked at (its figures under the table), or None."""
        self._store: Store | None = None
        self._drawn_at = 0.0
        self._redraw_due = False

    def compose(self) -> ComposeResult:
        yield RanksSummary()
        yield RanksTable()
        yield RankDetail()

    def on_mount(self) -> None:
        self.query_one(RanksSummary).display = False
        self.query_one(RankDetail).display = False

    def on_show(self) -> None:
        # The tab's keys act on the table and its highlighted row: give it the focus whenever the tab comes up.
        self.query_one(RanksTable).focus()

    def show(self, store: Store) -> None:
        self._store = store
        wait = MANY_RANKS_REDRAW_S - (time.monotonic() - self._drawn_at)
        if len(store.ranks) > ALL_RANKS_SHOWN and wait > 0:
            if not self._redraw_due:
                self._redraw_due = True
                self.set_timer(wait, self._redraw)
            return
        self._draw(store)

    def _redraw(self) -> None:
        self._redraw_due = False
        if self._store is not None and self.is_attached:
            self._draw(self._store)

    def _draw(self, store: Store) -> None:
        self._drawn_at = time.monotonic()
        figures, finding, hello = read_ranks(store, self.selected)
        straggler = finding.rank if finding is not None else None
        # (A replay has no now: a run that ended without a word would tick on with the viewer's clock.)
        waiting = store.waiting_ranks() if getattr(self.app, "mode", None) != "replay" else {}
        table = self.query_one(RanksTable)
        summary = self.query_one(RanksSummary)
        many = len(figures) > ALL_RANKS_SHOWN
        ranks = overview(figures) if many or self.selected is not None else None
        with self.app.batch_update():
            self.set_class(many, "-many")
            summary.display = many
            if ranks is not None and many:
                order = table.order(len(figures))
                listed = f"the {WORST_ROWS} worst by {order.label}" if order.figure else f"the first {WORST_ROWS}"
                summary.show_overview(ranks, straggler, f"table: {listed} · t: order · enter: a rank · #: any rank")
            table.show_ranks(figures, straggler, pinned=self.selected, waiting=waiting)
            chosen = waiting.get(self.selected) if self.selected is not None else None
            self.query_one(RankDetail).show_rank(self.selected, ranks, hello, finding, chosen)

    def _look_at(self, rank: int | None) -> None:
        self.selected = rank
        if self._store is not None:
            self._draw(self._store)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self._look_at(int(event.row_key.value))

    def action_close_rank(self) -> None:
        self._look_at(None)

    def action_choose_rank(self) -> None:
        ranks = len(self._store.ranks) if self._store is not None else 0
        self.app.push_screen(RankPrompt(ranks), self._chosen)

    def _chosen(self, rank: int | None) -> None:
        if rank is None:
            return
        self._look_at(rank)
        table = self.query_one(RanksTable)
        if rank in table.rows_shown:
            table.move_cursor(row=list(table.rows_shown).index(rank), animate=False)

    def action_next_order(self) -> None:
        ranks = len(self._store.ranks) if self._store is not None else 0
        order = self.query_one(RanksTable).next_order(ranks)
        self.notify(f"ranks by {order.label}", timeout=2)
        self._look_at(self.selected)
