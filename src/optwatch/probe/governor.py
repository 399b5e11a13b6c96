"""The one cost governor: how often optwatch's spaced checks run, so that it stays within ``--budget``.

Every check optwatch makes is cheap enough to run at every step on the models it was measured on
(docs/cost.md), but not on every model: a tiny model on a fast GPU has steps of a few hundred
microseconds, where even a few kernel launches show. So the probe measures its own share of the step time
(what the live figure shows: its code on the training thread and its threads' CPU time) and, when it is
over the budget, runs the checks it can space out (per-layer statistics, the device's
phase timing, the forward check) on every Nth step only: "detail steps". The loss, the step's time and a
clip's gradient norm are recorded at every step whatever the budget.
"""

from __future__ import annotations

import collections
import math
import statistics

DETAIL_WINDOW = 20
"""The fewest steps the share is judged over."""
MAX_DETAIL_EVERY = 128
"""The widest spacing: the dashboard's phase and gradient charts still get a point every so often."""
PAUSE_FACTOR = 2.0
"""A step longer than this many times the recent median waited for something else (an evaluation, a
checkpoint, a pause, a process stopped while others run): the budget counts it as this long. Else the wait
buys checks that the training steps around it pay for: a 7 ms loop stopped for 600 ms after every 20 steps
looked five times slower to the budget, and its defaults cost what every check does (benchmarks/RESULTS.md).
Only where the host's step time is the step's (``host_paced``): on a GPU the host runs ahead, and the step
that waits for the device (a ``.item()`` every few steps) pays for the steps queued before it."""


class DetailGovernor:
    def __init__(self, budget: float, settle_steps: int):
        self.budget = budget
        """Largest share of the step time optwatch's own work may take on average (0: no limit)."""
        self.settle_steps = settle_steps
        """Steps given every check whatever it costs before the budget applies: the diagnosis builds its
        baselines there, and early training is where layers vanish or blow up."""
        self.every = 1
        self.pinned = False
        """Set after a non-finite value (any thread): every step is a detail step again, so that the next one
        is caught at the very step it happens."""
        self.close_look_until = -1
        """Every step before this one is a detail step (any thread sets it: a loss that jumped, the probe's
        ``_look_closer``)."""
        self._own_s = 0.0
        self._time_s = 0.0
        self._steps = 0
        self._detail_own_s = 0.0
        self._details = 0
        self._recent: collections.deque[float] = collections.deque(maxlen=20)
        self.host_paced = True
        """The training runs on the host (a CPU device, or none known yet): a long step waited (``PAUSE_FACTOR``)."""

    def plan(self, step: int, own_s: float, step_time: float | None, detailed: bool = True) -> tuple[int, bool]:
        """After step ``step`` (a detail step: ``detailed``) took ``step_time`` with ``own_s`` of optwatch's own:
        (the spacing now, whether the next step is a detail step).

        The share is measured over a window of at least ``DETAIL_WINDOW`` steps and two spacings, in two parts:
        what a detail step costs and what a step between costs. Above the budget, the spacing jumps to the one
        that brings the share to three quarters of the budget (share = between + (detail - between) /
        spacing), at least doubling (also where the parts cannot tell); under half of the budget, it comes down
        to that spacing, at least halving (halving cannot land above the budget), so it settles instead of
        swinging. The window runs through the first steps too (all detail steps), so that the spacing is right
        a window after them, not several hundred steps later: a ramp by factors spends that long in detail
        steps the budget has no room for.
        """
        if step_time:
            typical = self.median_step_s
            self._recent.append(step_time)
            if typical and self.host_paced:
                step_time = min(step_time, PAUSE_FACTOR * typical)
        if self.pinned or self.budget <= 0 or step < self.close_look_until:
            self.every = 1
        elif step_time:
            self._own_s += own_s
            self._time_s += step_time
            self._steps += 1
            if detailed:
                self._detail_own_s += own_s
                self._details += 1
            settling = step + 1 < self.settle_steps
            if self._steps >= max(DETAIL_WINDOW, 2 * self.every):
                if not settling:
                    self._respace()
                self._own_s = self._time_s = self._detail_own_s = 0.0
                self._steps = self._details = 0
            if settling:
                self.every = 1
        return self.every, (step + 1) % self.every == 0

    @property
    def median_step_s(self) -> float | None:
        """The median time of the last 20 steps planned (None before the first)."""
        return statistics.median(self._recent) if self._recent else None

    def _respace(self) -> None:
        share = self._own_s / self._time_s
        if share > self.budget:
            self.every = min(max(self._spacing_for(0.75 * self.budget), 2 * self.every), MAX_DETAIL_EVERY)
        elif share < self.budget / 2:
            # At least halving, and straight down to the spacing the window's costs allow where that is
            # closer: steps that grew slower (a larger batch, a slower loader) left the widest spacing
            # halving once per window of two spacings, some 500 steps with checks far rarer than they
            # need be. Both land under the budget, so it settles.
            room = self._spacing_for(0.75 * self.budget) or self.every // 2
            self.every = max(min(room, self.every // 2), 1)

    def _spacing_for(self, share: float) -> int:
        """The spacing at which this window's costs come to ``share`` of the step time (0: they cannot tell;
        with no step between detail steps in the window, those are taken to cost nothing)."""
        lights = self._steps - self._details
        if not self._details:
            return 0
        detail_s = self._detail_own_s / self._details
        between_s = (self._own_s - self._detail_own_s) / lights if lights else 0.0
        room_s = share * self._time_s / self._steps - between_s
        if room_s <= 0:
            return MAX_DETAIL_EVERY  # the steps between alone take the share: detail steps as rare as can be
        return max(math.ceil((detail_s - between_s) / room_s), 1)
