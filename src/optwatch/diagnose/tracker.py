"""Verdicts over a sliding window, every few seconds and at the end of the run.

A ``VerdictTracker`` sees a rank's records in order, once their device values are in (the probe runs
it as a publisher observer, on the publisher thread, so nothing here touches the training thread).
It completes each step record with ``other_s`` and adds a ``verdict`` record every ``interval_s``
while steps come in, and a final one just before the rank's ``end`` record.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

from optwatch import protocol
from optwatch.diagnose.bottleneck import judge, summarise
from optwatch.diagnose.phases import other_seconds
from optwatch.protocol import finite
from optwatch.summary import WARMUP_STEPS

INTERVAL_S = 5.0
WINDOW_S = 10.0
MIN_STEPS = 3
SAMPLE_SLACK_S = 0.5
"""A system sample this long after the window's last step still covers some of it (one every 0.5 s)."""


def recent(records: collections.deque[dict[str, Any]], window_s: float, at_least: int = 0) -> list[dict[str, Any]]:
    """The records of the last ``window_s`` seconds before the newest (and never fewer than ``at_least``)."""
    if not records:
        return []
    cutoff = records[-1].get("time", 0.0) - window_s
    picked: list[dict[str, Any]] = []
    for record in reversed(records):
        if record.get("time", 0.0) < cutoff and len(picked) >= at_least:
            break
        picked.append(record)
    picked.reverse()
    return picked


def training_samples(systems: Iterable[dict[str, Any]], last_step_time: float) -> list[dict[str, Any]]:
    """The system samples of the steps' time: not those after the last step (work after the training loop,
    a final save, is no step's), nor those of a pause (held at a step boundary, the process idles), nor the
    first after a pause, whose CPU figure reaches back into it."""
    end = last_step_time + SAMPLE_SLACK_S
    taken, after_held = [], False
    for sample in systems:
        held = bool(sample.get("held"))
        # (The first sample after a pause measured its CPU since the pause's last one: the pause's idle time
        # in it read "44% of a core: the steps wait" for the steps right after a resume.)
        if sample.get("time", 0.0) <= end and not held and not after_held:
            taken.append(sample)
        after_held = held
    return taken


class VerdictTracker:
    def __init__(
        self,
        rank: int,
        interval_s: float = INTERVAL_S,
        window_s: float = WINDOW_S,
        loader: Callable[[], dict[str, Any]] = dict,
        clock: Callable[[], float] = time.monotonic,
        settled_from: int = 0,
    ):
        self.rank = rank
        self.first_step = 0
        """The number of the rank's first step (a resumed run's is its global step: the hello says)."""
        self.every_check = False
        """The hello says optwatch checks every step whatever it costs (``--budget 0``: it never settles)."""
        self.world_size = 1
        self.settled_from = settled_from
        """The first step of the steady state: before it optwatch checks every step whatever that costs (its
        ``--budget`` applies from there). A window that reaches past it judges the steps from it alone, so
        that a short run's final verdict does not charge the run with optwatch's first, fuller steps."""
        self.interval_s = interval_s
        self.window_s = window_s
        self.device = "cpu"
        self._loader = loader
        self._clock = clock
        self._steps: collections.deque[dict[str, Any]] = collections.deque(maxlen=5000)
        self._systems: collections.deque[dict[str, Any]] = collections.deque(maxlen=240)
        self._warmup: list[dict[str, Any]] = []
        self._fresh_steps = 0
        self._last_verdict = clock()
        self._holding_between = False
        """The last verdict was work between training steps (or evaluation): it holds a little below its
        threshold."""
        self._said: str | None = None
        """The bottleneck of the last verdict given."""
        self._unconfirmed: str | None = None
        """A different bottleneck one window found: it is said when the next window finds it too."""

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for record in records:
            if record.get("rank") == self.rank:
                kind = record.get("kind")
                if kind == protocol.STEP:
                    if "other_s" not in record and "forward_s" in record:
                        # Not on a step whose model phases were not timed (a GPU's steps between two
                        # detail steps): the whole step would look like "other".
                        timed = record.get("detailed", True) or finite(record.get("backward_s"))
                        record["other_s"] = other_seconds(record) if timed else None
                    if record.get("step", 0) >= self.first_step + WARMUP_STEPS:
                        # (A step with an evaluation in its time counts in the time, not in the phases.)
                        self._steps.append(record)
                        self._fresh_steps += 1
                    else:
                        self._warmup.append(record)
                elif kind == protocol.SYSTEM:
                    self._systems.append(record)
                elif kind == protocol.HELLO:
                    self._hello(record)
                elif kind == protocol.END:
                    out.extend(self.verdict(final=True))
            out.append(record)
        if self._fresh_steps and self._clock() - self._last_verdict >= self.interval_s:
            out.extend(self.verdict())
        return out

    def _hello(self, record: dict[str, Any]) -> None:
        """The newest hello of the rank: its device once known, where its steps start and settle."""
        if record.get("device"):
            self.device = str(record["device"])
        self.first_step = protocol.first_step(record)
        world_size = record.get("world_size")
        self.world_size = world_size if isinstance(world_size, int) and world_size > 0 else 1
        settled = (record.get("diagnosis") or {}).get("settled_from")
        if isinstance(settled, int) and not isinstance(settled, bool):
            self.settled_from = settled
            self.every_check = settled == self.first_step

    def verdict(self, final: bool = False) -> list[dict[str, Any]]:
        """A verdict record on the recent window, as a list: empty while there are too few steps."""
        self._last_verdict = self._clock()
        self._fresh_steps = 0
        steps = recent(self._steps, self.window_s, at_least=MIN_STEPS)
        settled = [s for s in steps if s.get("step", 0) >= self.settled_from]
        if len(settled) >= MIN_STEPS:
            steps = settled
        if len(steps) < MIN_STEPS and final:
            steps = [*self._warmup, *steps]  # a run of a few steps: judged on what it has, warm-up included
        # (Counted as judged: a step a notebook's cell started in is left out, as a pause is.)
        if sum(not s.get("between_cells") for s in steps) < (1 if final else MIN_STEPS):
            return []
        start = steps[0].get("time", 0.0) - (steps[0].get("step_time_s") or 0.0)
        taken = training_samples(self._systems, steps[-1].get("time", 0.0))
        systems = [s for s in taken if s.get("time", 0.0) >= start] or taken[-1:]
        window = summarise(steps, systems, self.device, self._loader(), run_systems=self._systems)
        if window is None:
            return []
        window.every_check = self.every_check
        window.world_size = self.world_size
        judged, between = judge(window, holding=self._holding_between)
        found = judged["bottleneck"]
        if not final and self._said not in (None, found) and self._unconfirmed != found:
            # A change is said once two windows in a row find it: on a machine other programs load, one
            # window's figures cross a rule's threshold and back, and the verdict (with its advice, which
            # headless prints at each change) flipped between compute- and host-bound several times a minute.
            self._unconfirmed = found
            return []
        self._said, self._unconfirmed, self._holding_between = found, None, between
        return [
            protocol.make_record(
                protocol.VERDICT,
                self.rank,
                step=window.last_step,
                window=[window.first_step, window.last_step],
                final=final,
                **judged,
            )
        ]
