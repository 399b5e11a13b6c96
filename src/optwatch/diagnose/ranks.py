"""Each rank's figures, and how they spread across the ranks: what the Ranks tab shows at any number of ranks.

A rank's figures come from its recent steps (``optwatch.summary.window``, the same window every view
uses) and its newest system sample. Across ranks, each figure's median, minimum and maximum, and the ranks
with the worst values named, so that 256 ranks read as a few lines. Pure: no store, no textual, no torch.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optwatch.protocol import finite
from optwatch.summary import median, window

WORST_NAMED = 3
"""Ranks named for each figure: the worst first."""
BEHIND_STEPS = 10
"""A rank whose newest step is this far behind the newest of any rank is named as behind."""


@dataclass(frozen=True)
class RankFigures:
    """One rank now: its newest step and the figures of its recent steps."""

    rank: int
    step: int
    step_time_s: float | None
    """Median step time of the recent steps."""
    to_backward_s: float | None
    """Median time from the step's start to its backward (data wait + forward): under DDP the straggler's is longest."""
    data_wait_share: float | None
    samples_per_s: float | None
    loss: float | None
    """The newest step's loss (NaN or infinite when it is)."""
    gpu_util_percent: float | None
    """The utilisation of the GPU this rank's tensors live on (NVML)."""
    cpu_percent: float | None
    memory_bytes: int | None
    """Device memory allocated, else the process's resident memory."""


def rank_figures(rank: int, recent: Sequence[dict[str, Any]], system: dict[str, Any] | None) -> RankFigures:
    """``recent``: the rank's newest step records, oldest first (at least one); ``system``: its newest sample."""
    figures = window(recent)
    system = system or {}
    current = next((gpu for gpu in system.get("gpus") or () if gpu.get("current")), None)
    gpu = current.get("util_percent") if current else None
    cpu = system.get("cpu_percent")
    memory = system.get("mem_allocated_bytes", system.get("rss_bytes"))
    loss = recent[-1].get("loss")
    return RankFigures(
        rank=rank,
        step=recent[-1]["step"],
        step_time_s=figures.step_time_s,
        to_backward_s=median(r.get("to_backward_s") for r in recent),
        data_wait_share=figures.data_wait_share,
        samples_per_s=figures.samples_per_s,
        loss=float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None,
        gpu_util_percent=gpu if finite(gpu) else None,
        cpu_percent=cpu if finite(cpu) else None,
        memory_bytes=memory if isinstance(memory, int) else None,
    )


@dataclass(frozen=True)
class Spread:
    """One figure across the ranks that have it."""

    median: float
    low: float
    high: float
    worst: list[tuple[int, float]]
    """(rank, value) of the ranks with the highest values above the median, highest first."""


def spread(ranks: Sequence[RankFigures], figure: str, named: int = WORST_NAMED) -> Spread | None:
    """``figure`` (a RankFigures field) over ``ranks``: None when no rank has it."""
    values = [(r.rank, getattr(r, figure)) for r in ranks if finite(getattr(r, figure))]
    if not values:
        return None
    numbers = [value for _, value in values]
    middle = statistics.median(numbers)
    # Only ranks above the median are worth a name. Highest first; among equal values the lowest rank first,
    # so the names stay put from one redraw to the next.
    above = [(rank, value) for rank, value in values if value > middle]
    worst = heapq.nsmallest(named, above, key=lambda item: (-item[1], item[0]))
    return Spread(middle, min(numbers), max(numbers), worst)


def behind(ranks: Sequence[RankFigures], steps: int = BEHIND_STEPS, named: int = WORST_NAMED) -> list[tuple[int, int]]:
    """(rank, steps behind) of the ranks furthest behind the newest step of any rank, by ``steps`` or more:
    a rank that hangs, or reports late. Furthest first."""
    if not ranks:
        return []
    newest = max(r.step for r in ranks)
    late = [(r.rank, newest - r.step) for r in ranks if newest - r.step >= steps]
    return heapq.nsmallest(named, late, key=lambda item: (-item[1], item[0]))


def not_finite_loss(ranks: Sequence[RankFigures]) -> list[int]:
    """The ranks whose newest loss is NaN or infinite, lowest first."""
    return sorted(r.rank for r in ranks if r.loss is not None and not finite(r.loss))


@dataclass(frozen=True)
class RanksOverview:
    """Every rank's figures and their spread: what a job of many ranks reads as."""

    ranks: list[RankFigures]
    newest_step: int
    step_time: Spread | None
    to_backward: Spread | None
    data_wait: Spread | None
    samples_per_s: Spread | None
    loss: Spread | None
    behind: list[tuple[int, int]]
    not_finite_loss: list[int]

    def figures_of(self, rank: int) -> RankFigures | None:
        return next((r for r in self.ranks if r.rank == rank), None)


def overview(ranks: Sequence[RankFigures]) -> RanksOverview:
    return RanksOverview(
        ranks=list(ranks),
        newest_step=max((r.step for r in ranks), default=0),
        step_time=spread(ranks, "step_time_s"),
        to_backward=spread(ranks, "to_backward_s"),
        data_wait=spread(ranks, "data_wait_share"),
        samples_per_s=spread(ranks, "samples_per_s"),
        loss=spread(ranks, "loss"),
        behind=behind(ranks),
        not_finite_loss=not_finite_loss(ranks),
    )
