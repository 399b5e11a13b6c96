"""The one cost governor: how often optwatch's spaced checks run, so that it stays within ``--budget``.

Every check optwatch makes is cheap enough to run at every step on the models it was measured on
(docs/cost.md), but not on every model: a tiny model on a fast GPU has steps of a few hundred
microseconds, where even a few kernel launches show. So the probe measures its own share of the step time
and, when it is over the budget, runs the checks it can space out (per-layer statistics, the device's
phase timing, the forward check) on every Nth step only: "detail steps". The loss, the step's time and a
clip's gradient norm are recorded at every step whatever the budget.
"""

from __future__ import annotations

import math

DETAIL_WINDOW = 20
"""The fewest steps the share is judged over."""
MAX_DETAIL_EVERY = 128
"""The widest spacing: the dashboard's phase and gradient charts still get a point every so often."""


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
        self._own_s = 0.0
        self._time_s = 0.0
        self._steps = 0

    def plan(self, step: int, own_s: float, step_time: float | None) -> tuple[int, bool]:
        """After step ``step`` took ``step_time`` with ``own_s`` of optwatch's own: (the spacing now, whether
        the next step is a detail step).

        The share is measured, not modelled: over a window of at least ``DETAIL_WINDOW`` steps and two
        spacings. Above the budget the spacing grows by the factor it is over (at most 8x at a time); under
        half of the budget, it halves. With share = fixed + detail / spacing, a halving from under half the
        budget cannot land above it, so the spacing settles instead of swinging.
        """
        if self.pinned or self.budget <= 0 or step + 1 < self.settle_steps:
            self.every = 1
        elif step_time:
            self._own_s += own_s
            self._time_s += step_time
            self._steps += 1
            if self._steps >= max(DETAIL_WINDOW, 2 * self.every):
                share = self._own_s / self._time_s
                if share > self.budget:
                    factor = min(math.ceil(share / self.budget), 8)
                    self.every = min(factor * self.every, MAX_DETAIL_EVERY)
                elif share < self.budget / 2:
                    self.every = max(self.every // 2, 1)
                self._own_s = self._time_s = 0.0
                self._steps = 0
        return self.every, (step + 1) % self.every == 0
