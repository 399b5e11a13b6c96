"""Gradient health: per-module statistics, and the rules behind the `vanishing`, `exploding`, `nonfinite`
and `amp_overflow` alerts.

The probe feeds one ``StepInput`` per optimizer step, in step order, from one thread; ``observe`` returns
the alerts that step starts. Every alert fires once per episode: an episode ends only after
``recover_steps`` healthy observations in a row (with a laxer bar for "healthy" than for "alert"), so a
signal hovering around a threshold never repeats its alert. Pure Python: no torch, no textual.
"""

from __future__ import annotations

import array
import collections
import functools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

VANISHING = "vanishing"
EXPLODING = "exploding"
NONFINITE = "nonfinite"
AMP_OVERFLOW = "amp_overflow"
ALERT_TYPES = (VANISHING, EXPLODING, NONFINITE, AMP_OVERFLOW)

# 1.4826 * MAD estimates the standard deviation of normally distributed values.
_MAD_TO_SIGMA = 1.4826
GAP_SPACINGS = 4
"""An observation this many times the usual spacing after the last one comes after a long gap: a rise is
only an explosion if it is one over the last value too (a smooth rise over the gap is not)."""
RECENT_VALUES = 5
"""A layer's last few RMS gradients, which a jump must clear by the root of the exploding factor."""
_MAX_NAMED = 6  # layers spelled out in a message; the alert's `layers` field has them all


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Thresholds:
    """When a rule fires. Every field can be changed with ``optwatch run --grad-threshold NAME=VALUE``."""

    window: int = field(
        default=20,
        metadata={"help": "measured steps in a median window; also the history a baseline needs first"},
    )
    baseline_window: int = field(
        default=50, metadata={"help": "observations in an exploding baseline (median and MAD)"}
    )
    vanishing_ratio: float = field(
        default=1e-4,
        metadata={"help": "a layer vanishes below this fraction of the largest later layer's RMS gradient"},
    )
    vanishing_floor: float = field(default=1e-9, metadata={"help": "... or below this absolute RMS gradient"})
    exploding_factor: float = field(
        default=10.0, metadata={"help": "a norm this many times its baseline median is exploding"}
    )
    exploding_mads: float = field(
        default=6.0, metadata={"help": "... and must also sit this many robust deviations (MAD) above it"}
    )
    exploding_growth: float = field(
        default=100.0,
        metadata={"help": "a global norm whose window median grew this much, steadily, is exploding"},
    )
    update_ratio_limit: float = field(
        default=0.1,
        metadata={"help": "an update ratio above this, and exploding_factor times its baseline, is exploding"},
    )
    exploding_layer_share: float = field(
        default=0.01,
        metadata={
            "help": "a layer's RMS gradient rise counts when its gradient is at least this share of all the "
            "layers' norm (one growing from nothing beside the rest, as LoRA's adapters do, is not exploding)"
        },
    )
    recover_steps: int = field(default=20, metadata={"help": "healthy observations in a row that end an episode"})
    amp_skip_limit: int = field(
        default=20, metadata={"help": "GradScaler-skipped steps in a row that make an overflow a broken run"}
    )

    def with_overrides(self, overrides: Mapping[str, float]) -> Thresholds:
        """A copy with ``overrides`` applied; ValueError with a one-line reason for a bad name or value."""
        known = {f.name: f for f in fields(self)}
        changes: dict[str, Any] = {}
        for name, value in overrides.items():
            parse_override(f"{name}={value}")  # a known name
            if known[name].type == "int":
                if float(value) != int(value) or int(value) < 1:
                    raise ValueError(f"{name} must be a positive whole number, got {value!r}")
                changes[name] = int(value)
            else:
                if not math.isfinite(float(value)) or float(value) < 0:
                    raise ValueError(f"{name} must be a non-negative number, got {value!r}")
                changes[name] = float(value)
        result = replace(self, **changes)
        if result.window < 2:
            raise ValueError(f"window must be at least 2, got {result.window}")
        if result.baseline_window < result.window:
            raise ValueError(f"baseline_window ({result.baseline_window}) must be at least window ({result.window})")
        if not 0 < result.vanishing_ratio < 1:
            raise ValueError(f"vanishing_ratio must be between 0 and 1, got {result.vanishing_ratio}")
        for name in ("exploding_factor", "exploding_growth"):
            if getattr(result, name) <= 1:
                raise ValueError(f"{name} must be greater than 1, got {getattr(result, name)}")
        return result

    @staticmethod
    def describe() -> list[tuple[str, Any, str]]:
        """(name, default, help) of every threshold, for the CLI and the docs."""
        return [(f.name, f.default, f.metadata["help"]) for f in fields(Thresholds)]


def parse_override(text: str) -> tuple[str, float]:
    """``"exploding_factor=20"`` -> ``("exploding_factor", 20.0)``; ValueError with the reason otherwise.
    Values are checked together by ``Thresholds.with_overrides``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    name = name.strip()
    known = [f.name for f in fields(Thresholds)]
    if name not in known:
        raise ValueError(f"unknown gradient threshold {name!r} (known: {', '.join(known)})")
    try:
        return name, float(value)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


# --- per-layer numbers ------------------------------------------------------------------------------


def module_of(param_name: str) -> str:
    """The module that owns a parameter: ``"layer1.conv1.weight"`` -> ``"layer1.conv1"``."""
    module, _, _ = param_name.rpartition(".")
    return module or "(model)"


@dataclass(frozen=True)
class ModuleStats:
    """One module's parameters taken together (norms combine as the root of the summed squares)."""

    name: str
    params: tuple[str, ...]
    numel: int
    grad_norm: float
    weight_norm: float
    update_norm: float | None
    zero_frac: float
    fresh: bool = True
    """Its weight and update norms were measured at this very step (not carried from an earlier one)."""

    @property
    def update_ratio(self) -> float | None:
        """||Δw|| / ||w|| of the last optimizer step (w before the step); None when not measured."""
        if self.update_norm is None or not self.weight_norm > 0:
            return None
        return self.update_norm / self.weight_norm

    @property
    def grad_rms(self) -> float:
        """Root mean square of the non-zero gradient entries: comparable across layers of any size."""
        if not _finite(self.grad_norm) or self.grad_norm == 0:
            return self.grad_norm
        nonzero = self.numel * (1.0 - self.zero_frac)
        return self.grad_norm / math.sqrt(max(nonzero, 1.0))  # (a norm that is not 0 has a non-zero entry)


@dataclass(frozen=True)
class LayerStats:
    """Per-parameter numbers of one measured step (the fields of a ``layers`` record), in model order."""

    names: Sequence[str]
    numel: Sequence[int]
    grad_norm: Sequence[float]
    weight_norm: Sequence[float]
    update_norm: Sequence[float | None]
    zero_frac: Sequence[float]
    fresh: Sequence[bool] = ()
    """Per parameter: its weight and update norms are this step's (the probe measures them for a rotating
    chunk of the parameters at a time; the others carry their newest values). Empty: all are."""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LayerStats:
        names = record.get("names") or []
        count = len(names)

        def column(key: str, default: Any) -> list[Any]:
            values = record.get(key)
            # Lists from a record file or the probe; arrays from the wire (see protocol: packed columns).
            if isinstance(values, (list, tuple, array.array)) and len(values) == count:
                return [default if value is None else value for value in values]
            return [default] * count

        step = record.get("step")
        measured_at = record.get("updated_at")
        fresh = [at == step for at in measured_at] if isinstance(measured_at, (list, tuple, array.array)) else []
        return cls(
            names=list(names),
            numel=column("numel", 1),
            grad_norm=column("grad_norm", math.nan),
            weight_norm=column("weight_norm", math.nan),
            update_norm=[None if v is None else v for v in record.get("update_norm") or [None] * count]
            if len(record.get("update_norm") or []) == count
            else [None] * count,
            zero_frac=column("zero_frac", 0.0),
            fresh=fresh if len(fresh) == count else [],
        )

    def modules(self) -> list[ModuleStats]:
        return self._modules

    @functools.cached_property
    def _modules(self) -> list[ModuleStats]:
        """Computed once per step: every rule asks for them."""
        grouped: dict[str, list[int]] = {}
        for index, name in enumerate(self.names):
            grouped.setdefault(module_of(name), []).append(index)
        result = []
        for module, indices in grouped.items():
            numel = sum(self.numel[i] for i in indices)
            updates = [self.update_norm[i] for i in indices]
            # A count of all zeros beside a non-zero norm is not of this gradient (an older record file's: the
            # hub keeps them apart, ``LayerColumns``): unknown, and the RMS is over all the entries.
            zeros = sum(self.zero_frac[i] * self.numel[i] for i in indices if self._counted(i))
            result.append(
                ModuleStats(
                    name=module,
                    params=tuple(self.names[i] for i in indices),
                    numel=numel,
                    grad_norm=_root_sum_squares(self.grad_norm[i] for i in indices),
                    weight_norm=_root_sum_squares(self.weight_norm[i] for i in indices),
                    update_norm=None if any(u is None for u in updates) else _root_sum_squares(updates),
                    zero_frac=zeros / numel if numel else 0.0,
                    fresh=all(self.fresh[i] for i in indices) if self.fresh else True,
                )
            )
        return result

    def _counted(self, index: int) -> bool:
        """The parameter's zero fraction can be of its gradient at this step."""
        return self.zero_frac[index] < 1.0 or not self.grad_norm[index] > 0


def _root_sum_squares(values: Any) -> float:
    total = 0.0
    for value in values:
        total += value * value  # a NaN or inf stays NaN or inf, as it should
    return math.sqrt(total) if total >= 0 else total


# --- episodes ---------------------------------------------------------------------------------------


class Episode:
    """Fires once when trouble starts; over after ``recover`` healthy observations in a row."""

    def __init__(self, recover: int):
        self.recover = recover
        self.active = False
        self._healthy = 0

    def update(self, troubled: bool) -> bool:
        """Feed one observation; True only when it starts a new episode."""
        if troubled:
            self._healthy = 0
            if not self.active:
                self.active = True
                return True
            return False
        if self.active:
            self._healthy += 1
            if self._healthy >= self.recover:
                self.active = False
        return False

    def end(self) -> None:
        self.active = False
        self._healthy = 0


def _lone_spikes_reach(values: Sequence[float]) -> float:
    """The largest of ``values`` that is more than twice both its neighbours (0 without any)."""
    return max(
        (values[i] for i in range(1, len(values) - 1) if values[i] > 2 * max(values[i - 1], values[i + 1])),
        default=0.0,
    )


LOSS_BASELINE_WINDOWS = 10
"""The loss's baseline is this many baseline windows long (``ExplodingRule._loss``)."""
SPIKE_MEMORY_WINDOWS = 10
"""A lone spike that started an episode is part of its signal's spikes' reach for this many baseline windows
of observations after it (``_Baseline.remember_spike``)."""


class _Baseline:
    """A signal's recent values and the steps they were seen at; its median, MAD and usual spacing are
    refreshed every few additions (cheap for many layers)."""

    _REFRESH = 5

    def __init__(self, size: int, signed: bool = False, recent: int = 0):
        self.signed = signed
        """Values of either sign count (a loss: a WGAN critic's is negative); else positive ones only (norms)."""
        self.values: collections.deque[float] = collections.deque(maxlen=size)
        self._steps: collections.deque[int] = collections.deque(maxlen=size)
        self._stale = 0
        self._median: float | None = None
        self._mad = 0.0
        self.size = 0.0
        """Signed: the values' typical magnitude (median of |value|), the scale a departure is weighed on."""
        self.reach = 0.0
        """How far the values' lone spikes went (signed: in departure from the median): the largest value that is
        more than twice both its neighbours (0 without any). A trend is no spike: a dive is not its own reach."""
        self.widest = 0.0
        """The largest value (signed: departure from the median), spike or not, but for the ``recent`` newest
        (where a trend, a dive under way, would stand in for its own bar)."""
        self._recent = recent
        self._fresh_reach = 0.0
        """The largest lone spike (signed: in departure from the median) added since the last refresh: a spike a
        few observations old raised the bar only at the next refresh, and the next value a little beyond it was
        "exploding" (a diffusion model's layer at 25x its median, four steps after it spiked to 21x)."""
        self.counted = 0
        """How many values the median and MAD are of."""
        self._spacing = 1.0
        self._added = 0
        self._remembered: collections.deque[tuple[int, float]] = collections.deque(maxlen=8)
        """(values added by then, departure) of lone spikes that started an episode of their own (never in the
        values: baselines learn outside episodes), kept for ``SPIKE_MEMORY_WINDOWS`` windows of values."""

    def add(self, value: float | None, step: int) -> None:
        if _finite(value) and (value > 0 or self.signed):
            self.values.append(value)
            self._steps.append(step)
            self._stale += 1
            self._added += 1
            if len(self.values) >= 3:
                # The value before this one, now that it has both neighbours: a lone spike (a trend, a dive
                # under way, is none) since the refresh, or the last one it saw, which it could not judge.
                before, spike, after = (self._departure(self.values[i]) for i in (-3, -2, -1))
                if spike > 2 * max(before, after):
                    self._fresh_reach = max(self._fresh_reach, spike)

    def stats(self, min_count: int) -> tuple[float, float] | None:
        if len(self.values) < min_count:
            return None
        if self._median is None or self._stale >= self._REFRESH:
            values = list(self.values)
            # The median, MAD, size and spikes of the newest ``recent`` values (all, without a ``recent``): a
            # converging loss's level is now's; the older values only set how wide its tail went (``widest``).
            core = values[-self._recent :] if self._recent else values
            self.counted = len(core)
            self._median = statistics.median(core)
            self._mad = statistics.median(abs(v - self._median) for v in core)
            if self.signed:
                self.size = statistics.median(abs(v) for v in core)
            departures = [abs(v - self._median) for v in values] if self.signed else values
            self.reach = _lone_spikes_reach(departures[len(values) - len(core) :])
            self.widest = max(departures[: len(values) - len(core)], default=0.0)
            steps = list(self._steps)
            self._spacing = statistics.median(b - a for a, b in zip(steps, steps[1:])) if len(steps) > 1 else 1.0
            self._stale = 0
            self._fresh_reach = 0.0
        return self._median, self._mad

    @property
    def reach_now(self) -> float:
        """``reach``, or a lone spike added since it was measured, or one remembered, where that went further."""
        memory = SPIKE_MEMORY_WINDOWS * (self.values.maxlen or 1)
        remembered = max((d for at, d in self._remembered if self._added - at <= memory), default=0.0)
        return max(self.reach, self._fresh_reach, remembered)

    def remember_spike(self, value: float) -> None:
        """``value`` started an episode that ended with the next values back to normal: a lone spike. A PPO
        run's minibatch gradient norm spiked to 264x its median every hundred-odd steps and each was an error
        alert: the spike never joined the baseline (it learns outside episodes), so its reach never rose."""
        self._remembered.append((self._added, self._departure(value)))

    def _departure(self, value: float) -> float:
        """``value`` as the spikes' reach weighs it (signed: its departure from the median)."""
        return abs(value - self._median) if self.signed and self._median is not None else value

    def recent_median(self, count: int) -> float | None:
        """The median of the last ``count`` values (None without any)."""
        return statistics.median(list(self.values)[-count:]) if self.values else None

    def long_gap_before(self, step: int) -> float | None:
        """The last value when ``step`` comes after a gap of many times the values' usual spacing (the
        checks spaced out by ``--budget``, or a pause in them), else None."""
        if not self._steps or step - self._steps[-1] <= GAP_SPACINGS * max(self._spacing, 1.0):
            return None
        return self.values[-1]

    def clear(self) -> None:
        self.values.clear()
        self._steps.clear()
        self._median = None
        self._fresh_reach = 0.0
        self._remembered.clear()


# --- the rules --------------------------------------------------------------------------------------


@dataclass
class StepInput:
    """What one optimizer step told us. ``layers`` only on measured steps (``--grad-every``)."""

    step: int
    loss: float | None = None
    grad_norm: float | None = None
    """Global gradient norm, after AMP unscaling and before clipping, if the script clips."""
    clip_max_norm: float | None = None
    """The norm the script clips gradients to, when it clips."""
    amp_overflow: bool = False
    """GradScaler found inf/NaN gradients and skipped ``optimizer.step()``."""
    amp_scale: float | None = None
    layers: LayerStats | None = None
    forward: Sequence[tuple[str, float]] = ()
    """(module, sum of its output) for each checked forward output of the step, in call order."""
    forward_skipped: str | None = None
    """Why no forward check ran at this step though it is not off: ``"unarmed"``, ``--forward-check auto``
    before the first non-finite value; ``"spaced"``, a step between two detail steps (``--budget``);
    ``"compiled"``, a model compiled in place (``model.compile()``), inside whose graph nothing is checked."""


def _times(level: float) -> str:
    """``12×``, ``1.2e+17×``: how many times its median, whole digits only while they read."""
    return f"{level:.0f}×" if level < 1e4 else f"{level:.2g}×"


def _names(names: Sequence[str]) -> str:
    """``'0', '2', … (+3)``: layer names quoted, since many are bare numbers (``nn.Sequential``)."""
    shown = ", ".join(f"'{name}'" for name in names[:_MAX_NAMED])
    return shown + (f", … (+{len(names) - _MAX_NAMED})" if len(names) > _MAX_NAMED else "")


def _alert(kind: str, step: int, severity: str, message: str, layers: Sequence[str], **details: Any) -> dict:
    return {"type": kind, "step": step, "severity": severity, "message": message, "layers": list(layers), **details}


class AmpOverflowRule:
    """A step that GradScaler skipped because of inf/NaN gradients, with a finite loss: routine, not broken."""

    def __init__(self, t: Thresholds):
        self.episode = Episode(t.recover_steps)
        self.limit = t.amp_skip_limit
        self.in_a_row = 0
        self.total = 0

    @property
    def stuck(self) -> bool:
        """So many skips in a row that the scaler cannot find any scale that works."""
        return self.in_a_row >= self.limit

    def observe(self, s: StepInput) -> dict | None:
        benign = s.amp_overflow and _finite(s.loss)
        if s.amp_overflow:
            self.in_a_row += 1
            self.total += 1
        else:
            self.in_a_row = 0
        if not self.episode.update(benign):
            return None
        scale = f" at loss scale {s.amp_scale:g}" if _finite(s.amp_scale) else ""
        return _alert(
            AMP_OVERFLOW,
            s.step,
            "info",
            f"GradScaler found inf/NaN gradients{scale} and skipped this step; it lowers the scale and carries "
            "on: an AMP overflow, not a broken run",
            [],
            scale=s.amp_scale,
        )


COMPILED_IN_PLACE = (
    "no module can be named: the model is compiled in place (model.compile()), and nothing inside a "
    "torch.compile graph is checked (`torch.compile(model)` returns a wrapper whose output is; the non-finite "
    "gradients say which parameters it reached)"
)


class NonFiniteRule:
    """The loss or a gradient is NaN/Inf, or a module's output turned non-finite."""

    def __init__(self, t: Thresholds):
        self.episode = Episode(t.recover_steps)
        self.layers: list[str] = []
        self._finite_before: set[str] = set()
        """Modules whose output has been finite at least once (a module that always emits -inf, e.g. a
        mask, is by design and never the culprit unless nothing else is)."""
        self._unseen_start = False
        """The episode began at a step no forward check ran at: its first checked step names the module."""
        self._began = 0

    def observe(self, s: StepInput, amp_stuck: bool = False) -> dict | None:
        loss_bad = s.loss is not None and not _finite(s.loss)
        params = []
        if s.layers is not None:
            params = [n for n, g in zip(s.layers.names, s.layers.grad_norm) if not _finite(g)]
        grads_bad = bool(params) or (s.grad_norm is not None and not _finite(s.grad_norm))
        outputs = [name for name, value in s.forward if not _finite(value)]
        turned = [name for name in outputs if name in self._finite_before]
        self._finite_before.update(name for name, value in s.forward if _finite(value))
        broken = loss_bad or (grads_bad and not s.amp_overflow) or bool(turned) or amp_stuck
        culprit = turned[0] if turned else (outputs[0] if outputs and (loss_bad or grads_bad) else None)
        if not self.episode.update(broken):
            if not self.episode.active:
                self.layers = []
            elif culprit is not None and self._unseen_start:
                return self._named_later(s, culprit)
            elif s.forward_skipped == "compiled" and self._unseen_start:
                self._unseen_start = False  # (what the episode's first alert promised cannot come: said once)
                message = f"at step {s.step}, the first checked since step {self._began}: {COMPILED_IN_PLACE}"
                return _alert(NONFINITE, s.step, "error", message, self.layers, module=None, params=[], loss=s.loss)
            return None
        unseen = culprit is None and s.forward_skipped in ("unarmed", "spaced")  # (a check comes later)
        self._unseen_start, self._began = unseen, s.step
        parts = []
        if loss_bad:
            parts.append(f"loss is {s.loss}")
        if culprit is not None:
            parts.append(f"first non-finite output: module '{culprit}'")
        if params:
            plural = "s" if len(params) > 1 else ""
            parts.append(f"non-finite gradients in {len(params)} parameter{plural}: {_names(params)}")
        elif grads_bad and not s.amp_overflow:
            parts.append(f"global gradient norm is {s.grad_norm}")
        if amp_stuck:
            scale = f" (loss scale now {s.amp_scale:g})" if _finite(s.amp_scale) else ""
            parts.append(f"GradScaler skipped every step for a while{scale}: no scale makes the gradients finite")
        elif s.amp_overflow:
            parts.append("GradScaler skipped the step")
        if not loss_bad and culprit is not None and not grads_bad:
            parts.append("the loss is still finite")
        if culprit is None and s.forward_skipped == "compiled" and (loss_bad or grads_bad):
            parts.append(COMPILED_IN_PLACE)
        elif culprit is None and s.forward_skipped and (loss_bad or grads_bad):
            why = (
                "it starts at the first non-finite value, this one (--forward-check auto; `always` names the "
                "first one too, at a cost)"
                if s.forward_skipped == "unarmed"
                else "optwatch's --budget spaces them out"
            )
            parts.append(
                f"no forward check ran at this step: {why}; every step is checked from now on: the first checked "
                "step names the module where it shows, and a recurrence is named at its very step"
            )
        modules = ([culprit] if culprit else []) + [m for m in dict.fromkeys(map(module_of, params)) if m != culprit]
        self.layers = modules
        return _alert(NONFINITE, s.step, "error", "; ".join(parts), modules, module=culprit, params=params, loss=s.loss)

    def _named_later(self, s: StepInput, culprit: str) -> dict:
        """The first forward check of an episode whose start no check saw (``--forward-check auto`` arms at
        the first non-finite value): the module is named where it shows now. By then the step's updates may
        have spread the NaN to the weights, so it is where the values go wrong now, not always where they
        first did: said so, and the run goes on in its episode."""
        self._unseen_start = False
        self.layers = [culprit, *[m for m in self.layers if m != culprit]]
        message = (
            f"first non-finite output at step {s.step}, the first checked since step {self._began}: module "
            f"'{culprit}' (its input or its own parameters are not finite; if its parameters are, the NaN "
            "reached the weights through an update, and the module where it began may be another)"
        )
        return _alert(NONFINITE, s.step, "error", message, self.layers, module=culprit, params=[], loss=s.loss)


@dataclass
class _Rise:
    name: str
    what: str
    value: float
    median: float
    size: float | None = None
    """A signed signal's typical magnitude: its level is measured on it (a loss of -105 against -9.5 is 11x)."""

    @property
    def level(self) -> float:
        if self.size is not None:
            return abs(self.value - self.median) / self.size + 1 if self.size else math.inf
        return self.value / self.median

    @property
    def against(self) -> str:
        """What the level is measured against, in words."""
        if self.size is not None and abs(self.median) < self.size / 2:
            return f"its usual size {self.size:.3g}"  # a loss about 0: no multiple of its median means much
        return f"its median {self.median:.3g}"


class ExplodingRule:
    """A norm far above its own robust baseline, an update ratio that jumped, or steady growth by orders of
    magnitude. Baselines learn only outside episodes, so an explosion never becomes the new normal; an
    episode that outlasts a whole baseline window is taken as a new regime and the baselines start over."""

    def __init__(self, t: Thresholds):
        self.t = t
        self.episode = Episode(t.recover_steps)
        self.layers: list[str] = []
        self._global = _Baseline(t.baseline_window)
        self._loss = _Baseline(LOSS_BASELINE_WINDOWS * t.baseline_window, signed=True, recent=t.baseline_window)
        """The loss, seen at every step: it stands in for the gradients at a step whose were not measured. A
        mini-batch loss has a heavy tail (near convergence a batch of hard examples is 10x the median one):
        weighed on its newest window as the others, a rise must also clear the widest departure among the
        older values it keeps (``_Baseline.widest``, ``_rise``)."""
        self._rms: dict[str, _Baseline] = {}
        self._ratio: dict[str, _Baseline] = {}
        self._block: list[float] = []
        self._block_medians: collections.deque[float] = collections.deque(maxlen=10)
        self._episode_length = 0
        self._openers: list[tuple[_Baseline, float]] = []
        """The baselines (and values) whose rises started an episode at the last observation."""

    def _rise(
        self,
        baseline: _Baseline,
        value: float | None,
        name: str,
        what: str,
        bar: float,
        step: int,
        jump: bool = False,
        whole: bool = False,
    ) -> _Rise | None:
        """The rise of ``value`` over ``baseline`` when it clears ``bar`` (factor, and MAD outside episodes).
        After a long gap in the observations, it must also clear ``bar`` over the last value before the gap.
        ``jump``: to start an episode it must also clear the root of ``bar`` over its last few values (a
        layer's gradient that grows smoothly, 7% a step as a first layer's may early on, is not exploding; the
        global norm's steady growth has a rule of its own). ``whole``: to start an episode it must also go
        beyond the widest departure in the baseline but its newest by the root of ``bar``, lone spike or not
        (the loss's heavy tail: a batch of hard examples, now and then, is 10x the median one)."""
        if value is None or math.isnan(value):
            return None
        stats = baseline.stats(self.t.window)
        if stats is None:
            return None
        median, mad = stats
        size = baseline.size if baseline.signed else None
        # To start an episode it must also go beyond its lone spikes' reach by the root of ``bar``: a signal with a
        # heavy tail (a one-task meta-batch's loss and gradients) spikes to 10x its median in healthy runs.
        beyond = self.episode.active or math.sqrt(bar) * max(baseline.reach_now, baseline.widest if whole else 0.0)
        if size is not None:
            # Away from its median by (bar - 1) times its usual size, either way (a critic's loss diving to
            # -1e4); the size, not the median, for a loss that lives about 0 (a policy loss).
            departure = abs(value - median)
            far_out = departure > self.t.exploding_mads * _MAD_TO_SIGMA * mad
            if not (departure > (bar - 1) * size and (self.episode.active or (far_out and departure > beyond))):
                return None
        else:
            far_out = value > median + self.t.exploding_mads * _MAD_TO_SIGMA * mad
            if not (value > bar * median and (self.episode.active or (far_out and value > beyond))):
                return None
        last = baseline.long_gap_before(step) if not self.episode.active else None
        if last is not None and not abs(value - last) > (bar - 1) * max(abs(last), size or 0.0):
            return None  # grown over the gap, maybe smoothly (LoRA's B from zero): not an explosion seen
        if jump and not self.episode.active:
            recent = baseline.recent_median(RECENT_VALUES)
            if recent is not None and not value > math.sqrt(bar) * recent:
                return None
        return _Rise(name, what, value, median, size)

    def observe(self, s: StepInput) -> dict | None:
        t = self.t
        # With the episode running, "still exploding" has a lower bar than "starts exploding" (hysteresis).
        bar = t.exploding_factor if not self.episode.active else math.sqrt(t.exploding_factor)
        # Clipping caps the norm the optimizer sees; what explodes is the norm before it, which this is.
        global_norm = s.grad_norm
        what = "gradient norm before clipping" if s.clip_max_norm is not None else "gradient norm"
        if s.amp_overflow or (not _finite(global_norm) and not _finite(s.loss)):
            global_norm = None  # the scaler's business, or the non-finite rule's
        global_rise = self._rise(self._global, global_norm, "global", "gradient norm", bar, s.step)
        # A step between two detail steps (--budget) has no gradient figures: a loss that jumped tells instead.
        unmeasured = s.grad_norm is None and s.layers is None and not s.amp_overflow
        loss_rise = self._rise(self._loss, s.loss, "loss", "loss", bar, s.step, whole=True) if unmeasured else None
        modules = s.layers.modules() if s.layers is not None and not s.amp_overflow else []
        found: list[_Rise | None] = []
        # What a layer's rise must weigh: a real explosion soon dominates the gradient; a layer at a
        # millionth of it that grew tenfold (LoRA's A while its B grows from zero) is no alarm.
        weighty = t.exploding_layer_share * math.sqrt(sum(m.grad_norm**2 for m in modules if _finite(m.grad_norm)))
        for m in modules:
            rms = self._rms.setdefault(m.name, _Baseline(t.baseline_window))
            ratio = self._ratio.setdefault(m.name, _Baseline(t.baseline_window))
            if not m.grad_norm < weighty:  # (NaN, an infinity: the non-finite rule's, or counted)
                found.append(self._rise(rms, m.grad_rms, m.name, "RMS gradient", bar, s.step, jump=True))
            if (
                m.fresh
                and m.update_ratio is not None
                and (self.episode.active or m.update_ratio > t.update_ratio_limit)
            ):
                found.append(self._rise(ratio, m.update_ratio, m.name, "update ratio", bar, s.step))
        rises = [r for r in found if r is not None]
        growth = self._growth(global_norm) if not self.episode.active else None
        troubled = bool(global_rise or rises or growth or loss_rise)
        started = self.episode.update(troubled)
        risen = [(self._global, global_rise.value)] if global_rise else []
        risen += [(self._loss, loss_rise.value)] if loss_rise else []
        risen += [(self._ratio[r.name] if r.what == "update ratio" else self._rms[r.name], r.value) for r in rises]
        for baseline, value in self._openers:
            if all(again is not baseline for again, _ in risen):
                baseline.remember_spike(value)  # back under the "still exploding" bar at once: a lone spike
        self._openers = risen if started and not growth else []
        if self.episode.active:
            self._episode_length += 1
            if self._episode_length > t.baseline_window:
                self._start_over()
        else:
            self._episode_length = 0
            self.layers = []
            self._global.add(global_norm, s.step)
            self._loss.add(s.loss, s.step)
            for m in modules:
                self._rms[m.name].add(m.grad_rms, s.step)
                if m.fresh:  # a value carried from an earlier step is in the baseline already
                    self._ratio[m.name].add(m.update_ratio, s.step)
        if not started:
            return None
        rises.sort(key=lambda r: r.level, reverse=True)
        layers = list(dict.fromkeys(r.name for r in rises))
        self.layers = layers
        if global_rise:
            lead = (
                f"global {what} {global_rise.value:.3g} is {_times(global_rise.level)} its median "
                f"{global_rise.median:.3g} (last {len(self._global.values)} steps)"
            )
        elif loss_rise and not rises:
            lead = (
                f"loss {loss_rise.value:.3g} is {_times(loss_rise.level)} {loss_rise.against} (last "
                f"{self._loss.counted} steps); its gradients were not measured at this step (optwatch's "
                "--budget spaces the checks out): every step is checked from about a publish interval after it"
            )
        elif growth:
            lead = (
                f"global {what} grew {growth[1] / growth[0]:.0f}× steadily "
                f"(window median {growth[0]:.3g} → {growth[1]:.3g})"
            )
        else:
            top = rises.pop(0)
            what = "updates jumped: update ratio" if top.what == "update ratio" else top.what
            lead = f"{what} {top.value:.3g} in '{top.name}', {_times(top.level)} its median {top.median:.3g}"
        detail = ", ".join(f"'{r.name}' {r.what} {r.value:.3g} ({_times(r.level)})" for r in rises[:3])
        message = lead + (f"; also {detail}" if detail else "")
        first = global_rise or (loss_rise if not rises and not growth else None)
        value = first.value if first else (growth[1] if growth else top.value)
        baseline = first.median if first else (growth[0] if growth else top.median)
        return _alert(EXPLODING, s.step, "error", message, layers, value=value, baseline=baseline)

    def _growth(self, value: float | None) -> tuple[float, float] | None:
        """(old, new) window medians when the global norm grew steadily by ``exploding_growth``."""
        if not _finite(value):
            return None
        self._block.append(value)
        if len(self._block) < self.t.window:
            return None
        self._block_medians.append(statistics.median(self._block))
        self._block = []
        recent = list(self._block_medians)[-3:]
        lowest = min(self._block_medians)
        if len(recent) == 3 and recent[0] < recent[1] < recent[2] and recent[2] >= self.t.exploding_growth * lowest:
            return lowest, recent[2]
        return None

    def _start_over(self) -> None:
        self.episode.end()
        self._episode_length = 0
        self._global.clear()
        self._loss.clear()
        for baseline in (*self._rms.values(), *self._ratio.values()):
            baseline.clear()
        self._block_medians.clear()
        self._block = []


class VanishingRule:
    """Layers whose RMS gradient stays orders of magnitude below a later layer's (or below a floor), judged
    on medians over a window, after a warm-up window (layers initialised at zero need a few steps)."""

    def __init__(self, t: Thresholds):
        self.t = t
        self.episode = Episode(t.recover_steps)
        self.layers: list[str] = []
        self._history: dict[str, collections.deque[float]] = {}
        self._all_zero: dict[str, int] = {}
        """Per layer, its measured steps in a row whose gradient was all zero."""
        self._last_rms: dict[str, float] = {}
        """Per layer, its RMS gradient at the last measured step it was not all zero."""
        self._measured = 0

    def observe(self, s: StepInput) -> dict | None:
        if s.layers is None or s.amp_overflow:
            return None
        t = self.t
        modules = s.layers.modules()
        for m in modules:
            if not _finite(m.grad_rms):
                continue
            # A gradient all zero at a step is a step the layer sat out (a task head trained on alternate
            # steps, an idle expert, under ``zero_grad(set_to_none=False)``), as one without a gradient is,
            # until it has been all zero for a whole window: then it vanished (underflowed) completely. One
            # that was under the floor when it last was not all zero underflowed at this step: a deep sigmoid
            # stack's layer went between 1e-23 and exactly 0, and was left out of the vanishing ones.
            zero_steps = self._all_zero[m.name] = self._all_zero.get(m.name, 0) + 1 if m.grad_norm == 0 else 0
            if zero_steps == 0:
                self._last_rms[m.name] = m.grad_rms
            underflowed = zero_steps > 0 and self._last_rms.get(m.name, math.inf) < t.vanishing_floor
            if zero_steps == 0 or zero_steps >= t.window or underflowed:
                self._history.setdefault(m.name, collections.deque(maxlen=t.window)).append(m.grad_rms)
        self._measured += 1
        if self._measured < 2 * t.window:
            return None
        ready = [m.name for m in modules if len(self._history.get(m.name, ())) >= t.window]
        medians = {name: statistics.median(self._history[name]) for name in ready}
        # Hysteresis: once an episode runs, a layer counts as recovered only well clear of the bar.
        slack = 1.0 if not self.episode.active else 10.0
        vanishing, later_max, reference = [], 0.0, {}
        for name in reversed(ready):
            reference[name] = later_max
            later_max = max(later_max, medians[name])
        for name in ready:
            median = medians[name]
            if median < slack * t.vanishing_floor or median < slack * t.vanishing_ratio * reference[name]:
                vanishing.append(name)
        started = self.episode.update(bool(vanishing))
        if not self.episode.active:
            self.layers = []
            return None
        if not started:
            return None
        self.layers = vanishing
        top = max(ready, key=lambda n: medians[n])
        low = min(medians[n] for n in vanishing)
        high = max(medians[n] for n in vanishing)
        span = f"{low:.1g}…{high:.1g}" if high > low else f"{low:.1g}"
        message = (
            f"gradients vanish in {len(vanishing)} of {len(ready)} layers ({_names(vanishing)}): RMS gradient "
            f"{span}, under {t.vanishing_ratio:g}× a later layer's or {t.vanishing_floor:g} "
            f"(largest: '{top}' {medians[top]:.2g}; medians over {t.window} steps)"
        )
        silent = [name for name in vanishing if self._all_zero.get(name, 0) >= t.window]
        if silent:
            message += (
                f"; {_names(silent)}: every gradient entry exactly 0 for {t.window} measured steps in a row "
                "(underflowed, or no loss reaches them: an expert no token is routed to, a branch never run)"
            )
        return _alert(VANISHING, s.step, "warning", message, vanishing, largest=top)


class GradientDiagnosis:
    """All gradient rules together; feed it every step, in order, from one thread."""

    def __init__(self, thresholds: Thresholds | None = None):
        t = thresholds or Thresholds()
        self.thresholds = t
        self.amp = AmpOverflowRule(t)
        self.nonfinite = NonFiniteRule(t)
        self.exploding = ExplodingRule(t)
        self.vanishing = VanishingRule(t)

    def observe(self, s: StepInput) -> list[dict]:
        amp = self.amp.observe(s)
        exploding = self.exploding.observe(s)
        nonfinite = self.nonfinite.observe(s, amp_stuck=self.amp.stuck)
        vanishing = self.vanishing.observe(s)
        return [a for a in (amp, exploding, nonfinite, vanishing) if a is not None]

    def alerting(self) -> dict[str, str]:
        """Module -> alert type, for the layers of the episodes still running."""
        flagged: dict[str, str] = {}
        for rule, kind in ((self.vanishing, VANISHING), (self.exploding, EXPLODING), (self.nonfinite, NONFINITE)):
            if rule.episode.active:
                for name in rule.layers:
                    flagged.setdefault(name, kind)
        return flagged
