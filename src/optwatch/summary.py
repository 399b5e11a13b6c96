"""Every figure about a run that more than one view shows, each defined once.

The headless summary line, the Overview's figures, the Controls tab's before/after, the Ranks tab and the
final line all read these, so they cannot disagree: a step time is the median step time of a window, a
throughput is the window's samples over its time, the few steps that did more than a step left out (a fixed
batch and slower steps can only mean fewer samples a second), a share is a sum of seconds over the window's
time. No torch, no textual.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optwatch.protocol import finite

RECENT_STEPS = 20
"""The window of the figures that describe the run "now"."""
RUN_SAMPLES_COVER = 0.9
"""The least share of the run's time, in steps that say their samples, for a whole run's samples/s."""
RECENT_COST_S = 2.0
"""The least time the "now" cost figure covers: optwatch's threads' CPU time comes with the step records they
made ready, a lump every publish interval, which over 20 sub-millisecond steps read as 184% of them."""
START_STEPS = 100
"""optwatch checks every step of these (its --budget applies after them): its cost there is shown apart."""
START_SHOWN_FROM = 20
"""Steps into the run from which its first steps' cost is shown (before, it is the recent figure again)."""
WARMUP_STEPS = 2
"""The first steps pay for lazy initialisation, autotuning and compilation (optwatch's own setup too): the
verdict and the "now" cost leave them out once later steps are there; the first steps' cost counts them."""


def median(values: Iterable[Any]) -> float | None:
    """The median of the finite values, or None when there is none."""
    chosen = [v for v in values if finite(v)]
    return statistics.median(chosen) if chosen else None


def own_seconds(step: dict[str, Any]) -> float:
    """What optwatch cost a step: its code on the training thread and its threads' CPU time in the process."""
    background = step.get("optwatch_bg_s")
    return own_on_core(step) + (background if finite(background) else 0.0)


def own_on_core(step: dict[str, Any]) -> float:
    """optwatch's code on the training thread, less its part of the step's wait for a core (``core_wait_s``).
    Its lines are timed on the wall clock, so a slice another program took while they ran counts in them: on
    a busy machine one 4 ms slice among 0.2 ms steps read 'optwatch 29%' where its lines took 5%. Where in
    the step the wait fell is not known, so it is shared out by time: over many steps that is the part that
    falls on optwatch's lines, and one slice never counts whole as optwatch's."""
    own, step_time, wait = step.get("optwatch_s"), step.get("step_time_s"), step.get("core_wait_s")
    if not finite(own):
        return 0.0
    if finite(wait) and finite(step_time) and step_time > 0 and wait > 0:
        return own * max(0.0, 1.0 - wait / step_time)
    return own


def _slope_per_100(points: list[tuple[int, float]]) -> float | None:
    if len(points) < 3:
        return None
    xs, ys = zip(*points)
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return None
    return 100 * sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


@dataclass(frozen=True)
class Window:
    """Figures over a run of consecutive step records."""

    steps: int
    step_time_s: float | None
    """The median step time."""
    samples_per_s: float | None
    """The median step's rate (samples over step time, step by step): what the median step time gives, which
    a step that also evaluates or saves a checkpoint does not move (the run's own: ``RunSummary``)."""
    data_wait_share: float | None
    loss_mean: float | None
    loss_slope_per_100: float | None
    """Least-squares slope of the loss per 100 steps: negative when it falls."""
    optwatch_share: float | None
    """optwatch's seconds (its code and its threads) over the window's time."""
    optwatch_s: float | None
    """optwatch's median seconds per step."""


def window(steps: Sequence[dict[str, Any]]) -> Window:
    timed = [s for s in steps if finite(s.get("step_time_s"))]
    time_total = sum(s["step_time_s"] for s in timed)
    rated = [s for s in timed if finite(s.get("samples")) and s["step_time_s"] > 0]
    waits = [s for s in timed if finite(s.get("data_wait_s"))]
    waits_time = sum(s["step_time_s"] for s in waits)
    losses = [(s["step"], s["loss"]) for s in steps if finite(s.get("loss")) and isinstance(s.get("step"), int)]
    return Window(
        steps=len(steps),
        step_time_s=median(s["step_time_s"] for s in timed),
        samples_per_s=_samples_per_s(rated),
        data_wait_share=sum(s["data_wait_s"] for s in waits) / waits_time if waits_time > 0 else None,
        loss_mean=statistics.fmean(v for _, v in losses) if losses else None,
        loss_slope_per_100=_slope_per_100(losses),
        optwatch_share=sum(own_seconds(s) for s in timed) / time_total if time_total > 0 else None,
        optwatch_s=median(own_seconds(s) for s in timed) if timed else None,
    )


RATE_LONG_FACTOR = 3.0
RATE_LONG_SHARE = 0.25
"""Steps over ``RATE_LONG_FACTOR`` × the median, when they are no more than this share of the window, did more
than a step (an evaluation, a checkpoint): the whole run's figure counts them, the window's rate does not.
(A lower bar than the verdict's ``LONG_STEP_FACTOR``: a rate is skewed by less than a verdict is made of.)"""


def _samples_per_s(steps: Sequence[dict[str, Any]]) -> float | None:
    """The window's samples over its time, the few steps that did more than a step left out: the median of
    each step's rate read 8,800 samples/s where DataLoader workers made steps of 1 ms and 34 ms in turn
    (870 a second in truth), the fast ones' rate."""
    if not steps:
        return None
    typical = median(s["step_time_s"] for s in steps)
    short = [s for s in steps if s["step_time_s"] <= RATE_LONG_FACTOR * typical]
    if len(steps) - len(short) <= RATE_LONG_SHARE * len(steps):
        steps = short
    return sum(s["samples"] for s in steps) / sum(s["step_time_s"] for s in steps)


@dataclass
class CostTotals:
    """optwatch's seconds and the step time, summed over every step of a rank since the start, and over its
    first ``START_STEPS`` (kept as records arrive, so the whole run is counted whatever the buffers keep)."""

    own_s: float = 0.0
    time_s: float = 0.0
    samples: float = 0.0
    samples_time_s: float = 0.0
    """The time of the steps that say how many samples they trained (evaluations between them included)."""
    start_own_s: float = 0.0
    start_time_s: float = 0.0
    first_step: int = 0
    """The number of the rank's first step (a resumed run's is its global step: the hello says)."""

    def run_samples_per_s(self) -> float | None:
        """Samples over the run's time; None where steps that do not say their samples (a loop without a
        DataLoader in some steps) hold over a tenth of it: over the others' time alone it read 1.3x high."""
        if self.samples_time_s <= 0 or self.samples_time_s < RUN_SAMPLES_COVER * self.time_s:
            return None
        return self.samples / self.samples_time_s

    def add(self, step: dict[str, Any]) -> None:
        step_time = step.get("step_time_s")
        if not finite(step_time):
            return
        own = own_seconds(step)
        self.own_s += own
        self.time_s += step_time
        if finite(step.get("samples")):
            self.samples += step["samples"]
            self.samples_time_s += step_time
        if isinstance(step.get("step"), int) and step["step"] < self.first_step + START_STEPS:
            self.start_own_s += own
            self.start_time_s += step_time


@dataclass(frozen=True)
class Cost:
    """What optwatch costs this run, as a share of the step time: now, over its first steps, over the run."""

    recent: float | None
    start: float | None
    run: float | None
    per_step_s: float | None
    checks_every: int
    hub_cpu_share: float | None = None
    """The hub's CPU time over wall time (a share of one core), off the training process."""


@dataclass(frozen=True)
class RunSummary:
    step: int
    loss: float | None
    loss_ema: float | None
    losses: dict[str, float] = field(default_factory=dict)
    """Each optimizer's loss at the latest step, when the script has more than one."""
    recent: Window = field(default_factory=lambda: window([]))
    grad_norm: float | None = None
    """The latest gradient norm measured (before clipping)."""
    grad_norm_step: int | None = None
    """The step it was measured at: past the first steps, not every step's is (``--budget``)."""
    clip_max_norm: float | None = None
    clipped_share: float | None = None
    """The share of recent measured steps whose gradient norm the script's clipping cut."""
    clipped_of: int = 0
    """How many recent steps that share is of (the last ``RECENT_STEPS`` with a finite norm and a clip)."""
    clipped_among: int = 0
    """How many recent steps those are among: more than ``clipped_of`` where some norms were NaN or inf."""
    lr: float | None = None
    cost: Cost = field(default_factory=lambda: Cost(None, None, None, None, 1))
    ranks: int = 1
    first_step: int = 0
    """The number of the run's first step in this process (not 0 in a run resumed from a checkpoint)."""
    run_samples_per_s: float | None = None
    """Samples over the whole run's time, evaluations, checkpoints and every pause between steps included:
    the figure a script prints at its end (``CostTotals.run_samples_per_s``)."""

    @property
    def grad_norm_when(self) -> str:
        """Where the norm shown is an earlier step's than the latest, " at step N"; else nothing."""
        step = self.grad_norm_step
        return f" at step {step}" if step is not None and step != self.step else ""

    @property
    def clipped_over(self) -> str:
        """What ``clipped_share`` is of, in words: ``the last 20 steps``, or where some of them had no finite
        norm (a NaN, whose clip cuts nothing: it makes the gradients NaN), ``the 5 finite norms of the last 12
        steps``: "the last 5 steps" read as steps 7-11, all NaN, when the 5 were steps 0-4."""
        if self.clipped_of == self.clipped_among:
            return f"the last {self.clipped_of} steps"
        return f"the {self.clipped_of} finite norms of the last {self.clipped_among} steps"

    @property
    def steps_in(self) -> int:
        """How far the latest step is from the process's first: what "its first steps" count against."""
        return self.step - self.first_step

    @property
    def start_cost(self) -> float | None:
        """optwatch's share over its first steps, shown once the run is ``START_SHOWN_FROM`` steps in."""
        return self.cost.start if self.steps_in >= START_SHOWN_FROM else None

    @property
    def run_cost(self) -> float | None:
        """optwatch's share over the run so far, shown once the run is past its first steps."""
        return self.cost.run if self.steps_in >= START_STEPS else None


METRICS_SHOWN = 3
"""The metrics (an evaluation's loss, accuracy) the Overview and the headless line show."""
_EVALUATION_WORDS = ("eval", "evaluation", "val", "valid", "validation", "test")
"""Words of a metric's name that say it was measured on held-out data."""
_QUALITY_PARTS = ("loss", "acc")
"""Parts of a metric's name that say how well the model does (``val_loss``, ``top1_accuracy``)."""
_BOOKKEEPING_WORDS = ("runtime", "second", "flos", "throughput", "epoch", "learning", "lr", "grad", "norm")
"""Words of the names of a framework's bookkeeping (the Trainer's ``train_runtime``, ``eval_samples_per_second``,
``total_flos``), or of a figure the step record already gives: shown only where room is left."""


@dataclass(frozen=True)
class ShownMetric:
    name: str
    label: str
    """The name as the view shows it: shortened to its width, never the same as another shown name's."""
    value: Any
    step: Any
    """The step of the record that brought this value (each name's own: the records log different names)."""


METRIC_NAMES_KEPT = 1000
"""The most metric names ``remember_metrics`` keeps (a script naming a metric after its step makes a new one
each time): memory stays bounded, and the first ones logged stay."""


def remember_metrics(latest: dict[str, tuple[Any, Any]], record: dict[str, Any]) -> None:
    """Keeps in ``latest`` each name's newest (value, step) from a ``metric`` record: a framework logs an
    evaluation's loss in one record and its runtime figures in the next, and the loss must not go with it."""
    values = record.get("values")
    if isinstance(values, dict):
        for name, value in values.items():
            if str(name) in latest or len(latest) < METRIC_NAMES_KEPT:
                latest[str(name)] = (value, record.get("step"))


def _metric_rank(name: str) -> int:
    """0 an evaluation's loss or accuracy, 1 either, 2 anything else, 3 bookkeeping."""
    words = [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]
    if any(word in _BOOKKEEPING_WORDS for word in words):
        return 3
    evaluation = any(word in _EVALUATION_WORDS for word in words)
    quality = any(part in name.lower() for part in _QUALITY_PARTS)
    return 0 if evaluation and quality else 1 if evaluation or quality else 2


def short_labels(names: Sequence[str], width: int) -> list[str]:
    """``names`` cut to ``width`` characters, each still told from the others: ``train_loss_step`` and
    ``train_loss_epoch`` in 11 read ``train…step`` and ``train…epoch``, not both ``train_loss…``."""
    labels = [name if len(name) <= width else name[: width - 1] + "…" for name in names]
    clashing = [index for index, label in enumerate(labels) if labels.count(label) > 1]
    for index in clashing:
        tail = names[index].rsplit("_", 1)[-1][-(width // 2) :]  # the word that tells them apart, as a rule
        labels[index] = names[index][: width - 1 - len(tail)] + "…" + tail
    for index in [index for index in clashing if labels.count(labels[index]) > 1]:  # the same ends: numbered
        number = str(index + 1)
        labels[index] = names[index][: width - 1 - len(number)] + "…" + number
    return labels


def shown_metrics(latest: dict[str, tuple[Any, Any]], width: int | None = None) -> list[ShownMetric]:
    """The ``METRICS_SHOWN`` metrics worth a look of each name's latest value: an evaluation's loss and
    accuracy before the training's, those before the rest, the bookkeeping last; of the same kind, the
    first logged first. With ``width``, each name shortened to it."""
    names = sorted(latest, key=_metric_rank)[:METRICS_SHOWN]  # (a stable sort: the first logged first)
    labels = short_labels(names, width) if width is not None else names
    return [ShownMetric(name, label, *latest[name]) for name, label in zip(names, labels)]


def clipped_share(steps: Sequence[dict[str, Any]]) -> tuple[float | None, int]:
    """The share of ``steps`` (with a norm and a clip) whose norm the clip cut, and how many they are."""
    measured = [s for s in steps if finite(s.get("grad_norm")) and finite(s.get("clip_max_norm"))]
    if not measured:
        return None, 0
    return sum(s["grad_norm"] > s["clip_max_norm"] for s in measured) / len(measured), len(measured)


def summarise(
    steps: Sequence[dict[str, Any]],
    loss_ema: float | None,
    totals: CostTotals,
    ranks: int = 1,
    hub_cpu_share: float | None = None,
) -> RunSummary | None:
    """The run as its latest steps (one rank's, oldest first) and its cost totals describe it."""
    if not steps:
        return None
    last = steps[-1]
    recent_steps = list(steps[-RECENT_STEPS:])
    recent = window(recent_steps)
    warm = _past_warmup(recent_steps, totals.first_step)
    costed = _past_warmup(_covering(steps, RECENT_COST_S), totals.first_step)
    recent_cost = window(costed) if len(costed) > len(warm) else window(warm)
    measured = next((s for s in reversed(steps) if s.get("grad_norm") is not None), None)
    grad_norm = measured["grad_norm"] if measured is not None else None
    clip = next((s["clip_max_norm"] for s in reversed(recent_steps) if finite(s.get("clip_max_norm"))), None)
    losses = last.get("losses")
    clipped, clipped_of = clipped_share(recent_steps) if clip is not None else (None, 0)
    cost = Cost(
        recent=recent_cost.optwatch_share,
        start=totals.start_own_s / totals.start_time_s if totals.start_time_s > 0 else None,
        run=totals.own_s / totals.time_s if totals.time_s > 0 else None,
        per_step_s=recent_cost.optwatch_s,
        checks_every=last.get("detail_every") or 1,
        hub_cpu_share=hub_cpu_share,
    )
    return RunSummary(
        step=last.get("step", 0),
        loss=last.get("loss"),
        loss_ema=loss_ema,
        losses={k: v for k, v in losses.items() if finite(v)} if isinstance(losses, dict) else {},
        recent=recent,
        grad_norm=grad_norm,
        grad_norm_step=measured.get("step") if measured is not None else None,
        clip_max_norm=clip,
        clipped_share=clipped,
        clipped_of=clipped_of,
        clipped_among=len(recent_steps),
        lr=last.get("lr"),
        cost=cost,
        ranks=ranks,
        first_step=totals.first_step,
        run_samples_per_s=totals.run_samples_per_s(),
    )


def _past_warmup(steps: Sequence[dict[str, Any]], first_step: int) -> list[dict[str, Any]]:
    """``steps`` from the end of the warm-up on, or all of them while the run has none past it."""
    past = [s for s in steps if not (isinstance(s.get("step"), int) and s["step"] < first_step + WARMUP_STEPS)]
    return past or list(steps)


def _covering(steps: Sequence[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """The latest steps whose times add up to ``seconds`` at least (all of them if they do not)."""
    total, first = 0.0, len(steps)
    while first > 0 and total < seconds:
        first -= 1
        step_time = steps[first].get("step_time_s")
        total += step_time if finite(step_time) else 0.0
    return list(steps[first:])


def alert_text(alert: dict[str, Any]) -> str:
    """An alert in one line, as the headless line and the dashboard's findings say it: "type @ step N rank R:
    message" (no step for an alert of none, no rank for rank 0's)."""
    rank = alert.get("rank")
    where = f" rank {rank}" if isinstance(rank, int) and rank > 0 else ""
    at = f" @ step {alert['step']}" if alert.get("step") is not None else ""
    return f"{alert.get('type', 'alert')}{at}{where}: {alert.get('message', '')}"


def non_finite_text(value: object, missing: str) -> str:
    """A figure that is not a number, as the headless lines and the dashboard show it: ``NaN``, ``Inf`` or
    ``-Inf`` as it was measured (a diverged norm is news, not a gap), else ``missing``."""
    if isinstance(value, float):
        return "NaN" if value != value else ("Inf" if value > 0 else "-Inf")
    return missing


def cost_text(summary: RunSummary) -> str:
    """What optwatch costs, as the headless line and the Overview say it: now, over its first steps (where it
    checks every step), over the run so far."""
    cost = summary.cost
    if cost.recent is None:
        return ""
    text = f"optwatch {100 * cost.recent:.1f}%"
    extra = []
    if summary.start_cost is not None:
        extra.append(f"first steps {100 * summary.start_cost:.1f}%")
    if summary.run_cost is not None:
        extra.append(f"run {100 * summary.run_cost:.1f}%")
    if cost.checks_every > 1:
        extra.append(f"checks 1/{cost.checks_every}")
    return text + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True)
class Waiting:
    """No step has ended for a while (``Store.waiting``): the rank's ``waiting`` record (``probe.waiting``)."""

    record: dict[str, Any]
    waited_s: float
    """Since the last step's end (or the start, before the first step), as of now."""
    first_step: bool
    """No step has ended yet."""


def clock_text(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def frame_text(frame: dict[str, Any]) -> str:
    """``evaluate (train.py:88)``: a function and where in its file."""
    path = str(frame.get("file", "?"))
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    line = frame.get("line")
    return f"{frame.get('function', '?')} ({name}:{line})" if line is not None else f"{frame.get('function')} ({name})"


def waiting_place(record: dict[str, Any]) -> str:
    """``in evaluate (train.py:88), at _next_data (dataloader.py:1345)``: the script's own innermost function,
    and the innermost one of all where it is another's (a library's, Python's); first, a library being
    imported (``importing transformers, in <module> (train.py:9), at ...``)."""
    stack = record.get("stack") or []
    own, innermost = record.get("where"), (stack[-1] if stack else None)
    places = []
    if own:
        places.append(f"in {frame_text(own)}")
    if innermost and innermost != own:
        places.append(f"at {frame_text(innermost)}")
    if isinstance(record.get("importing"), str):  # (an import of seconds before the first step: no hang)
        places.insert(0, f"importing {record['importing']}")
    return ", ".join(places) or "(no Python frame)"


def _waited_text(waiting: Waiting) -> str:
    if waiting.first_step:
        return f"no step yet after {clock_text(waiting.waited_s)}"
    # Since which step: the probe's count (the last steps' records may still be on their way).
    text = f"no step for {clock_text(waiting.waited_s)} since step {waiting.record.get('step', 1) - 1}"
    typical = waiting.record.get("typical_step_s")
    return text + (f" (steps take {duration_text(typical)})" if finite(typical) and typical > 0 else "")


def waiting_text(waiting: Waiting, others: dict[int, Waiting] | None = None) -> str:
    """``no step for 42 s since step 1200 (steps take 12.3 ms): in evaluate (train.py:88), at _next_data
    (dataloader.py:1345)``: how long, against the run's usual step, and where the training thread is. With
    ``others`` (the ranks that wait, by rank: ``Store.waiting_ranks``, this one's own left out here), those
    elsewhere are named by their place first: a rank stuck in its own code while the rest wait for it in a
    collective."""
    place = waiting_place(waiting.record)
    rank = waiting.record.get("rank", 0)
    elsewhere: dict[str, list[int]] = {}
    for other_rank, other in sorted((others or {}).items()):
        if other_rank == rank:
            continue
        other_place = waiting_place(other.record)
        if other_place != place:
            elsewhere.setdefault(other_place, []).append(other_rank)
    if not elsewhere:
        return f"{_waited_text(waiting)}: {place}"
    # Those elsewhere first: the one stuck in its own code is the news, and a header cut at its width kept
    # rank 0's place in the all-reduce alone.
    parts = [f"{_ranks_text(ranks)} {other_place}" for other_place, ranks in elsewhere.items()]
    parts = parts[:WAITING_PLACES_SHOWN]
    if len(elsewhere) > WAITING_PLACES_SHOWN:
        parts.append(f"{len(elsewhere) - WAITING_PLACES_SHOWN} places more")
    parts.append(f"rank {rank} {place}")
    return f"{_waited_text(waiting)}: " + "; ".join(parts)


WAITING_PLACES_SHOWN = 3
"""Ranks waiting elsewhere than the first: at most this many places named."""


def _ranks_text(ranks: list[int]) -> str:
    """``rank 3``, ``ranks 1, 4-7``."""
    runs: list[list[int]] = []
    for rank in ranks:
        if runs and rank == runs[-1][1] + 1:
            runs[-1][1] = rank
        else:
            runs.append([rank, rank])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"rank {text}" if len(ranks) == 1 else f"ranks {text}"


def duration_text(seconds: float) -> str:
    """``0.412 ms``, ``210 ms``, ``1.35 s``, ``1234 s``: three digits whatever the length (the headless line's
    too), never an exponent (``.3g`` wrote 0.9996 s as "1e+03 ms" and 1234 s as "1.23e+03 s")."""
    if seconds < 0.9995:
        milliseconds = 1000 * seconds
        return f"{milliseconds:.3g} ms" if milliseconds >= 0.0001 else "0 ms"
    return f"{seconds:.3g} s" if seconds < 999.5 else f"{seconds:.0f} s"
