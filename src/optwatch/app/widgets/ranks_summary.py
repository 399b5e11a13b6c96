"""A job of many ranks in a few lines: each figure's median and range across the ranks, the worst ranks named."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text

from optwatch.app import format as fmt
from optwatch.app.widgets.text_panel import TextPanel
from optwatch.diagnose.ranks import RanksOverview, Spread


def percent(value: float | None) -> str:
    return f"{100 * value:.0f}%" if value is not None else "–"


def spread_line(label: str, spread: Spread | None, worst: str, show: Callable[[float | None], str]) -> Text:
    """``step time  median 100 ms  98 ms..150 ms  slowest 17: 150 ms · 201: 120 ms``"""
    line = Text(f"{label:<12}")
    if spread is None:
        return line.append("–")
    line.append(f"median {show(spread.median)}  {show(spread.low)}..{show(spread.high)}  ")
    if spread.worst:
        line.append(f"{worst} ", style="dim")
    for index, (rank, value) in enumerate(spread.worst):
        if index:
            line.append(" · ", style="dim")
        line.append(str(rank), style="bold")
        line.append(f": {show(value)}")
    return line


class RanksSummary(TextPanel):
    def __init__(self) -> None:
        super().__init__("Ranks", id="ranks-summary")

    def show_overview(self, ranks: RanksOverview, straggler: int | None, note: str) -> None:
        """``note``: what the table below lists, and how to get at one rank."""
        self.border_title = f"{len(ranks.ranks)} ranks, newest step {ranks.newest_step}"
        self.border_subtitle = note
        lines = [
            spread_line("step time", ranks.step_time, "slowest", fmt.seconds),
            spread_line("to backward", ranks.to_backward, "latest", fmt.seconds),
            spread_line("data wait", ranks.data_wait, "most", percent),
            spread_line("loss", ranks.loss, "highest", fmt.number),
        ]
        trouble = Text()
        if straggler is not None:
            trouble.append(f"straggler {straggler}", style="bold yellow")
            trouble.append(" (reaches backward last)")
        if ranks.behind:
            trouble.append("  behind ", style="bold")
            trouble.append(" · ".join(f"{rank}: {steps} steps" for rank, steps in ranks.behind))
        if ranks.not_finite_loss:
            shown = ", ".join(map(str, ranks.not_finite_loss[:8]))
            more = len(ranks.not_finite_loss) - 8
            trouble.append("  loss NaN/Inf ", style="bold red")
            trouble.append(shown + (f" and {more} more" if more > 0 else ""))
        lines.append(trouble if trouble.plain else Text("no straggler, no rank behind", style="dim"))
        self.set_lines(lines)
