"""One rank's figures beside the median of all ranks: the drill-down from the Ranks table."""

from __future__ import annotations

from rich.text import Text

from optwatch.app import format as fmt
from optwatch.app.widgets.ranks_summary import percent
from optwatch.app.widgets.text_panel import TextPanel
from optwatch.diagnose.ranks import RanksOverview, Spread
from optwatch.diagnose.straggler import StragglerFinding
from optwatch.summary import Waiting, waiting_text


def against(value: str, spread: Spread | None, show) -> str:
    """``150 ms (median 100 ms)``"""
    return f"{value} (median {show(spread.median)})" if spread is not None else value


class RankDetail(TextPanel):
    def __init__(self) -> None:
        super().__init__("Rank", id="rank-detail")
        self.rank: int | None = None
        """The rank shown; None: the panel is hidden."""

    def show_rank(
        self,
        rank: int | None,
        ranks: RanksOverview | None,
        hello: dict,
        straggler: StragglerFinding | None,
        waiting: Waiting | None = None,
    ) -> None:
        """``rank`` against ``ranks`` (all of them); a rank of None hides the panel. ``waiting``: the rank has
        made no step for a while, and where it is."""
        self.rank = rank if ranks is not None else None
        self.display = self.rank is not None
        if rank is None or ranks is None:
            return
        self.border_title = f"rank {rank}"
        self.border_subtitle = "esc closes"
        figures = ranks.figures_of(rank)
        said = [Text(waiting_text(waiting), style="bold yellow")] if waiting is not None else []
        if figures is None:
            self.set_lines([f"rank {rank} has sent no step yet", *said])
            return
        where = " · ".join(
            str(part)
            for part in (
                f"host {hello['host']}" if hello.get("host") else None,
                f"pid {hello['pid']}" if hello.get("pid") else None,
                hello.get("device"),
            )
            if part
        )
        lines: list[Text | str] = [
            f"step {figures.step} (newest of any rank {ranks.newest_step})" + (f" · {where}" if where else ""),
            f"step time {against(fmt.seconds(figures.step_time_s), ranks.step_time, fmt.seconds)}"
            f" · to backward {against(fmt.seconds(figures.to_backward_s), ranks.to_backward, fmt.seconds)}",
            f"data wait {against(percent(figures.data_wait_share), ranks.data_wait, percent)}"
            f" · samples/s {against(fmt.number(figures.samples_per_s, '.0f'), ranks.samples_per_s, fmt.number)}",
            f"loss {against(fmt.number(figures.loss), ranks.loss, fmt.number)}"
            f" · GPU {f'{figures.gpu_util_percent:.0f}%' if figures.gpu_util_percent is not None else '–'}"
            f" · CPU {f'{figures.cpu_percent:.0f}%' if figures.cpu_percent is not None else '–'}"
            f" · memory {fmt.nbytes(figures.memory_bytes)}",
        ]
        if straggler is not None and straggler.rank == rank:
            lines.append(Text(straggler.message, style="bold yellow"))
        self.set_lines([*lines, *said])
