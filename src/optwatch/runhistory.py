"""The shape of a whole run at flat memory: per series, a fixed number of step buckets that merge as it grows.

Bucket ``i`` covers steps ``[origin + i * width, origin + (i + 1) * width)``, from the series' first step (a
run resumed at step 100,000 is as finely drawn as one from 0). When a step falls past the last bucket,
neighbours merge pairwise and ``width`` doubles, so a series holds at most ``BUCKETS`` buckets at 10^3 or 10^7
steps.
Each bucket keeps the count, sum, lowest, highest and last of its finite values, and how many were not
finite: a spike or a NaN step stays visible however far the run is zoomed out, and the mean is exact.

The job's hub and every viewer keep one per rank; a viewer that attaches gets the hub's as a ``history``
record (``to_record``/``adopt``). No torch, no textual.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

BUCKETS = 512
"""Per series: about two points per column of the widest chart."""

STEP_SERIES = (
    "loss",
    "grad_norm",
    "step_time_s",
    "samples_per_s",
    "data_wait_s",
    "lr",
    "time",
)
"""The figures of a ``step`` record kept for the whole run (its wall-clock time too, to align runs by time);
per-optimizer losses are added as ``loss:NAME``."""
SYSTEM_SERIES = ("cpu_percent", "rss_bytes", "mem_allocated_bytes", "mem_reserved_bytes")
"""The figures of a ``system`` record kept; the first GPU's utilisation is added as ``gpu_util_percent``."""
MAX_SERIES = 32
"""A script that names hundreds of optimizers gets its first few kept: the memory stays bounded."""

_FIELDS = ("count", "sum", "min", "max", "last", "bad", "last_step")
_NONE = math.nan
_NO_STEP = 2**62


class Series:
    """One figure's buckets, as parallel arrays (8 bytes a field; no Python object per value).

    ``min``, ``max`` and ``last`` hold NaN where a bucket has no such value, ``last_step`` holds -1 where a
    bucket saw no step.
    """

    __slots__ = ("width", "origin", "count", "sum", "min", "max", "last", "bad", "last_step")

    def __init__(self, width: int = 1, origin: int | None = None) -> None:
        self.width = width
        self.origin = origin
        """The step the first bucket starts at: the series' first step (None until it has one)."""
        self.count = array("q")
        self.sum = array("d")
        self.min = array("d")
        self.max = array("d")
        self.last = array("d")
        self.bad = array("q")
        self.last_step = array("q")

    def add(self, step: int, value: float) -> None:
        if self.origin is None:
            self.origin = step
        offset = step - self.origin
        if offset < 0:
            return  # before the series began (none of a run's steps are: they only go forward)
        index = offset // self.width
        if index >= len(self.count):
            index = self._reach(offset)
        self.last[index] = value
        self.last_step[index] = step
        if value - value == 0.0:  # finite: NaN and the infinities give NaN
            self.count[index] += 1
            self.sum[index] += value
            # NaN compares false: an empty bucket's first value goes in by the ``not`` test.
            if not self.min[index] <= value:
                self.min[index] = value
            if not self.max[index] >= value:
                self.max[index] = value
        else:
            self.bad[index] += 1

    def _reach(self, offset: int) -> int:
        """Open buckets up to the one ``offset`` steps from the origin, merging first when it lies past the last
        one; its index."""
        while offset // self.width >= BUCKETS:
            self._halve()
        index = offset // self.width
        grow = index + 1 - len(self.count)
        if grow == 1:  # the next bucket: what each step adds while the width is 1, at every step
            self.count.append(0)
            self.sum.append(0.0)
            self.bad.append(0)
            self.last_step.append(-1)
            self.min.append(_NONE)
            self.max.append(_NONE)
            self.last.append(_NONE)
        elif grow > 0:
            for field, empty in ((self.count, 0), (self.sum, 0.0), (self.bad, 0), (self.last_step, -1)):
                field.extend([empty] * grow)
            for field in (self.min, self.max, self.last):
                field.extend([_NONE] * grow)
        return index

    def _halve(self) -> None:
        """Merge buckets pairwise: the width doubles, the count of buckets halves."""
        n = len(self.count)
        pairs = [(i, i + 1) if i + 1 < n else (i, i) for i in range(0, n, 2)]
        newer = [b if self.last_step[b] >= 0 else a for a, b in pairs]
        self.last = array("d", [self.last[j] for j in newer])
        self.last_step = array("q", [self.last_step[j] for j in newer])
        self.count = array("q", [self.count[a] + (self.count[b] if b != a else 0) for a, b in pairs])
        self.bad = array("q", [self.bad[a] + (self.bad[b] if b != a else 0) for a, b in pairs])
        self.sum = array("d", [self.sum[a] + (self.sum[b] if b != a else 0.0) for a, b in pairs])
        self.min = array("d", [_pick(min, self.min[a], self.min[b]) for a, b in pairs])
        self.max = array("d", [_pick(max, self.max[a], self.max[b]) for a, b in pairs])
        self.width *= 2

    # --- what a chart draws ------------------------------------------------------------------------------
    def points(self) -> tuple[list[int], list[float | None], list[float | None], list[float | None]]:
        """Per bucket that saw a step: (the step it is drawn at, mean, lowest, highest); a bucket holding only
        non-finite values gives None for all three, which a chart leaves out."""
        steps: list[int] = []
        means: list[float | None] = []
        lows: list[float | None] = []
        highs: list[float | None] = []
        start = (self.origin or 0) + (self.width - 1) // 2
        for i, count in enumerate(self.count):
            if self.last_step[i] < 0:
                continue
            steps.append(start + i * self.width)
            if count:
                means.append(self.sum[i] / count)
                lows.append(self.min[i])
                highs.append(self.max[i])
            else:
                means.append(None)
                lows.append(None)
                highs.append(None)
        return steps, means, lows, highs

    def first_step(self) -> int:
        """The start of the first bucket that saw a step (its first step when the width is 1)."""
        for i, step in enumerate(self.last_step):
            if step >= 0:
                return (self.origin or 0) + i * self.width
        return _NO_STEP

    def newest_step(self) -> int | None:
        """The newest step any bucket saw."""
        newest = max(self.last_step, default=-1)
        return newest if newest >= 0 else None

    def nonfinite_steps(self) -> list[int]:
        """The last step of each bucket that holds a NaN or an Inf."""
        return [self.last_step[i] for i, bad in enumerate(self.bad) if bad]

    def to_json(self) -> dict[str, Any]:
        def figures(values: array) -> list[float | None]:
            return [v if math.isfinite(v) else None for v in values]  # JSON holds no NaN

        return {
            "width": self.width,
            "origin": self.origin or 0,
            "count": self.count.tolist(),
            "sum": figures(self.sum),
            "min": figures(self.min),
            "max": figures(self.max),
            "last": figures(self.last),
            "bad": self.bad.tolist(),
            "last_step": self.last_step.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Series | None:
        """A series from a ``history`` record, or None when its lists disagree (a record that lies)."""
        width, origin = data.get("width"), data.get("origin", 0)
        lists = [data.get(name) for name in _FIELDS]
        if not isinstance(width, int) or width < 1 or not all(isinstance(v, list) for v in lists):
            return None
        if type(origin) is not int or origin < 0:
            return None
        if len({len(v) for v in lists}) != 1 or len(lists[0]) > BUCKETS:
            return None
        series = cls(width, origin)
        try:
            for name, values in zip(_FIELDS, lists):
                field = getattr(series, name)
                field.extend(_NONE if v is None else v for v in values)
        except (TypeError, OverflowError):
            return None
        return series

    def nbytes(self) -> int:
        """What the buckets hold in memory (for the benchmark and the bound test)."""
        return sum(field.itemsize * len(field) for field in (getattr(self, name) for name in _FIELDS))


def _pick(choose, a: float, b: float) -> float:
    """``choose`` (min or max) of two bucket figures, NaN standing for none."""
    if a != a:
        return b
    if b != b:
        return a
    return choose(a, b)


class RunHistory:
    """Every kept series of one rank."""

    def __init__(self) -> None:
        self.series: dict[str, Series] = {}
        self.last_step = -1
        """The newest step added; older or repeated steps (a restarted run counting again) are not."""
        self.first_step = _NO_STEP
        """The first step added (or adopted): a hub's history that starts earlier replaces ours."""

    def _add(self, name: str, step: int, value: Any) -> None:
        if type(value) is not float and (type(value) is not int or isinstance(value, bool)):
            return
        series = self.series.get(name)
        if series is None:
            if len(self.series) >= MAX_SERIES:
                return
            series = self.series[name] = Series()
        series.add(step, value)

    def add_step(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if type(step) is not int or step <= self.last_step:
            return
        if self.last_step < 0:
            self.first_step = step
        self.last_step = step
        get, kept = record.get, self.series
        for name in STEP_SERIES:
            value = get(name)
            if value is None:
                continue
            series = kept.get(name)
            if series is not None and type(value) is float:  # the usual case, in short
                series.add(step, value)
            else:
                self._add(name, step, value)
        losses = get("losses")
        if losses is not None and type(losses) is dict and len(losses) > 1:
            for name, value in losses.items():
                self._add(f"loss:{name}", step, value)

    def add_system(self, record: dict[str, Any]) -> None:
        step = record.get("step")
        if not isinstance(step, int) or step < self.first_step:
            return  # (also before the first step: a resumed run's samples then still say step 0)
        for name in SYSTEM_SERIES:
            value = record.get(name)
            if value is not None:
                self._add(name, step, value)
        gpus = record.get("gpus")
        if isinstance(gpus, list) and gpus and isinstance(gpus[0], dict):
            self._add("gpu_util_percent", step, gpus[0].get("util_percent"))

    def to_record(self) -> dict[str, Any]:
        """The fields of a ``history`` record (the caller adds kind and rank)."""
        return {"last_step": self.last_step, "series": {name: s.to_json() for name, s in self.series.items()}}

    def adopt(self, record: dict[str, Any], later_steps=(), later_system=()) -> bool:
        """Take a hub's whole-run history when it reaches back further than ours (a viewer that attached
        late), then add again the step and system records we hold that came after it. False when it was
        left out (ours already starts as early, or the record does not hold together)."""
        last_step, series = record.get("last_step"), record.get("series")
        if type(last_step) is not int or not isinstance(series, dict):
            return False
        adopted = {}
        for name, data in list(series.items())[:MAX_SERIES]:
            parsed = Series.from_json(data) if isinstance(data, dict) else None
            if parsed is not None:
                adopted[str(name)] = parsed
        first_step = min((s.first_step() for s in adopted.values()), default=_NO_STEP)
        if first_step >= self.first_step:
            return False
        self.series, self.last_step, self.first_step = adopted, last_step, first_step
        for step_record in later_steps:
            self.add_step(step_record)  # those up to last_step are in the hub's already, and skipped
        for system_record in later_system:
            if isinstance(system_record.get("step"), int) and system_record["step"] > last_step:
                self.add_system(system_record)
        return True

    def nbytes(self) -> int:
        return sum(series.nbytes() for series in self.series.values())
