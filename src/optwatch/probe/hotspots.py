"""One profiler window summarised: the top ops, the modules they ran in, known culprits and a digest.

Runs on the profiler's background thread, never on the training thread. It reads the events of
``torch.profiler.profile.events()`` (``FunctionEvent``: name, self times, parent, shapes, kernels), so
its numbers are those of ``key_averages()``; times in the record are seconds.

Module attribution: while a window records, every module's forward runs inside a
``record_function("module: <qualified name>")`` scope, and the innermost scope around an op names it
(the DataLoader's and the optimizer's own scopes count too). A backward op runs under the autograd
node whose sequence number is that of the forward op that created it, which gives its module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MODULE_SCOPE = "module: "
BACKWARD_NODE = "autograd::engine::evaluate_function: "
DATALOADER_SCOPE = "enumerate(DataLoader)"
OPTIMIZER_STEP_SCOPE = "Optimizer.step#"
OPTIMIZER_SCOPE = "Optimizer."
OPTWATCH_SCOPE = "optwatch"  # the probe's own work at step boundaries
# Host calls that wait for the device.
SYNC_CALLS = frozenset(
    {
        "cudaStreamSynchronize",
        "cudaDeviceSynchronize",
        "cudaEventSynchronize",
        "hipStreamSynchronize",
        "hipDeviceSynchronize",
        "hipEventSynchronize",
    }
)
# Reading a device scalar on the host: a sync whenever the tensor lives on the device.
SCALAR_READS = frozenset({"aten::item", "aten::_local_scalar_dense"})

_SCOPE_NAMES = (MODULE_SCOPE, DATALOADER_SCOPE, OPTIMIZER_SCOPE, OPTWATCH_SCOPE, "ProfilerStep#")

TOP_OPS = 25
SHAPES_FOR_TOP = 10
SHAPES_EACH = 3
TOP_MODULES = 8
DIGEST_OPS = 3
DIGEST_MIN_PCT = 3.0

# Names a person reads faster than the dispatcher's.
_FRIENDLY = {
    "aten::copy_": "data copy",
    "aten::_to_copy": "data copy",
    "aten::to": "data copy",
    "aten::item": ".item() sync",
    "aten::_local_scalar_dense": ".item() sync",
    "cudaStreamSynchronize": "stream sync",
    "cudaDeviceSynchronize": "device sync",
    "cudaEventSynchronize": "event sync",
    "cudaLaunchKernel": "kernel launches",
    "cudaMemcpyAsync": "memcpy calls",
    "aten::mm": "matmul",
    "aten::addmm": "matmul",
    "aten::bmm": "matmul",
    "aten::matmul": "matmul",
    "aten::clamp_min": "relu",
    "aten::threshold_backward": "relu backward",
}
_VENDOR_PREFIXES = ("mkldnn_", "cudnn_", "miopen_", "native_", "slow_")


def friendly_name(op: str) -> str:
    """``aten::convolution_backward`` -> ``convolution backward``; DataLoader and optimizer scopes by role."""
    if op in _FRIENDLY:
        return _FRIENDLY[op]
    if op.startswith(DATALOADER_SCOPE):
        return "DataLoader"
    if op.startswith(OPTIMIZER_STEP_SCOPE):
        return "optimizer step"
    if op.startswith(BACKWARD_NODE):
        return "autograd " + op[len(BACKWARD_NODE) :]
    base = op.rsplit("::", 1)[-1].lstrip("_")
    for prefix in _VENDOR_PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix) :]
    return base.rstrip("_").replace("_", " ") or op


def scope_label(name: str) -> str | None:
    """What a ``record_function`` scope says about where an op ran; None for scopes that say nothing."""
    if name.startswith(MODULE_SCOPE):
        return name[len(MODULE_SCOPE) :]
    if name.startswith(DATALOADER_SCOPE):
        return "DataLoader"
    if name.startswith(OPTIMIZER_SCOPE):
        # "Optimizer.step#SGD.step" -> "optimizer.step (SGD)"
        kind, _, owner = name.partition("#")
        return f"{kind.lower()} ({owner.split('.')[0]})" if owner else kind.lower()
    if name.startswith("ProfilerStep#"):
        return None
    return name  # the script's own record_function scopes


def digest(ops: list[dict[str, Any]]) -> str:
    """One line, e.g. ``convolution backward 41%, data copy 12%``; rows with the same friendly name add up."""
    shares: dict[str, float] = defaultdict(float)
    for op in ops:
        shares[friendly_name(op["name"])] += op["pct"]
    top = sorted(shares.items(), key=lambda item: -item[1])
    parts = [f"{name} {pct:.0f}%" for name, pct in top[:DIGEST_OPS] if pct >= DIGEST_MIN_PCT]
    return ", ".join(parts) if parts else "no op above 3%"


def _is_cpu(event: Any) -> bool:
    return getattr(event.device_type, "name", str(event.device_type)).upper().endswith("CPU")


def _annotation(event: Any) -> bool:
    """A ``record_function`` scope rather than an op (torch before 2.2 does not say: go by the name)."""
    flag = getattr(event, "is_user_annotation", None)
    return event.name.startswith(_SCOPE_NAMES) if flag is None else bool(flag)


def _self_device_us(event: Any) -> float:
    # `self_device_time_total` since torch 2.3, `self_cuda_time_total` before.
    value = getattr(event, "self_device_time_total", None)
    return float(value if value is not None else getattr(event, "self_cuda_time_total", 0.0))


def _elapsed_us(event: Any) -> float:
    return float(event.time_range.end - event.time_range.start)


@dataclass
class _Row:
    cpu_us: float = 0.0
    device_us: float = 0.0
    calls: int = 0
    flags: set[str] = field(default_factory=set)
    by_module_cpu: dict[str | None, float] = field(default_factory=lambda: defaultdict(float))
    by_module_device: dict[str | None, float] = field(default_factory=lambda: defaultdict(float))
    shapes: dict[str, tuple[float, list[Any]]] = field(default_factory=dict)


def _labels(cpu_events: list[Any], open_scopes: list[Any]) -> dict[int, str | None]:
    """``id(event) -> module label`` for every CPU event (events come parents first, by start time).

    ``open_scopes`` are scopes the window ended inside of (the profiler stops at a step boundary,
    inside ``Optimizer.step``): torch leaves them out of the tree, so their ops are matched by time.
    """
    unclosed = [(scope.thread, scope.time_range, scope_label(scope.name)) for scope in open_scopes]
    context: dict[int, tuple[str, Any]] = {}
    for event in cpu_events:
        name = event.name
        if name.startswith(BACKWARD_NODE):
            context[id(event)] = ("backward", (event.fwd_thread, event.sequence_nr))
            continue
        if _annotation(event):
            label = scope_label(name)
            if label is not None:
                context[id(event)] = ("scope", label)
                continue
        parent = event.cpu_parent
        if parent is not None:
            context[id(event)] = context.get(id(parent), ("scope", None))
            continue
        span = event.time_range
        around = [label for thread, r, label in unclosed if thread == event.thread and r.start <= span.start <= r.end]
        context[id(event)] = ("scope", around[-1] if around else None)
    # The forward op that created autograd node N is the last op that saw sequence number N on its thread.
    creator: dict[tuple[Any, int], str] = {}
    for event in cpu_events:
        kind, value = context[id(event)]
        if kind == "scope" and value is not None and event.sequence_nr >= 0 and not _annotation(event):
            creator[(event.thread, event.sequence_nr)] = value
    return {key: (value if kind == "scope" else creator.get(value)) for key, (kind, value) in context.items()}


def summarise(
    events: Iterable[Any],
    *,
    wall_s: float | None,
    device_used: bool,
) -> dict[str, Any]:
    """The fields of a ``hotspots`` record (all but the step range, trace path and status)."""
    cpu_events, open_scopes, device_events = [], [], []
    for event in events:
        if _is_cpu(event):
            if not event.is_async:
                if event.name != "[memory]":
                    cpu_events.append(event)
            elif _annotation(event) and scope_label(event.name) is not None:
                open_scopes.append(event)
        elif not _annotation(event) and not event.name.startswith(_SCOPE_NAMES):
            device_events.append(event)  # kernels, copies, memsets: not the scopes mirrored on the GPU
    labels = _labels(cpu_events, open_scopes)

    rows: dict[str, _Row] = defaultdict(_Row)
    sync_flagged: set[str] = set()
    culprit_us: dict[str, float] = defaultdict(float)
    culprit_calls: dict[str, int] = defaultdict(int)
    for event in cpu_events:
        name = event.name
        if name.startswith(MODULE_SCOPE) or name.startswith("ProfilerStep#"):
            continue  # their self time is Python glue (and our own hooks), not work
        row = rows[name]
        self_cpu = float(event.self_cpu_time_total)
        self_device = _self_device_us(event) if device_used else 0.0
        label = labels.get(id(event))
        row.cpu_us += self_cpu
        row.device_us += self_device
        row.calls += 1
        row.by_module_cpu[label] += self_cpu
        row.by_module_device[label] += self_device
        shapes = event.input_shapes
        if shapes:
            key = repr(shapes)
            spent, _ = row.shapes.get(key, (0.0, shapes))
            row.shapes[key] = (spent + self_cpu + self_device, shapes)
        if device_used:
            for kernel in getattr(event, "kernels", ()):
                if "Pageable" in kernel.name and "HtoD" in kernel.name:
                    row.flags.add("pageable-h2d")
        if name in SYNC_CALLS:
            culprit_us["sync"] += _elapsed_us(event)
            culprit_calls["sync"] += 1
            parent = event.cpu_parent
            while parent is not None:  # the ops that asked for the sync (aten::item, aten::nonzero...)
                if not _annotation(parent) and not parent.name.startswith(BACKWARD_NODE):
                    sync_flagged.add(parent.name)
                parent = parent.cpu_parent
    # DataLoader and optimizer time in wall time (inclusive), counted at their outermost scope only.
    for event in [*cpu_events, *open_scopes]:
        for flag, prefix in (
            ("dataloader", DATALOADER_SCOPE),
            ("optimizer", OPTIMIZER_STEP_SCOPE),
            ("optwatch", OPTWATCH_SCOPE),
        ):
            if event.name.startswith(prefix) and not _inside(event, prefix):
                culprit_us[flag] += _elapsed_us(event)
                culprit_calls[flag] += 1
    if device_used and "sync" not in culprit_us:
        # Without the CUDA runtime's events, the scalar reads themselves are the waits.
        for event in cpu_events:
            if event.name == "aten::_local_scalar_dense":
                culprit_us["sync"] += _elapsed_us(event)
                culprit_calls["sync"] += 1
    for event in device_events:
        if "Pageable" in event.name and "HtoD" in event.name:
            culprit_us["pageable-h2d"] += _elapsed_us(event)
            culprit_calls["pageable-h2d"] += 1

    cpu_total = sum(row.cpu_us for row in rows.values())
    device_total = sum(_elapsed_us(event) for event in device_events) if device_used else 0.0
    wall_us = wall_s * 1e6 if wall_s else None
    by_device = device_total > 0 and (wall_us is None or device_total >= 0.5 * wall_us)
    total = device_total if by_device else cpu_total

    def metric(row: _Row) -> float:
        return row.device_us if by_device else row.cpu_us

    ranked = sorted(rows.items(), key=lambda item: (-metric(item[1]), -item[1].cpu_us, item[0]))
    ops = []
    modules: dict[str, float] = defaultdict(float)
    for row in rows.values():
        for label, spent in (row.by_module_device if by_device else row.by_module_cpu).items():
            if label is not None:
                modules[label] += spent
    for index, (name, row) in enumerate(ranked[:TOP_OPS]):
        by_module = row.by_module_device if by_device and row.device_us > 0 else row.by_module_cpu
        placed = {label: spent for label, spent in by_module.items() if label is not None and spent > 0}
        module = max(placed, key=placed.__getitem__) if placed else None
        flags = set(row.flags)
        if name in SYNC_CALLS or name in sync_flagged or (device_used and name in SCALAR_READS):
            flags.add("sync")
        if name.startswith(DATALOADER_SCOPE) or module == "DataLoader":
            flags.add("dataloader")
        if name.startswith(OPTIMIZER_STEP_SCOPE) or (module or "").startswith("optimizer.step"):
            flags.add("optimizer")
        if name == OPTWATCH_SCOPE or module == OPTWATCH_SCOPE:
            flags.add("optwatch")
        shapes = []
        if index < SHAPES_FOR_TOP:
            heaviest = sorted(row.shapes.values(), key=lambda pair: -pair[0])[:SHAPES_EACH]
            shapes = [recorded for _, recorded in heaviest]
        ops.append(
            {
                "name": name,
                "self_cpu_s": round(row.cpu_us / 1e6, 6),
                "self_device_s": round(row.device_us / 1e6, 6) if device_used else None,
                "calls": row.calls,
                "pct": round(100.0 * metric(row) / total, 2) if total > 0 else 0.0,
                "shapes": shapes,
                "module": module,
                "flags": sorted(flags),
            }
        )
    module_rows = [
        {"name": label, "pct": round(100.0 * spent / total, 2) if total > 0 else 0.0, "self_s": round(spent / 1e6, 6)}
        for label, spent in sorted(modules.items(), key=lambda item: -item[1])[:TOP_MODULES]
    ]
    culprits = [
        {
            "flag": flag,
            "s": round(spent / 1e6, 6),
            "calls": culprit_calls[flag],
            "pct_of_wall": round(100.0 * spent / wall_us, 2) if wall_us else None,
        }
        for flag, spent in sorted(culprit_us.items(), key=lambda item: -item[1])
    ]
    return {
        "sort_by": "self_device_s" if by_device else "self_cpu_s",
        "ops": ops,
        "modules": module_rows,
        "culprits": culprits,
        "digest": digest(ops),
        "self_cpu_total_s": round(cpu_total / 1e6, 6),
        "device_total_s": round(device_total / 1e6, 6) if device_used else None,
        "events": len(cpu_events) + len(device_events),
    }


def _inside(event: Any, prefix: str) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(prefix):
            return True
        parent = parent.cpu_parent
    return False
