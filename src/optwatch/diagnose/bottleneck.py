"""The bottleneck verdict: which one thing limits the recent steps, the numbers behind it, what to try.

``summarise`` turns a window of ``step`` and ``system`` records into a ``Window`` of figures;
``classify`` applies the rules below, in this order, and the first that fires is the verdict:

1. ``input``    data wait >= 30% of step time: the loop waits for the DataLoader.
2. ``memory``   allocator retries or OOMs in the window, peak allocation >= 97% of the device,
                or host RAM >= 95% used.
3. ``host``     evaluations, or on the CPU long steps at a regular spacing or one or two that hold most
                of the long steps' time, take >= 30% of the window's time beyond a median step.
4. on a GPU, with NVML utilisation (else the share of the step covered by device phases):
   ``compute``  utilisation >= 80%.
   ``sync``     utilisation < 60%, the host spends < half as long launching forward, backward and
                optimizer as the device spends running them, and >= 25% of the step is outside
                them: the host idles the device while it waits on it (``.item()``, ``.cpu()``...).
   ``host``     utilisation < 60% otherwise: the device follows the host's Python, launch by launch.
   on the CPU:
   ``compute``  forward + backward + optimizer >= 60% of step time.
   ``host``     >= 40% of step time outside data, forward, backward and optimizer.
5. ``balanced`` none of the above: no single cause dominates.

On the CPU the phase shares leave out the few detail steps of 3x the median step's work or more (``_usual``),
and a step of tiny ops (``TINY_STEP_S``) is told of their fixed cost per call before anything else.

Suggestions are standard PyTorch practice and name the optwatch control that tests them, if any.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optwatch.diagnose.phases import MEASURED, other_seconds, training_seconds
from optwatch.protocol import finite
from optwatch.summary import duration_text, own_on_core, own_seconds

INPUT_SHARE = 0.30
NEAR_OOM_SHARE = 0.97
HOST_RAM_SHARE = 0.95
GPU_BUSY_PERCENT = 80.0
GPU_IDLE_PERCENT = 60.0
SYNC_LAUNCH_RATIO = 0.5
SYNC_OTHER_SHARE = 0.25
CPU_MODEL_SHARE = 0.60
CPU_BUSY_PERCENT = 50.0
"""Below this much of a core, steps whose time is in the model's phases wait there rather than compute..."""
HOST_BUSY_PERCENT = 75.0
"""... when the machine's cores are less busy than this (else other programs may be what it waits for)."""
CPU_OTHER_SHARE = 0.40
HOST_CONTENDED_PERCENT = 90.0
CONTENDED_SHARE = 0.35
"""A process that gets less than this share of the cores its torch threads could use, on a machine whose
cores are busier than ``HOST_CONTENDED_PERCENT``, waits for cores other processes take: with two threads on
two cores shared with two busy programs it got 45% of a core, and its steps took 413 ms, where one thread
took 11 ms beside the same programs (each op waits for its slowest thread, and a thread without a core holds
it)."""
PINNED_WAIT_PERCENT = 45.0
"""A training thread that waits for a core this much of the time while the machine's cores are less busy than
``HOST_CONTENDED_PERCENT`` may run on only a few of them, beside busy programs (a taskset, a cpuset): beside
one that spins on the same core it waited 50% of the time and got half of it, with the other core idle."""
CONTENDED_WAIT_PERCENT = 25.0
"""... and only where its training thread waits for a core this much of the time or more (``run_wait_percent``,
where the kernel says): a process that sleeps or blocks (a rank waiting in the all-reduce for a straggler, a
print flood on a full pipe) also uses little CPU on a busy machine, and was told to find what else runs."""
WORKERS_BUSY_PERCENT = 80.0
FRAGMENTATION_SHARE = 0.10
OPTWATCH_NOTABLE_SHARE = 0.05  # optwatch's own share of a host-bound step worth saying with the verdict
LONG_STEP_FACTOR = 3.0
"""A step whose work (its time less its data wait) is this many times the median's did more than a step (at
5x, nanoGPT's save every 5 iterations, 4.1x a step and 40% of the time, went unseen: "compute-bound")."""
BETWEEN_SHARE = 0.30
"""Long steps' time beyond the median step that makes work between training steps the verdict."""
BETWEEN_STAYS = 0.80
"""Once work between steps (or evaluation) is the verdict, it stays until its share is under this much of
``BETWEEN_SHARE``: a share about the threshold (an evaluation every 50 steps taking 29-35%) flipped the
verdict every few seconds."""
MIN_LONG_EVERY = 4
"""The fewest steps between two long ones for them to be work done every N steps."""
LONG_STEP_QUANTILES = (0.75, 0.9, 1.0)
"""Where the long steps are not regular, the cuts tried next: half these quantiles of their times (the last,
half the longest: a few checkpoints among many steps a busy machine slowed)."""
TINY_STEP_S = 0.0005
"""Below this much work, a CPU step is mostly the fixed cost of its calls (Python, the dispatcher, autograd's
bookkeeping: a few µs each), not their math: a Linear(4, 1)'s step (its loss, backward, an SGD step: about 20
calls) took 0.11 ms on one core at any batch from 2 to 2048, a 3-layer MLP's 0.24 ms at a batch of 32 and
0.71 ms at 256 (8x the samples in 3x the time). A larger batch does more in the same calls; a GPU adds a
kernel launch to each, and more threads or bf16 add work around each."""
SLOWED_UPDATE_SHARE = 0.25
"""Long steps whose time beyond the median step is this much in their backward and optimizer step were
slowed down, not given more work: a busy machine's slices, which can come at a regular spacing too."""

BOTTLENECKS = ("input", "compute", "host", "sync", "memory", "balanced")


@dataclass
class Window:
    """The figures of a window of steps that the rules look at (None: not measured)."""

    first_step: int
    last_step: int
    steps: int
    duration_s: float
    device: str  # "cuda", "cpu", ...
    step_time_s: float | None = None
    shares: dict[str, float | None] = field(default_factory=dict)  # phase -> share of total step time
    launch_ratio: float | None = None  # CUDA: host time in fwd+bwd+opt / device time in them
    optwatch_share: float | None = None  # optwatch's own time (its code and its threads) / step time
    gpu_util_percent: float | None = None
    device_busy_share: float | None = None  # CUDA: device fwd+bwd+opt / step time
    alloc_retries: int | None = None
    ooms: int | None = None
    peak_mem_share: float | None = None
    fragmentation_bytes: int | None = None
    mem_total_bytes: int | None = None
    host_mem_share: float | None = None
    cpu_percent: float | None = None
    host_cpu_percent: float | None = None
    """The whole machine's CPU use, of all its cores."""
    run_wait_percent: float | None = None
    """How much of the time the training thread was ready to run but waited for a core (Linux): its steps'
    ``core_wait_s`` over their time where each says it, else the sampler's readings."""
    cpu_count: int | None = None
    torch_threads: int | None = None
    workers: int | None = None
    workers_cpu_percent: float | None = None
    loader: dict[str, Any] = field(default_factory=dict)
    every_check: bool = False
    """optwatch runs every check at every step whatever it costs (``--budget 0``)."""
    world_size: int = 1
    precision: str | None = None
    """What the steps train in: "bfloat16 autocast", "float32"... (the step records' ``precision``)."""
    long_steps: int = 0
    """Steps whose work took ``LONG_STEP_FACTOR`` × the median step's or more (``_long_steps``)."""
    long_every: int | None = None
    """How many steps apart they come (the median gap)."""
    long_step_s: float | None = None
    """Their median work (time less data wait and optwatch's own), beside ``typical_step_s``, the median step's."""
    typical_step_s: float | None = None
    """The median step's work, host-paced (CPU) steps only."""
    between_share: float | None = None
    """Their time beyond a median step, over all the steps' time: work done between training steps (a rollout,
    an evaluation without a DataLoader, a checkpoint) wherever it falls in the phases. Host-paced steps only."""
    few_long: tuple[int, int, float, float] | None = None
    """One or two long steps that hold most of the long steps' time beyond a median step, too few to tell a
    spacing (a short run's rollouts, a checkpoint every 400 steps): (how many, of how many steps, their median
    work, their time beyond a median step over all the steps')."""
    timed_steps: int = 0
    """The steps whose phases were timed (the detail steps: one in tens past the first 100 steps), which the
    phase shares rest on; on the CPU, less the few whose work was ``LONG_STEP_FACTOR`` x the median step's or
    more (``_usual``)."""
    evaluations: int = 0
    """Steps in whose time an evaluation ran (DataLoader batches outside the training's: ``eval_batches``)."""
    evaluation_step_s: float | None = None
    """Their median time."""
    evaluation_extra_s: float | None = None
    """What each added to its step beyond a median training step, on average: the share's own measure (a
    median of their times says nothing of the few that took long)."""
    evaluation_share: float | None = None
    """Their time beyond a median training step, over all the steps' time, any device."""
    cudnn_benchmark: bool | None = None

    @property
    def mixed_precision(self) -> bool:
        """Already in a 16-bit precision (autocast, or 16-bit weights): mixed precision is no advice."""
        return self.precision is not None and self.precision.startswith(("bfloat16", "float16"))

    @property
    def model_share(self) -> float | None:
        """Forward + backward + optimizer, or everything but data wait when forward is unknown."""
        shares = self.shares
        if shares.get("forward_s") is None:
            data = shares.get("data_wait_s")
            return None if data is None else max(0.0, 1.0 - data)
        return sum(shares.get(key) or 0.0 for key in ("forward_s", "backward_s", "optimizer_s"))


def _mean(values: Sequence[Any]) -> float | None:
    values = [v for v in values if finite(v)]
    return statistics.fmean(values) if values else None


def _increase(systems: Sequence[dict[str, Any]], key: str) -> int | None:
    counts = [s[key] for s in systems if finite(s.get(key))]
    # Never negative: torch.cuda.reset_accumulated_memory_stats() sets the counters back to 0.
    return max(0, int(counts[-1] - counts[0])) if counts else None


def current_gpu(system: dict[str, Any]) -> dict[str, Any] | None:
    """The GPU this rank trains on: the one torch names, else the one holding its memory, else the only one."""
    gpus = system.get("gpus") or []
    for gpu in gpus:
        if gpu.get("current"):
            return gpu
    for gpu in gpus:
        if gpu.get("process_mem_bytes"):
            return gpu
    return gpus[0] if len(gpus) == 1 else None


def summarise(
    steps: Sequence[dict[str, Any]],
    systems: Sequence[dict[str, Any]],
    device: str = "cpu",
    loader: dict[str, Any] | None = None,
    run_systems: Sequence[dict[str, Any]] = (),
) -> Window | None:
    """The figures of ``steps`` (newest last) and the ``systems`` sampled meanwhile; None without steps. The
    steps with an evaluation in their time count in the time the window spent, not in the training's phases.
    ``run_systems``, the run's samples however late, give what the window's own have not known yet."""
    # A step that held a notebook kernel's idle time between two cells is left out, as a pause is: it read as
    # 'host-bound: 94% in 1 step that took 6113x the median (34.7 s): work between training steps'.
    idle = [
        (s["time"] - s["step_time_s"], s["time"])
        for s in steps
        if s.get("between_cells") and finite(s.get("time")) and finite(s.get("step_time_s"))
    ]
    if idle:  # (and the idle kernel's samples, which no step's CPU is)
        steps = [s for s in steps if not s.get("between_cells")]
        systems = [x for x in systems if not any(start < x.get("time", 0.0) <= end for start, end in idle)]
    timed = [s for s in steps if finite(s.get("step_time_s")) and not s.get("eval_batches")]
    evaluated = [s for s in steps if finite(s.get("step_time_s")) and s.get("eval_batches")]
    if not timed:
        return None
    # (Nor is its time the window's: the idle spans between its first step and its last.)
    idle_s = sum(end - start for start, end in idle if timed[0].get("time", 0.0) <= start < timed[-1].get("time", 0.0))
    total = sum(s["step_time_s"] for s in timed)
    whole = total + sum(s["step_time_s"] for s in evaluated)
    # The model's phases over the detail steps (on a GPU the others are not timed on the device: see the
    # probe's --budget); the step time, data wait and optwatch's share over every step.
    phased = [s for s in timed if s.get("detailed", True)] or timed
    host_paced = device.split(":")[0] == "cpu"
    if host_paced:  # (on a GPU a long step may be the host catching up with work queued before it)
        phased = _usual(phased, statistics.median(_step_work(s) for s in phased))
    # (The training's own time: a detail step carries optwatch's checks, none of the loop's phases.)
    phased_total = sum(training_seconds(s) for s in phased)
    shares: dict[str, float | None] = {}
    for key in MEASURED:
        over, over_total = (timed, total) if key == "data_wait_s" else (phased, phased_total)
        known = [s[key] for s in over if finite(s.get(key))]
        shares[key] = sum(known) / over_total if over_total > 0 and len(known) == len(over) else None
    others = [s.get("other_s") if finite(s.get("other_s")) else other_seconds(s) for s in phased]
    shares["other_s"] = sum(others) / phased_total if phased_total > 0 else None
    # The steps judged: the evaluations' too (an evaluation in the window's first step was counted in it).
    judged = [s.get("step", 0) for s in (timed[0], timed[-1], *evaluated)]
    window = Window(
        timed_steps=len(phased),
        first_step=min(judged),
        last_step=max(judged),
        steps=len(timed),
        duration_s=max(timed[-1].get("time", 0.0) - timed[0].get("time", 0.0) - idle_s, 0.0) + timed[0]["step_time_s"],
        device=device.split(":")[0],
        step_time_s=statistics.median(s["step_time_s"] for s in timed),
        shares=shares,
        loader=dict(loader or {}),
        precision=timed[-1].get("precision"),
        cudnn_benchmark=timed[-1].get("cudnn_benchmark"),
    )
    if total > 0 and all(finite(s.get("optwatch_s")) for s in timed):
        window.optwatch_share = sum(own_seconds(s) for s in timed) / total  # the figure every view shows
    if host_paced:
        work = [_step_work(s) for s in timed]
        window.typical_step_s = statistics.median(work)
        # (The time the training thread ran: a wait for a core is no part of a share, as it is none of a work.)
        waited = sum(s["core_wait_s"] for s in (*timed, *evaluated) if finite(s.get("core_wait_s")))
        _long_steps(window, timed, _without_the_checks_slow_path(timed, work), whole - waited)
    if evaluated and whole > 0:
        window.evaluations = len(evaluated)
        window.evaluation_step_s = statistics.median(s["step_time_s"] for s in evaluated)
        typical = window.step_time_s
        extra = sum(max(0.0, s["step_time_s"] - typical) for s in evaluated)
        window.evaluation_extra_s = extra / len(evaluated)
        window.evaluation_share = extra / whole
    if window.device == "cuda":
        device_time = sum(sum(s.get(key) or 0.0 for key in MEASURED[1:]) for s in phased)
        host_time = [s.get("host_phases_s") for s in phased]
        if device_time > 0 and all(finite(h) for h in host_time):
            window.launch_ratio = sum(host_time) / device_time
        window.device_busy_share = device_time / phased_total if phased_total > 0 else None
    if systems:
        _summarise_systems(window, systems)
    core_waits = [s.get("core_wait_s") for s in timed]
    if total > 0 and all(finite(wait) for wait in core_waits):  # (each step's own: exact, however short the window)
        window.run_wait_percent = 100.0 * sum(core_waits) / total  # type: ignore[arg-type]
    # Read on the training thread after its first step: a short run's samples may all predate it.
    window.torch_threads = _newest(systems, "torch_threads") or _newest(run_systems, "torch_threads")
    return window


def _newest(systems: Sequence[dict[str, Any]], key: str) -> Any:
    return next((s[key] for s in reversed(systems) if s.get(key) is not None), None)


def _step_work(step: dict[str, Any]) -> float:
    """A step's own work: its training time (less optwatch's own on the training thread: a detail step's
    checks, said apart as optwatch's share, made a 0.29 ms step take 1.1 ms and read as a long one) less its
    data wait and its wait for a core (``core_wait_s``: on a machine with more busy threads than cores, 0.2 ms
    steps the scheduler held off for a 4 ms slice every 16 read as 'work between training steps')."""
    data, core = step.get("data_wait_s"), step.get("core_wait_s")
    work = training_seconds(step) - (data if finite(data) else 0.0)
    if not finite(core):
        return work
    # (optwatch's lines held their part of the wait, out of the work once: as the wait, not as their time too.)
    own = step.get("optwatch_s")
    return work - core + ((own if finite(own) else 0.0) - own_on_core(step))


def _without_the_checks_slow_path(timed: Sequence[dict[str, Any]], work: Sequence[float]) -> list[float]:
    """Each step's work with the detail steps' usual excess over the light steps' taken out: their checks'
    hooks put every module call on torch's slow path, time that optwatch's own (on its lines) leaves out, and
    a tiny model's detail step every 12 took 22x a light one: 'work between training steps'. The excess is
    in the model's phases, and no step gives up more than its phases' time beyond a light step's work: two
    of a window's three detail steps fell on a PPO loop's rollouts, whose 28 ms (outside the phases) was taken
    for the excess and out of every rollout timed (53% said where the script's clock gave 65%)."""
    detailed = [w for s, w in zip(timed, work) if s.get("detailed", True)]
    light = [w for s, w in zip(timed, work) if not s.get("detailed", True)]
    if not detailed or not light:
        return list(work)
    light_work = statistics.median(light)
    extra = statistics.median(detailed) - light_work
    if extra <= 0:
        return list(work)

    def excess(step: dict[str, Any]) -> float:
        phases = [step.get(key) for key in MEASURED[1:]]
        in_phases = sum(p for p in phases if finite(p)) - light_work  # type: ignore[misc]
        return min(extra, max(0.0, in_phases)) if any(finite(p) for p in phases) else extra

    return [w - excess(s) if s.get("detailed", True) else w for s, w in zip(timed, work)]


def _usual(phased: list[dict[str, Any]], typical: float) -> list[dict[str, Any]]:
    """The detail steps the phase shares rest on: those whose work is under ``LONG_STEP_FACTOR`` x the median
    detail step's, where the others are fewer than half of them. The shares are sums over a few dozen detail steps,
    and one 19 ms preemption among 39 steps of 0.2 ms made a tiny loop 'host-bound: 67% outside the phases'
    where the window before was 'compute-bound: 91%' with the same per-phase medians; a step that long is the
    long-step rules' to judge (work between steps, or a busy machine's slice), with every step's time. A
    trimmed sum rather than per-phase medians, whose total is no step's and whose shares need not add up."""
    usual = [s for s in phased if _step_work(s) <= LONG_STEP_FACTOR * typical]
    return usual if len(usual) > len(phased) / 2 else phased


def _long_steps(window: Window, timed: Sequence[dict[str, Any]], work: Sequence[float], running: float) -> None:
    """Every step's time, not only the detail steps' phases (which may never fall on the long steps): steps
    that do much more than the median one, at a regular spacing (a rollout, an evaluation or a checkpoint
    every N steps; a busy machine's slow steps come at random), or one or two that hold most of the time
    beyond it (too few to tell a spacing), and the share of the time that is. Both by work, over the time
    the training thread ran (``running``): the waits for a core fall on long and short steps alike, as on
    the script's own clock (a rollout's share read 48% on a busy machine where the script's said 65%, with
    the waits out of the long steps only; and a 0.8 ms step held off 4 ms read as 44% of a notebook's time)."""
    typical = window.typical_step_s or 0.0
    candidates = [(s.get("step", 0), w) for s, w in zip(timed, work) if w > LONG_STEP_FACTOR * typical]
    if running <= 0 or not candidates:
        return
    cut = _dominant_cut(work, typical)
    dominant = [w for _, w in candidates if w >= cut]
    if len(dominant) < 3:
        beyond = sum(w - typical for w in dominant) / running
        window.few_long = (len(dominant), len(timed), statistics.median(dominant), beyond)
        return
    found = _regular(candidates, cut)
    if found is None:
        return
    long, every = found
    if _slowed_down(timed, {step for step, _ in long}, typical):
        return
    window.long_steps = len(long)
    window.long_every = round(every)
    window.long_step_s = statistics.median(w for _, w in long)
    window.between_share = sum(w - typical for _, w in long) / running


def _dominant_cut(work: Sequence[float], typical: float) -> float:
    """The least work of the long steps that hold most of the time beyond the median step: the fewest of the
    candidates, the longest first, that hold half of it, and those after them down to the widest gap between
    two steps' work (checkpoints of 685, 260 and 235 ms go together, apart from steps a busy machine or
    optwatch's checks slowed to a few ms: 3 checkpoints of 2 s among 67 such steps, where half the candidates'
    median let all 70 in and the quantiles kept fewer than 4, read 'host-bound: the steps wait')."""
    count = sum(w > LONG_STEP_FACTOR * typical for w in work)
    longest = sorted(work, reverse=True)[: count + 1]  # (the candidates, and the longest step that is none)
    half = sum(w - typical for w in longest[:count]) / 2
    held, widest, cut = 0.0, 0.0, longest[count - 1]
    for index, w in enumerate(longest[:count]):
        held += w - typical
        below = longest[index + 1] if index + 1 < len(longest) else 0.0
        gap = w / below if below > 0 else math.inf
        if held >= half and gap > widest:
            widest, cut = gap, w
    return cut


def _regular(candidates: list[tuple[int, float]], dominant_cut: float) -> tuple[list[tuple[int, float]], float] | None:
    """The long steps that come at a regular spacing, and the spacing: those over ``dominant_cut`` (three at
    least), else over half the candidates' median (not the odd slow step beside them), else, where a busy
    machine slows many short steps too (a third of them beside a checkpoint every 50), those over half a
    higher quantile of them, four at least."""
    works = sorted(w for _, w in candidates)
    cuts = [
        dominant_cut,
        statistics.median(works) / 2,
        *(works[int(q * (len(works) - 1))] / 2 for q in LONG_STEP_QUANTILES),
    ]
    for cut, fewest in zip(cuts, (3, 2, *(4 for _ in LONG_STEP_QUANTILES))):
        long = [(step, w) for step, w in candidates if w >= cut]
        if len(long) < fewest:
            continue
        gaps = [b[0] - a[0] for a, b in zip(long, long[1:])]
        every = statistics.median(gaps)
        regular = sum(abs(gap - every) <= max(1.0, every / 8) for gap in gaps) >= 2 / 3 * len(gaps)
        if every >= MIN_LONG_EVERY and regular:  # (a burst of slow steps side by side, or at random: a busy machine)
            return long, every
    return None


def _slowed_down(timed: Sequence[dict[str, Any]], long: set[int], typical: float) -> bool:
    """Whether the long steps timed in their phases (3 at least) took their extra time in backward() and the
    optimizer's step as well: work between steps (a rollout, an evaluation, a checkpoint) leaves those alone."""

    def update_s(step: dict[str, Any]) -> float | None:
        parts = (step.get("backward_s"), step.get("optimizer_s"))
        return sum(parts) if all(finite(part) for part in parts) else None  # type: ignore[arg-type]

    timed_long = [s for s in timed if s.get("step", 0) in long and update_s(s) is not None]
    others = [update_s(s) for s in timed if s.get("step", 0) not in long and update_s(s) is not None]
    if len(timed_long) < 3 or not others:
        return False
    usual = statistics.median(others)  # type: ignore[type-var]
    extra = sum(_step_work(s) - typical for s in timed_long)
    in_updates = sum(max(0.0, update_s(s) - usual) for s in timed_long)  # type: ignore[operator]
    return extra > 0 and in_updates > SLOWED_UPDATE_SHARE * extra


def _summarise_systems(window: Window, systems: Sequence[dict[str, Any]]) -> None:
    last = systems[-1]
    gpus = [current_gpu(s) for s in systems]
    window.gpu_util_percent = _mean([g.get("util_percent") for g in gpus if g])
    window.alloc_retries = _increase(systems, "mem_alloc_retries")
    window.ooms = _increase(systems, "mem_ooms")
    total = last.get("mem_total_bytes")
    peak = max((s["mem_allocated_bytes"] for s in systems if finite(s.get("mem_allocated_bytes"))), default=None)
    if finite(total) and total > 0 and peak is not None:
        window.peak_mem_share = peak / total
        window.mem_total_bytes = total
    window.fragmentation_bytes = last.get("mem_fragmentation_bytes")
    if finite(last.get("host_mem_total_bytes")) and last["host_mem_total_bytes"] > 0:
        window.host_mem_share = last.get("host_mem_used_bytes", 0) / last["host_mem_total_bytes"]
    window.cpu_percent = _mean([s.get("cpu_percent") for s in systems])
    window.host_cpu_percent = _mean([s.get("host_cpu_percent") for s in systems])
    window.run_wait_percent = _mean([s.get("run_wait_percent") for s in systems])
    window.cpu_count = last.get("cpu_count")
    # Workers come and go (a new iterator each epoch, shutdown at the end): count the most seen at once.
    counts = [len(s["workers"]) for s in systems if s.get("workers") is not None]
    if counts:
        window.workers = max(counts)
        window.workers_cpu_percent = _mean([w.get("cpu_percent") for s in systems for w in (s.get("workers") or [])])


# --- the rules ----------------------------------------------------------------------------------------
def classify(window: Window) -> dict[str, Any]:
    """``bottleneck``, one-line ``message``, ``evidence`` (numbers) and ``suggestions`` for a window."""
    return judge(window)[0]


def judge(window: Window, holding: bool = False) -> tuple[dict[str, Any], bool]:
    """``classify``'s verdict, and whether work between steps (or evaluation) made it. ``holding``: it made the
    last one, and then stays down to ``BETWEEN_STAYS`` of its threshold."""
    device_rule = _gpu if window.device == "cuda" else _cpu
    threshold = BETWEEN_SHARE * (BETWEEN_STAYS if holding else 1.0)
    between = _evaluation_first(window, threshold)
    found = between or _input(window) or _memory(window)
    if found is None:
        between = _between(window, threshold)
        found = between or device_rule(window)
    bottleneck, message, suggestions = found
    verdict = {"bottleneck": bottleneck, "message": message, "evidence": evidence(window), "suggestions": suggestions}
    return verdict, between is not None


def _pct(share: float | None) -> str:
    return f"{100 * share:.0f}%" if share is not None else "?"


def _gib(value: float | None) -> str:
    return f"{value / 2**30:.1f} GiB" if finite(value) else "?"


def _input(w: Window) -> tuple[str, str, list[str]] | None:
    data = w.shares.get("data_wait_s")
    if data is None or data < INPUT_SHARE:
        return None
    num_workers = w.loader.get("num_workers", w.workers)
    cores = w.cpu_count or 0
    busy = w.workers_cpu_percent
    message = f"{_pct(data)} of step time waits for the next batch"
    if w.workers:
        workers = f"{w.workers} worker{'s' if w.workers > 1 else ''}"
        message += f"; {workers} at {busy:.0f}% CPU each" if busy is not None else f"; {workers}"
    suggestions = []
    if not num_workers:
        suggestions.append(
            "Load batches in parallel: DataLoader(num_workers=N, persistent_workers=True); "
            f"num_workers is 0, so every batch is loaded on the training thread ({_count(cores, 'core')} here)"
        )
    elif (
        busy is not None
        and busy < WORKERS_BUSY_PERCENT
        and cores
        and num_workers >= cores - 1
        and w.host_cpu_percent is not None
        and w.host_cpu_percent >= HOST_BUSY_PERCENT
    ):
        # Idle workers on a machine with no core to spare: they wait for a core, or on I/O while other
        # programs keep the cores busy; their CPU figure cannot tell which (workers that sleep in I/O ran
        # twice as fast with twice as many, where "fewer" was the advice).
        suggestions.append(
            f"The {num_workers} workers are mostly idle while the machine's {_count(cores, 'core')} are busy "
            f"({w.host_cpu_percent:.0f}% in all, other programs included): if __getitem__ waits on I/O, more "
            f"workers overlap it (try num_workers={num_workers * 2} and compare the step time); if they wait "
            "for a core, more would not help: a cheaper __getitem__, or cores of the training's own"
        )
    elif busy is not None and busy < WORKERS_BUSY_PERCENT:
        suggestions.append(
            f"The {num_workers} workers are mostly idle while the loop waits: __getitem__ waits on I/O "
            "(disk, network, a lock); raise num_workers to overlap more of it, or cache the data locally"
        )
    elif cores and num_workers < cores - 1:
        suggestions.append(f"Raise DataLoader num_workers ({num_workers} now, {_count(cores, 'core')} here)")
    else:
        suggestions.append(
            "The workers are CPU-bound on every core: make __getitem__ cheaper "
            "(decode once and cache, lighter augmentation, or augment on the GPU)"
        )
    if w.device == "cuda" and not w.loader.get("pin_memory"):
        suggestions.append(
            "DataLoader(pin_memory=True) with .to(device, non_blocking=True) overlaps the copy to the GPU"
        )
    elif num_workers:  # (without workers a DataLoader refuses a prefetch_factor)
        suggestions.append("A larger prefetch_factor smooths out uneven batch times")
    return "input", message, suggestions


def _memory(w: Window) -> tuple[str, str, list[str]] | None:
    frag = w.fragmentation_bytes
    fragmented = finite(frag) and w.mem_total_bytes and frag > FRAGMENTATION_SHARE * w.mem_total_bytes
    second = (
        f"PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True cuts fragmentation ({_gib(frag)} reserved but unused)"
        if fragmented
        else "Free what the step no longer needs: zero_grad(set_to_none=True), no lists of live tensors"
    )
    first = "Need less activation memory: " + (
        "activation checkpointing or a smaller batch"
        if w.mixed_precision
        else "mixed precision (control: amp=on), activation checkpointing or a smaller batch"
    )
    if w.ooms:
        return "memory", f"{w.ooms} out-of-memory errors in the last {w.duration_s:.0f} s", [first, second]
    if w.alloc_retries:
        message = (
            f"{w.alloc_retries} allocator retries in the last {w.duration_s:.0f} s: "
            "each frees the cache and stalls the GPU"
        )
        return "memory", message, [first, second]
    if w.peak_mem_share is not None and w.peak_mem_share >= NEAR_OOM_SHARE:
        return "memory", f"allocations peak at {_pct(w.peak_mem_share)} of device memory: close to OOM", [first, second]
    if w.host_mem_share is not None and w.host_mem_share >= HOST_RAM_SHARE:
        return (
            "memory",
            f"host RAM {_pct(w.host_mem_share)} used: the machine is close to swapping",
            [
                "Fewer DataLoader workers or a smaller prefetch_factor: each worker holds its own batches",
                "Keep the dataset in numpy arrays or memory-mapped files, not Python objects copied into every worker",
            ],
        )
    return None


def _evaluation_first(w: Window, threshold: float) -> tuple[str, str, list[str]] | None:
    """An evaluation that takes more of the time than the training steps' data wait does: the input rule
    judges the training steps alone (an evaluation taking two thirds of the time, through a DataLoader,
    was "input-bound: raise num_workers" on the training steps' 38% wait, 12% of the time)."""
    data = w.shares.get("data_wait_s")
    share = w.evaluation_share
    if data is None or data < INPUT_SHARE or share is None or share < data * (1.0 - share):
        return None  # (not before memory, which stalls every phase, evaluation included)
    return _evaluation(w, threshold)


def _between(w: Window, threshold: float = BETWEEN_SHARE) -> tuple[str, str, list[str]] | None:
    """Evaluations, or long steps among short ones on the host: what they do beyond a step is work between
    training steps (from ``threshold`` of the time)."""
    return _evaluation(w, threshold) or _work_between(w, threshold)


def _evaluation(w: Window, threshold: float) -> tuple[str, str, list[str]] | None:
    """Steps with an evaluation in their time take ``threshold`` of the window's time beyond a training step."""
    if w.evaluation_share is not None and w.evaluation_share >= threshold and w.evaluation_extra_s:
        message = (
            f"evaluation takes {_pct(w.evaluation_share)} of the time: {_count(w.evaluations, 'evaluation')} in "
            f"this window, each adding {duration_text(w.evaluation_extra_s)} to its step on average (a training "
            f"step takes {duration_text(w.step_time_s)})"
        )
        return (
            "host",
            message,
            [
                "Evaluate less often or on fewer batches (the Trainer's eval_steps, Lightning's "
                "val_check_interval and limit_val_batches)",
                "Make each evaluation cheaper: a larger batch, torch.inference_mode(), DataLoader workers for "
                "the evaluation set",
            ],
        )
    return None


WORK_BETWEEN_TIP = (
    "Do that work less often or off the training's path: parallel or vectorised environments for rollouts, "
    "evaluation and checkpoints every more steps, asynchronous checkpointing"
)


def _work_between(w: Window, threshold: float) -> tuple[str, str, list[str]] | None:
    """Long steps at a regular spacing, or one or two that hold most of the time beyond a median step, take
    ``threshold`` of the window's time beyond it: whatever the detail steps' phases say, which may never fall
    on them (two checkpoints holding 94% of the time read 'compute-bound: 74% of each step')."""
    if not w.typical_step_s:
        return None
    if w.few_long is not None and w.few_long[3] >= threshold:
        count, of, long_s, share = w.few_long
        message = (
            f"{_pct(share)} of the time is in {_count(count, 'step')} of {of} that took "
            f"{long_s / w.typical_step_s:.0f}× the median step ({duration_text(long_s)} vs "
            f"{duration_text(w.typical_step_s)}): work between training steps (a rollout, an evaluation, a "
            "checkpoint), too few yet to tell how often"
        )
        return "host", message, [WORK_BETWEEN_TIP]
    if w.between_share is None or w.between_share < threshold or not w.long_step_s:
        return None
    every = w.long_every or MIN_LONG_EVERY
    message = (
        f"1 step in {every} takes {w.long_step_s / w.typical_step_s:.0f}× the median step "
        f"({duration_text(w.long_step_s)} vs {duration_text(w.typical_step_s)}): {_pct(w.between_share)} of the "
        "time is work between training steps "
        "(a rollout, an evaluation, a checkpoint, logging every N steps)"
    )
    return (
        "host",
        message,
        [
            WORK_BETWEEN_TIP,
            f"See what a long step runs: profile enough steps to hold one (control: profile={min(every + 1, 64)})",
        ],
    )


_AMP = "Mixed precision (torch.autocast, bf16/fp16) runs matmuls and convs on tensor cores (control: amp=on)"
_CUDNN = "Fixed input shapes? torch.backends.cudnn.benchmark=True picks the fastest convs (control: cudnn_benchmark=on)"
_FUSE = (
    "torch.compile fuses the elementwise work between the matmuls; fused attention "
    "(F.scaled_dot_product_attention) and a fused optimizer (fused=True) cut memory traffic"
)


def _compute_suggestions(w: Window) -> list[str]:
    """What speeds up a busy GPU, less what the run already does."""
    suggestions = [] if w.mixed_precision else [_AMP]
    if not w.cudnn_benchmark:
        suggestions.append(_CUDNN)
    if w.mixed_precision:
        suggestions.append(f"Already in {w.precision}: " + _FUSE)
    return suggestions


def _gpu(w: Window) -> tuple[str, str, list[str]]:
    util = w.gpu_util_percent
    busy = util if util is not None else (100 * w.device_busy_share if w.device_busy_share is not None else None)
    source = "busy" if util is not None else "covered by device work (no NVML utilisation)"
    data, other = w.shares.get("data_wait_s"), w.shares.get("other_s")
    if busy is None:
        return _balanced(w)
    if busy >= GPU_BUSY_PERCENT:
        return "compute", f"GPU {busy:.0f}% {source}; data wait {_pct(data)}", _compute_suggestions(w)
    if busy < GPU_IDLE_PERCENT:
        launches_fast = w.launch_ratio is not None and w.launch_ratio < SYNC_LAUNCH_RATIO
        if launches_fast and other is not None and other >= SYNC_OTHER_SHARE:
            return (
                "sync",
                f"GPU only {busy:.0f}% {source}: {_pct(other)} of each step is outside the model's work, "
                "likely waiting on host-device syncs",
                [
                    "Read values back every N steps, not every step: no per-step .item(), .cpu() or print(tensor); "
                    "keep running sums on the device",
                    "Find the syncs with torch.cuda.set_sync_debug_mode('warn'); avoid data-dependent shapes "
                    "(nonzero, boolean masks) in the loop",
                ],
            )
        return (
            "host",
            f"GPU only {busy:.0f}% {source} while the host launches the work kernel by kernel" + _own_part(w),
            [
                "A larger batch amortises the per-step Python and launch overhead",
                "Cut launch overhead: torch.compile (or CUDA graphs) and a fused optimizer (fused=True)",
                *_own_suggestion(w),
            ],
        )
    return _balanced(w)


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


def _model_words(w: Window) -> str:
    """What ``model_share`` measured: the model's phases, or (untimed: a step with no module call or no
    backward the probe saw) all of the step but the data wait, which is not to be called forward+backward."""
    if w.shares.get("forward_s") is not None:
        return "forward+backward+optimizer take"
    return "the step's work apart from the data wait (its phases untimed) takes"


def _contended(w: Window) -> tuple[str, str, list[str]] | None:
    """Other programs take the cores the training's threads would compute on (``CONTENDED_SHARE``)."""
    host, cpu, cores = w.host_cpu_percent, w.cpu_percent, w.cpu_count
    busy_machine = host is not None and host >= HOST_CONTENDED_PERCENT
    if not cores:
        return None
    threads = w.torch_threads or 1
    # A training thread that waits for a core while the machine has cores to spare, and its torch threads are
    # no more than its own, is starved by others on the cores it may use, whatever CPU the process gets.
    pinned = _pinned(w) and threads * w.world_size <= cores
    if not pinned:
        # Else a busy machine and a small share of what its threads could use (unless the kernel says the
        # training thread seldom waited) say it.
        if cpu is None or not busy_machine or cpu >= CONTENDED_SHARE * 100.0 * min(threads, cores) or _unstarved(w):
            return None
        workers = (w.workers or 0) * (w.workers_cpu_percent or 0.0)
        if host * cores - cpu - workers < 50.0:  # type: ignore[operator]
            return None  # (the machine is busy with this run itself: its DataLoader workers, not others)
    suggestions = []
    if threads > 1:
        suggestions.append(
            f"Fewer threads wait less for cores others take: torch.set_num_threads(1) (or OMP_NUM_THREADS=1) "
            f"instead of {threads}; each op waits for its slowest thread"
        )
    suggestions.append(
        "See what else runs (top, htop: the workers and other ranks count) and give the training cores of its "
        "own: taskset, a cgroup, a quieter machine"
    )
    waits = f", its training thread waiting for one {w.run_wait_percent:.0f}% of the time" if w.run_wait_percent else ""
    where = (
        f"the machine's {_count(cores, 'core')} {'is' if cores == 1 else 'are'} busy ({host:.0f}% in all)"
        if busy_machine
        else "the cores it may run on are busy (a taskset, a cpuset, other ranks pinned beside it"
        + (f"; the machine's are {host:.0f}% busy in all)" if host is not None else ")")
    )
    gets = f"{cpu:.0f}% of a core" if cpu is not None else "what is left of them"
    message = (
        f"{where} and this process gets {gets} for {_count(threads, 'torch thread')}{waits}: "
        "other processes (other programs, other ranks, DataLoader workers) take the CPU it computes on"
    )
    return "host", message, suggestions


def _pinned(w: Window) -> bool:
    """The training thread waited for a core ``PINNED_WAIT_PERCENT`` of the time or more (where the kernel
    says) while the machine's cores had room (``HOST_CONTENDED_PERCENT``)."""
    spare = w.host_cpu_percent is None or w.host_cpu_percent < HOST_CONTENDED_PERCENT
    return spare and w.run_wait_percent is not None and w.run_wait_percent >= PINNED_WAIT_PERCENT


def _unstarved(w: Window) -> bool:
    """The training thread seldom waited for a core (where the kernel says): what it does not compute, it
    sleeps or blocks, however busy the machine."""
    return w.run_wait_percent is not None and w.run_wait_percent < CONTENDED_WAIT_PERCENT


def _cpu(w: Window) -> tuple[str, str, list[str]]:
    model, other = w.model_share, w.shares.get("other_s")
    forward_known = w.shares.get("forward_s") is not None
    # The process used little CPU while the machine had some to spare, or while it seldom waited for a core:
    # it waited for something else. (On a machine whose cores other programs keep busy, a starved process
    # computes when it runs: that is the next rule's.)
    # (A thread that waits for a core while others are spare is pinned beside busy programs: no wait of its own.)
    spare = w.host_cpu_percent is not None and w.host_cpu_percent < HOST_BUSY_PERCENT
    busy_machine = w.host_cpu_percent is not None and not spare  # (more threads would wait for cores there)
    idle = ((spare and not _pinned(w)) or _unstarved(w)) and w.cpu_percent is not None
    idle = idle and w.cpu_percent < CPU_BUSY_PERCENT
    if model is not None and model >= CPU_MODEL_SHARE and idle:
        return (
            "host",
            f"{_model_words(w)} {_pct(model)} of each step, but the process used "
            f"{w.cpu_percent:.0f}% of a core: the steps wait ("
            + ("for the other ranks at the gradients' all-reduce, " if w.world_size > 1 else "")
            + "a read inside the loop, a sleep, a lock) more than they compute",
            [
                *(
                    ["Under DDP every rank waits for the slowest at each step: the Ranks tab names the straggler"]
                    if w.world_size > 1
                    else []
                ),
                "Find what the loop waits for: data read inside it (np.memmap, files, a remote store) belongs in "
                "a DataLoader with workers; a sleep or a lock in the step's path holds everything",
                "Profile a few steps: a wait is time that no operator accounts for (control: profile=5)",
            ],
        )
    contended = _contended(w)
    if contended is not None:
        return contended
    if model is not None and model >= CPU_MODEL_SHARE:
        threads = _count(w.torch_threads, "thread") if w.torch_threads else None
        cores = _count(w.cpu_count, "core") if w.cpu_count else "cores ?"
        second = (
            f"torch uses {threads} on {cores}: torch.set_num_threads(physical cores), "
            "and keep DataLoader workers off those cores"
            # (each rank's threads: two ranks of one thread on two cores use them all)
            if w.torch_threads and w.cpu_count and w.torch_threads * w.world_size < w.cpu_count and not busy_machine
            else f"Already in {w.precision}: a larger batch vectorises better"
            if w.mixed_precision
            # (it made a small CNN 54% slower on an AVX-512 CPU without AMX: said as a test, not a cure)
            else "bf16 autocast can speed up CPUs with AMX and slow down others: test it live (control: amp=on) "
            "against the step time before; a larger batch vectorises better"
        )
        gpu = "The model's math keeps the CPU busy: training on a CUDA GPU is the big step up"
        oversubscribed = []
        if w.torch_threads and w.cpu_count and w.torch_threads * w.world_size > w.cpu_count:
            # More threads than cores: they take turns on them, and each op waits for its slowest (4 threads on
            # 2 cores ran a tiny GPT at 37 ms a step, 2 at 17 ms). The first thing to change, before a GPU.
            per_rank = max(1, w.cpu_count // w.world_size)
            ranks = f" for {w.world_size} ranks" if w.world_size > 1 else ""
            oversubscribed = [
                f"torch uses {threads}{ranks} on {cores}: more threads than cores take turns on them, and each op "
                f"waits for its slowest: torch.set_num_threads({per_rank}) (or OMP_NUM_THREADS={per_rank})"
            ]
        tips = [*oversubscribed, gpu] if oversubscribed else [gpu, second]
        if _tiny(w):  # (a tiny step is its calls' fixed cost: a GPU, more threads or bf16 each add to it)
            tips = [*_tiny_step_tip(w), *oversubscribed]
        return (
            "compute",
            f"{_model_words(w)} {_pct(model)} of each step on the CPU ({', '.join(filter(None, (threads, cores)))})"
            + _own_part(w),
            [*tips, *_own_suggestion(w)],
        )
    if forward_known and other is not None and other >= CPU_OTHER_SHARE:
        batches = (
            "Batches made in the loop (a get_batch, noise drawn, augmentation) belong in a DataLoader with "
            "workers, which makes the next ones while the model trains"
        )
        bookkeeping = "Move per-step logging, metrics and checkpointing off the hot path: do them every N steps"
        return (
            "host",
            f"{_pct(other)} of each step is spent outside data loading, forward, backward and optimizer (the "
            "loop's own work: a loss computed by functions after the model returns, batches made in the loop, "
            "logging, checkpoints)" + _own_part(w),
            [
                *_tiny_step_tip(w),  # (the loop's own calls cost as the model's do)
                # (A loop that takes its batches from a DataLoader makes none of its own, most likely.)
                *((bookkeeping, batches) if w.loader else (batches, bookkeeping)),
                "A loss computed by functions after the model (a contrastive loss over a large batch, a big "
                "vocabulary's cross-entropy) is math too: time it apart before moving work off the loop",
                "Look for Python work on tensors in the loop: .tolist(), numpy conversions, printing",
                *_own_suggestion(w),
            ],
        )
    return _balanced(w)


def _own_notable(w: Window) -> bool:
    return w.optwatch_share is not None and w.optwatch_share >= OPTWATCH_NOTABLE_SHARE


def _own_part(w: Window) -> str:
    """optwatch's own Python is host work too, spread over the phases: say how much of the step it takes."""
    # (The phases' shares are of the training's own time, optwatch's taken out: said, or the two read as
    # more than 100%, "65% ...; optwatch itself takes 42%".)
    if not _own_notable(w):
        return ""
    return f"; optwatch itself takes {_pct(w.optwatch_share)} of each step, the shares before are of the rest"


def _own_suggestion(w: Window) -> list[str]:
    if not _own_notable(w):
        return []
    if w.every_check:
        return [
            f"optwatch itself takes {_pct(w.optwatch_share)} of each step here: `--budget 0` runs every check at "
            "every step; with the default budget (1%) they run only as often as it allows after the first 100 "
            "steps; `--grad-every 0` drops the per-layer statistics"
        ]
    return [
        f"optwatch itself takes {_pct(w.optwatch_share)} of each step here: after its first 100 steps its checks "
        "run only as often as `--budget` (default 1%) allows; `--grad-every 0` drops the per-layer statistics"
    ]


def _balanced(w: Window) -> tuple[str, str, list[str]]:
    parts = [f"data {_pct(w.shares.get('data_wait_s'))}", f"model {_pct(w.model_share)}"]
    if w.shares.get("forward_s") is not None:
        parts.append(f"other {_pct(w.shares.get('other_s'))}")
    if w.gpu_util_percent is not None:
        parts.append(f"GPU {w.gpu_util_percent:.0f}% busy")
    known = "mixed precision (control: amp=on) or a larger batch"
    if w.mixed_precision:
        known = "a larger batch or torch.compile"
    suggestion = f"No single bottleneck: speed now comes from the model's own cost, e.g. {known}"
    return "balanced", " · ".join(parts), [*_tiny_step_tip(w), suggestion]


def _tiny(w: Window) -> bool:
    return w.typical_step_s is not None and w.typical_step_s < TINY_STEP_S


def _tiny_step_tip(w: Window) -> list[str]:
    """A step of tiny ops (``TINY_STEP_S``): what speeds it up is fewer, larger calls, whatever the phases say."""
    if not _tiny(w):
        return []
    return [
        f"Each step ({duration_text(w.typical_step_s)} of work) is a few dozen tiny ops whose fixed cost per call "
        "(Python, dispatch, autograd) outweighs their math: a larger batch does more in the same calls for little "
        "more time; torch.compile fuses calls (a GPU would add a kernel launch to each)"
    ]


def evidence(w: Window) -> dict[str, Any]:
    """The numbers behind a verdict, rounded for reading; measurements that are missing are left out."""
    figures: dict[str, Any] = {
        "device": w.device,
        "steps": w.steps,
        "window_s": round(w.duration_s, 2),
        "step_time_s": w.step_time_s,
        "timed_steps": w.timed_steps if w.timed_steps < w.steps else None,  # said when the budget spaced them
        "data_wait_share": w.shares.get("data_wait_s"),
        "forward_share": w.shares.get("forward_s"),
        "backward_share": w.shares.get("backward_s"),
        "optimizer_share": w.shares.get("optimizer_s"),
        "other_share": w.shares.get("other_s"),
        "gpu_util_percent": w.gpu_util_percent,
        "device_busy_share": w.device_busy_share,
        "launch_ratio": w.launch_ratio,
        "optwatch_share": w.optwatch_share,
        "alloc_retries": w.alloc_retries,
        "ooms": w.ooms,
        "peak_mem_share": w.peak_mem_share,
        "fragmentation_bytes": w.fragmentation_bytes,
        "host_mem_share": w.host_mem_share,
        "cpu_percent": w.cpu_percent,
        "cpu_count": w.cpu_count,
        "host_cpu_percent": w.host_cpu_percent,
        "run_wait_percent": w.run_wait_percent,
        "torch_threads": w.torch_threads,
        "workers": w.workers,
        "workers_cpu_percent": w.workers_cpu_percent,
        "num_workers": w.loader.get("num_workers"),
        "pin_memory": w.loader.get("pin_memory"),
        "precision": w.precision,
        "between_share": w.between_share,
        "evaluation_share": w.evaluation_share,
        "long_steps": w.long_steps or None,
    }
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items() if v is not None}


def bound_text(verdict: dict[str, Any]) -> str:
    """``input-bound``, ``compute-bound``...; a run with no single bottleneck is ``balanced``, not bound."""
    bottleneck = verdict.get("bottleneck", "?")
    return "balanced (no single bottleneck)" if bottleneck == "balanced" else f"{bottleneck}-bound"
