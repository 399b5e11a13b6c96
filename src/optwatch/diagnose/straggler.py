"""Which rank holds the others back under DDP.

The ranks of a DDP job finish their steps together: the gradient all-reduce in backward waits for the
last rank to get there. So step times look the same everywhere and say nothing; the straggler is the
rank that takes longest to *reach* backward (data wait + forward), while the others idle in backward.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from optwatch import protocol

WINDOW_STEPS = 20
RATIO = 1.5  # the straggler's time-to-backward over the median of the other ranks
MIN_EXCESS_S = 0.02  # and at least this much longer, so microsecond jitter never alerts


@dataclass
class StragglerFinding:
    rank: int
    to_backward_s: float
    others_s: float
    window: tuple[int, int]

    @property
    def message(self) -> str:
        return (
            f"rank {self.rank} reaches backward last: {self.to_backward_s * 1000:.0f} ms of data wait + forward "
            f"per step vs {self.others_s * 1000:.0f} ms on the other ranks, which wait for it in the all-reduce"
        )


def find_straggler(steps_by_rank: dict[int, list[dict[str, Any]]]) -> StragglerFinding | None:
    """The rank that reaches backward last, over the most recent common window, if one clearly does."""
    medians: dict[int, float] = {}
    last_steps = []
    for rank, steps in steps_by_rank.items():
        recent = [s["to_backward_s"] for s in steps[-WINDOW_STEPS:] if isinstance(s.get("to_backward_s"), float)]
        if len(recent) >= WINDOW_STEPS // 2:
            medians[rank] = statistics.median(recent)
            last_steps.append(steps[-1]["step"])
    if len(medians) < 2:
        return None
    slowest = max(medians, key=medians.get)
    others = statistics.median(v for r, v in medians.items() if r != slowest)
    worst = medians[slowest]
    if worst > RATIO * others and worst - others > MIN_EXCESS_S:
        end = min(last_steps)
        return StragglerFinding(slowest, worst, others, (max(0, end - WINDOW_STEPS + 1), end))
    return None


@dataclass
class StragglerWatch:
    """Alerts once per episode: a new alert only after the straggler changed or the job recovered."""

    current: int | None = None
    quiet_checks: int = 0
    alerts: list[dict[str, Any]] = field(default_factory=list)

    def check(self, steps: list[dict[str, Any]], hub_rank: int = 0) -> list[dict[str, Any]]:
        by_rank: dict[int, list[dict[str, Any]]] = {}
        for record in steps:
            if record.get("kind") == protocol.STEP:
                by_rank.setdefault(record.get("rank", 0), []).append(record)
        finding = find_straggler(by_rank)
        if finding is None:
            self.quiet_checks += 1
            if self.quiet_checks >= 5:
                self.current = None
            return []
        self.quiet_checks = 0
        if finding.rank == self.current:
            return []
        self.current = finding.rank
        return [
            protocol.make_record(
                protocol.ALERT,
                finding.rank,
                type="straggler",
                step=finding.window[1],
                message=finding.message,
                evidence={"to_backward_s": finding.to_backward_s, "others_to_backward_s": finding.others_s},
                suggestions=[
                    f"look at rank {finding.rank}'s data loading (more DataLoader workers, pin_memory) "
                    "and at what else runs on its GPU or CPU cores",
                ],
                window=list(finding.window),
            )
        ]
