"""Per-module time series built from a rank's ``layers`` records, for the Gradients tab.

Incremental: each refresh folds in only the records that arrived since the last one. No textual here.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from optwatch.diagnose.gradients import LayerStats, ModuleStats

HISTORY = 500  # measured steps kept per module: the store keeps as many `layers` records

METRICS = ("grad_norm", "weight_norm", "update_ratio", "zero_frac", "grad_rms")


def _value(module: ModuleStats, metric: str) -> float | None:
    value = getattr(module, metric)
    return value if isinstance(value, (int, float)) else None


@dataclass
class LayerHistory:
    """What the Gradients tab draws: modules in model order, their latest numbers and their history."""

    rank: int = 0
    steps: collections.deque[int] = field(default_factory=lambda: collections.deque(maxlen=HISTORY))
    series: dict[str, dict[str, collections.deque[float | None]]] = field(default_factory=dict)
    modules: list[str] = field(default_factory=list)
    latest: dict[str, ModuleStats] = field(default_factory=dict)
    alerting: dict[str, str] = field(default_factory=dict)
    _seen: float = -math.inf

    def update(self, records: Iterable[dict[str, Any]]) -> bool:
        """Fold in the records not seen yet (by ``seq``); True when anything changed."""
        fresh = [r for r in records if r.get("rank", 0) == self.rank and r.get("seq", math.inf) > self._seen]
        for record in fresh:
            self._add(record)
        return bool(fresh)

    def _add(self, record: dict[str, Any]) -> None:
        self._seen = record.get("seq", self._seen)
        modules = LayerStats.from_record(record).modules()
        self.steps.append(record.get("step", len(self.steps)))
        present = {m.name: m for m in modules}
        for name in self.series.keys() | present.keys():
            columns = self.series.get(name)
            if columns is None:
                # A module first seen now: pad its past so every series lines up with ``steps``.
                columns = self.series[name] = {
                    metric: collections.deque([None] * (len(self.steps) - 1), maxlen=HISTORY) for metric in METRICS
                }
            module = present.get(name)
            for metric in METRICS:
                columns[metric].append(_value(module, metric) if module is not None else None)
        self.modules = [m.name for m in modules] + [n for n in self.modules if n not in present]
        self.latest = present
        self.alerting = dict(record.get("alerting") or {})

    def column(self, name: str, metric: str) -> list[float | None]:
        return list(self.series.get(name, {}).get(metric, ()))
