"""The job's diagnosis, in the hub: records in, alerts and verdicts out, so none of it runs in a training process.

Per rank, in that rank's order: the gradient rules (``diagnose.gradients``) over each step and its
``layers`` record, and the bottleneck verdict (``diagnose.tracker``). Across ranks, once a second: the
straggler. A rank's settings for these (alert thresholds, where the steady state starts) come with its
``hello`` record. Fields that travel from a training process for the diagnosis alone start with ``_`` and
are taken off here, before anything is published.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from typing import Any

from optwatch import protocol
from optwatch.diagnose.gradients import EXPLODING, NONFINITE, GradientDiagnosis, LayerStats, StepInput, Thresholds
from optwatch.diagnose.straggler import WINDOW_STEPS, StragglerWatch
from optwatch.diagnose.tracker import VerdictTracker

log = logging.getLogger(__name__)


class LayerColumns:
    """A rank's ``layers`` records completed from what it measured: every step the gradient norm of each
    parameter, and, for a rotating chunk of them, the weight norm, the update's norm and the count of
    non-zero gradient entries. Each parameter shows the newest value measured for it (``updated_at`` says
    at which step), so every column of a published record is complete (see docs/gradients.md).

    The zero fraction shown always agrees with the step's own gradient norm: a norm of 0 is a gradient all
    zero at this very step (1.0); otherwise it is the share counted at the newest step whose gradient was not
    all zero. A count taken at a step the parameter sat out (a task head trained on alternate steps, an idle
    expert, under ``zero_grad(set_to_none=False)``) says nothing of its gradient when it has one: shown
    beside the next step's norm it read 100% zeros, and its RMS gradient 0, a false "vanishing"."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float | None, float | None, float | None, int]] = {}
        """name -> (weight norm, update norm, zero fraction, step they were measured at); the zero fraction
        is the newest counted at a step whose gradient was not all zero (None before one)."""

    def finish(self, record: dict[str, Any]) -> None:
        names, numel = record["names"], record["numel"]
        step = record.get("step", -1)
        chunk = record.pop("_chunk", None) or []
        weights = record.pop("_weight", None) or []
        updates = record.pop("_update", None) or [None] * len(chunk)
        nonzero = record.pop("_nonzero", None) or [None] * len(chunk)
        counted: dict[int, float] = {}
        """index -> the zero fraction counted at this step."""
        for index, weight, update, nz in zip(chunk, weights, updates, nonzero):
            if 0 <= index < len(names):
                count = numel[index]
                zero = 1.0 - nz / count if isinstance(nz, float) and count else None
                if zero is not None:
                    counted[index] = zero
                    if zero >= 1.0:  # all zero: what it keeps is the share of a step that had a gradient
                        zero = self._known.get(names[index], (None, None, None, None))[2]
                self._known[names[index]] = (weight, update, zero, step)
        columns = [self._known.get(name, (None, None, None, None)) for name in names]
        grads = record.get("grad_norm")
        if grads is None or len(grads) != len(names):
            grads = [None] * len(names)
        record["weight_norm"] = [c[0] for c in columns]
        record["update_norm"] = [c[1] for c in columns]
        record["zero_frac"] = [
            counted[i] if i in counted else 1.0 if grads[i] == 0 else c[2] for i, c in enumerate(columns)
        ]
        record["updated_at"] = [c[3] for c in columns]
        record["update_ratio"] = [
            u / w if isinstance(u, float) and isinstance(w, float) and w > 0 else None for w, u, _, _ in columns
        ]


LR_CHANGE_BLAMED_STEPS = 200
"""An explosion or a NaN this many steps after a learning-rate command names it (``_blame_lr_change``)."""
RATE_RISE_BLAMED = 3.0
"""An explosion or a NaN where the script's own rate (its warm-up) rose this many times over the last
``LR_CHANGE_BLAMED_STEPS`` steps names the rise."""
_RATE_CHANGE = re.compile(
    r"group 0: (?P<before>[^\s,]+)(?: at step \d+)?(?: -> (?P<after>[^\s;,]+)|, scaled x(?P<factor>[^\s;,]+))"
)


class RankDiagnosis:
    """One rank's gradient alerts and verdicts, fed its records in order."""

    def __init__(self, rank: int):
        self.rank = rank
        self.gradients: GradientDiagnosis | None = None
        self.verdicts: VerdictTracker | None = None
        self._layers: dict[str, Any] | None = None
        self._columns = LayerColumns()
        self._forward_check = "auto"
        self._nonfinite_seen = False
        """A step's loss or gradient norm was non-finite: ``--forward-check auto`` is armed from then on."""
        self.loader: dict[str, Any] = {}
        self._lr_change: tuple[str, int, str] | None = None
        """The last learning-rate command, where it raised the rate: its text, its step, and the way back."""
        self._rates: collections.deque[tuple[int, float]] = collections.deque(maxlen=LR_CHANGE_BLAMED_STEPS)
        """(step, rate) of the latest steps: a rate the script raised (its warm-up) before an explosion."""

    def _note_lr_change(self, event: dict[str, Any]) -> None:
        command, step = str(event.get("command", "")), event.get("effective_step")
        if not command.startswith("lr") or not isinstance(step, int):
            return
        # (controls.py's "group 0: 0.05 at step 9 -> 20", or "group 0: 0.05 at step 9, scaled x2")
        said = _RATE_CHANGE.search(str(event.get("reason") or ""))
        if said is None:
            return
        try:
            before = float(said["before"])
            factor = float(said["factor"]) if said["factor"] else None
            after = before * factor if factor is not None else float(said["after"])
        except (TypeError, ValueError):
            return
        # (A lowered rate is no cause of an explosion: nor, now, the raise before it. From 0, lr*=F says it.)
        if (factor <= 1) if factor is not None else (after <= before):
            self._lr_change = None
            return
        if factor is not None:
            back = f"`lr*={1 / factor:.3g}` undoes it"
        elif before > 0:
            back = f"`lr={said['before']}` goes back to the rate before it"
        else:  # (lr=0 is no rate a command sets)
            back = "the rate was 0 before it"
        self._lr_change = (command, step, back)

    def _blame_lr_change(self, alert: dict[str, Any]) -> None:
        """An explosion or a NaN soon after a learning-rate command: the alert says which, and the way back."""
        step = alert.get("step")
        if alert.get("type") not in (EXPLODING, NONFINITE) or not isinstance(step, int):
            return
        if self._lr_change is None or not 0 <= step - self._lr_change[1] <= LR_CHANGE_BLAMED_STEPS:
            self._blame_rate_rise(alert, step)
            return
        command, applied, back = self._lr_change
        after = f"{step - applied} step{'' if step - applied == 1 else 's'} after"
        alert["message"] = f"{alert['message']}; {after} {command} at step {applied} ({back})"
        alert["suggestions"] = [f"{command} at step {applied} came just before: {back}, or try `lr*=0.1`"]

    def _blame_rate_rise(self, alert: dict[str, Any], step: int) -> None:
        """An explosion or a NaN where the rate the script sets (a warm-up) rose ``RATE_RISE_BLAMED`` times
        over the last steps: the alert says by how much, from when, and what to change."""
        if not self._rates:
            return
        low_step, low = min(self._rates, key=lambda pair: pair[1])
        now = self._rates[-1][1]
        if not now >= RATE_RISE_BLAMED * low or low_step >= step:
            return
        alert["message"] = (
            f"{alert['message']}; the learning rate rose {now / low:.3g}× in {step - low_step} steps ({low:.3g} at "
            f"step {low_step}, {now:.3g} now): a lower peak or a longer warm-up (`lr*=0.1` lowers it now)"
        )

    def configure(self, hello: dict[str, Any]) -> None:
        settings = hello.get("diagnosis") or {}
        try:
            thresholds = Thresholds().with_overrides(settings.get("grad_thresholds") or {})
        except (ValueError, TypeError):
            log.warning("optwatch hub: rank %d sent unusable alert thresholds; using the defaults", self.rank)
            thresholds = Thresholds()
        self._forward_check = str(settings.get("forward_check", "auto"))
        if self.gradients is None:
            self.gradients = GradientDiagnosis(thresholds)
        if self.verdicts is None:
            settled = settings.get("settled_from", 0)
            self.verdicts = VerdictTracker(
                self.rank, loader=lambda: self.loader, settled_from=settled if isinstance(settled, int) else 0
            )

    def observe(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``records`` of this rank completed in place, followed by what they set off."""
        found: list[dict[str, Any]] = []
        for record in records:
            kind = record.get("kind")
            if kind == protocol.HELLO:
                self.configure(record)
            elif kind == protocol.LAYERS and "_chunk" in record:
                self._columns.finish(record)
                self._layers = record
            elif kind == protocol.SYSTEM and isinstance(record.get("loader"), dict):
                self.loader = record["loader"]
            elif kind == protocol.STEP:
                found += self._step(record)
            elif kind == protocol.EVENT and record.get("status") == "accepted":
                self._note_lr_change(record)
        if self.verdicts is not None:
            try:
                return self.verdicts(records + found)
            except Exception:
                log.exception("optwatch hub: the verdict failed for rank %d and is switched off", self.rank)
                self.verdicts = None
        return records + found

    def _forward_skipped(self, record: dict[str, Any], modules: Any) -> str | None:
        """Why the step has no forward check though it is not off (``StepInput.forward_skipped``)."""
        unarmed = self._forward_check == "auto" and not self._nonfinite_seen
        compiled = record.pop("_forward_compiled", False)
        if any(isinstance(record.get(key), float) and not math.isfinite(record[key]) for key in ("loss", "grad_norm")):
            self._nonfinite_seen = True  # (the probe arms its check on the same values)
        if self._forward_check == "off" or modules:
            return None
        return "compiled" if compiled else "unarmed" if unarmed else "spaced"

    def _step(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        modules, index = record.pop("_forward_modules", ()), record.pop("_forward_index", ())
        norms = record.pop("_forward_norms", None) or []
        layers, self._layers = self._layers, None
        if layers is not None and layers.get("step") != record.get("step"):
            layers = None
        if self.gradients is None:
            return []
        if record.get("new_model"):  # (a new trial, a new fold: the last model's baselines are not this one's)
            self.gradients = GradientDiagnosis(self.gradients.thresholds)
            self._rates.clear()
        rate = record.get("lr")
        if protocol.finite(rate) and rate > 0 and isinstance(record.get("step"), int):
            self._rates.append((record["step"], rate))
        try:
            forward = [(name, norms[i]) for name, i in zip(modules, index)]
        except (IndexError, TypeError):
            forward = []  # checks that did not line up: without them, the rest is diagnosed
        observation = StepInput(
            step=record.get("step", -1),
            loss=record.get("loss"),
            grad_norm=record.get("grad_norm"),
            clip_max_norm=record.get("clip_max_norm"),
            amp_overflow=bool(record.get("amp_overflow")),
            amp_scale=record.get("amp_scale"),
            layers=LayerStats.from_record(layers) if layers is not None else None,
            forward=forward,
            forward_skipped=self._forward_skipped(record, modules),
        )
        try:
            alerts = [protocol.make_record(protocol.ALERT, self.rank, **a) for a in self.gradients.observe(observation)]
            for alert in alerts:
                self._blame_lr_change(alert)
        except Exception:
            log.exception("optwatch hub: the gradient diagnosis failed for rank %d and is switched off", self.rank)
            self.gradients = None
            return []
        if layers is not None:
            layers["alerting"] = self.gradients.alerting()
        return alerts


class JobDiagnosis:
    """Every rank's diagnosis, and the straggler across them."""

    TICK_STEPS = WINDOW_STEPS
    """The newest steps of each rank that ``tick`` reads."""

    def __init__(self) -> None:
        self.ranks: dict[int, RankDiagnosis] = {}
        self.straggler = StragglerWatch()

    def observe(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_rank: dict[int, list[dict[str, Any]]] = {}
        for record in records:
            rank = record.get("rank", 0)
            by_rank.setdefault(rank if isinstance(rank, int) else 0, []).append(record)
        out: list[dict[str, Any]] = []
        for rank, batch in by_rank.items():
            if rank < 0:
                out += batch
                continue
            diagnosis = self.ranks.get(rank)
            if diagnosis is None:
                diagnosis = self.ranks[rank] = RankDiagnosis(rank)
            out += diagnosis.observe(batch)
        return out

    def tick(self, steps_by_rank: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Once a second: what only several ranks together tell (the straggler)."""
        if len(steps_by_rank) < 2:
            return []
        return self.straggler.check([record for steps in steps_by_rank.values() for record in steps])
