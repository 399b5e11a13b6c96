"""Ranks side by side: who is slow, who waits, who is short of memory.

Up to ``ALL_RANKS_SHOWN`` ranks, every rank in rank order; beyond, only the ``WORST_ROWS`` worst by the
chosen figure (``t`` picks another), plus the rank being looked at, so a 256-rank job draws a screenful,
not 256 rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual.widgets import DataTable

from optwatch.app import format as fmt
from optwatch.diagnose.ranks import RankFigures
from optwatch.protocol import finite
from optwatch.summary import Waiting, clock_text

COLUMNS = ("Rank", "", "Step", "Step time", "To backward", "Data wait", "Samples/s", "Loss", "GPU", "CPU", "Memory")
"""The marks (straggler, no step for a while) beside the rank: last, they were off an 80-column screen."""
MARKS = 1
"""Their column."""
ALL_RANKS_SHOWN = 16
"""Up to this many ranks the table lists them all."""
WORST_ROWS = 12
"""Beyond, the rows it lists."""


@dataclass(frozen=True)
class RankOrder:
    label: str
    figure: str | None
    """A RankFigures field, largest first (``step``: smallest first, the ranks furthest behind); None: rank order."""


ORDERS = (
    RankOrder("rank", None),
    RankOrder("step time", "step_time_s"),
    RankOrder("to backward", "to_backward_s"),
    RankOrder("data wait", "data_wait_share"),
    RankOrder("loss", "loss"),
    RankOrder("steps behind", "step"),
)


def worst_first(ranks: Sequence[RankFigures], order: RankOrder) -> list[RankFigures]:
    """``ranks`` by ``order``: the worst first, ranks without the figure last; ties go to the rank that reaches
    backward later (under DDP every rank's step time is the same), then to the lower rank."""
    if order.figure is None:
        return sorted(ranks, key=lambda r: r.rank)
    sign = 1 if order.figure == "step" else -1

    def key(figures: RankFigures) -> tuple:
        value = getattr(figures, order.figure)
        if not finite(value):
            # A loss that is NaN or infinite is the worst loss there is.
            return (0 if order.figure == "loss" and isinstance(value, float) else 2, 0.0, 0.0, figures.rank)
        return (1, sign * value, -(figures.to_backward_s or 0.0), figures.rank)

    return sorted(ranks, key=key)


def cells(figures: RankFigures, straggler: bool, waiting: Waiting | None = None) -> tuple[str, ...]:
    """``waiting``: no step from this rank for a while (``Store.waiting``), else None."""
    share = figures.data_wait_share
    marks = ["◀ straggler"] if straggler else []
    if waiting is not None:
        marks.append(f"no step for {clock_text(waiting.waited_s)}")
    return (
        str(figures.rank),
        " · ".join(marks),
        str(figures.step),
        fmt.seconds(figures.step_time_s),
        fmt.seconds(figures.to_backward_s),
        f"{100 * share:.0f}%" if share is not None else "–",
        fmt.number(figures.samples_per_s, ".0f"),
        fmt.number(figures.loss),
        f"{figures.gpu_util_percent:.0f}%" if figures.gpu_util_percent is not None else "–",
        f"{figures.cpu_percent:.0f}%" if figures.cpu_percent is not None else "–",
        fmt.nbytes(figures.memory_bytes),
    )


class RanksTable(DataTable):
    def __init__(self) -> None:
        super().__init__(id="ranks-table", cursor_type="row", zebra_stripes=True)
        self.rows_shown: dict[int, tuple[str, ...]] = {}
        """The cells on screen per rank, in the order shown, for tests."""
        self.order_choice: int | None = None
        """The index in ORDERS that ``t`` chose; None: rank order for a few ranks, step time for many."""

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def order(self, ranks: int) -> RankOrder:
        if self.order_choice is not None:
            return ORDERS[self.order_choice]
        return ORDERS[0] if ranks <= ALL_RANKS_SHOWN else ORDERS[1]

    def next_order(self, ranks: int) -> RankOrder:
        self.order_choice = (ORDERS.index(self.order(ranks)) + 1) % len(ORDERS)
        return ORDERS[self.order_choice]

    def show_ranks(
        self,
        ranks: Sequence[RankFigures],
        straggler: int | None,
        pinned: int | None = None,
        waiting: dict[int, Waiting] | None = None,
    ) -> None:
        """``ranks``: every rank's figures; ``pinned``: a rank to list whatever its figures (the one looked at);
        ``waiting``: the ranks that have made no step for a while (``Store.waiting_ranks``)."""
        waiting = waiting or {}
        ordered = worst_first(ranks, self.order(len(ranks)))
        if len(ranks) > ALL_RANKS_SHOWN:
            shown = ordered[:WORST_ROWS]
            if pinned is not None and all(r.rank != pinned for r in shown):
                shown += [r for r in ordered if r.rank == pinned]
            ordered = shown
        rows = {
            figures.rank: cells(figures, figures.rank == straggler, waiting.get(figures.rank)) for figures in ordered
        }
        if rows == self.rows_shown and list(rows) == list(self.rows_shown):
            return
        self.rows_shown = rows
        cursor_rank = self.rank_at_cursor()
        self.clear()
        for rank, row in rows.items():
            self.add_row(*row, key=str(rank))
        if cursor_rank in rows:
            # The cursor stays on its rank when the order changes under it.
            self.move_cursor(row=list(rows).index(cursor_rank), animate=False)

    def rank_at_cursor(self) -> int | None:
        if not self.row_count:
            return None
        key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        return int(key.value) if key.value is not None else None
