"""One profiler window summarised from its Chrome trace: top ops, their modules, culprits, a digest.

Torch-free and pure: it reads the trace ``torch.profiler`` exports (the JSON Perfetto opens), so it
runs in a helper process (see ``traces``) and never competes with the training thread for the GIL.
Its figures are those of ``key_averages()``: an op's self time is its duration minus its children's
on the same thread; its self device time is the duration of the kernels, copies and memsets it
launched itself (linked by the trace's ``External id``). Times in the result are seconds.

Where an op ran: while a window records, every module's forward runs inside a
``record_function("module: <label>")`` scope (``module_label``), and the innermost scope around an op names it
(the DataLoader's and the optimizer's own scopes, optwatch's, and the script's own scopes count too).
A backward op runs under the autograd node that the forward op with the same sequence number created,
which gives its module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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
# Trace categories: what runs on a host thread, and what runs on the device.
HOST_CATEGORIES = frozenset({"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "xpu_runtime"})
DEVICE_CATEGORIES = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})

TOP_OPS = 25
SHAPES_FOR_TOP = 10
SHAPES_EACH = 3
TOP_MODULES = 8
DIGEST_OPS = 3
DIGEST_MIN_PCT = 3.0
DIGEST_MODULES = 2
DIGEST_MIN_MODULE_PCT = 10.0
# From this share of the window's wall time in no op on, that is what the digest says first: the ops'
# shares are then shares of the few per cent left.
OUTSIDE_OPS_LEAD_PCT = 50.0
_NESTING_SLACK_US = 0.01  # trace times are rounded to the nanosecond

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
    if op.startswith(OPTIMIZER_SCOPE):  # "Optimizer.zero_grad#SGD.zero_grad" -> "optimizer zero grad"
        return "optimizer " + op.partition("#")[0][len(OPTIMIZER_SCOPE) :].replace("_", " ")
    if op.startswith(BACKWARD_NODE):
        return "autograd " + op[len(BACKWARD_NODE) :]
    base = op.rsplit("::", 1)[-1].lstrip("_")
    for prefix in _VENDOR_PREFIXES:
        if base.startswith(prefix):
            base = base[len(prefix) :]
    return base.rstrip("_").replace("_", " ") or op


def module_label(qualified_name: str, class_name: str) -> str:
    """A module as its scope names it: its qualified name (``layer1.conv1``), with its class where the name
    ends in a container's index (``0 (Linear)``, ``features.3 (Conv2d)``: a bare number says nothing of
    what the layer is); the model itself (no name) by its class."""
    if not qualified_name:
        return class_name
    if qualified_name.rsplit(".", 1)[-1].isdigit():
        return f"{qualified_name} ({class_name})"
    return qualified_name


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
    return name  # the script's own record_function scopes, and optwatch's


def digest(
    ops: list[dict[str, Any]], modules: Sequence[dict[str, Any]] = (), outside_ops_pct: float | None = None
) -> str:
    """One line: the top ops (rows with the same friendly name add up), the top modules, and the window's
    wall time in no op, first when it is most of the window. E.g. ``matmul 81%, tanh backward 4%;
    modules: heavy 69%, fc3 12%; 7% of the window in no torch op``."""
    shares: dict[str, float] = defaultdict(float)
    for op in ops:
        shares[friendly_name(op["name"])] += op["pct"]
    top = sorted(shares.items(), key=lambda item: -item[1])
    parts = [f"{name} {pct:.0f}%" for name, pct in top[:DIGEST_OPS] if pct >= DIGEST_MIN_PCT]
    text = ", ".join(parts) if parts else f"no op above {DIGEST_MIN_PCT:.0f}%"
    heavy = [f"{m['name']} {m['pct']:.0f}%" for m in modules[:DIGEST_MODULES] if m["pct"] >= DIGEST_MIN_MODULE_PCT]
    if heavy:
        text += f"; module{'s' if len(heavy) > 1 else ''}: " + ", ".join(heavy)
    if outside_ops_pct is None:
        return text
    if outside_ops_pct >= OUTSIDE_OPS_LEAD_PCT:
        return (
            f"{outside_ops_pct:.0f}% of the window is in no torch op: Python or I/O between ops (a save, "
            f"logging, data loading), see the step times. In ops ({100 - outside_ops_pct:.0f}%): {text}"
        )
    return f"{text}; {outside_ops_pct:.0f}% of the window in no torch op"


@dataclass(eq=False)
class _Event:
    """A host event of the trace, placed in its thread's call tree."""

    name: str
    category: str
    thread: tuple[Any, Any]
    start: float
    end: float
    args: dict[str, Any]
    parent: _Event | None = None
    children_us: float = 0.0
    device_us: float = 0.0
    device_names: list[str] = field(default_factory=list)
    children: list[_Event] = field(default_factory=list)
    """Earliest first."""

    @property
    def elapsed_us(self) -> float:
        return self.end - self.start

    @property
    def self_us(self) -> float:
        return max(0.0, self.elapsed_us - self.children_us)

    @property
    def is_scope(self) -> bool:
        return self.category == "user_annotation"

    @property
    def is_glue(self) -> bool:
        """A module's scope or a profiler step: its own time is Python between ops (and optwatch's hooks),
        not work of its own."""
        return self.name.startswith(MODULE_SCOPE) or self.name.startswith("ProfilerStep#")


def _host_events(trace_events: list[dict[str, Any]]) -> list[_Event]:
    """Host events as call trees, one per thread, parents first."""
    events = [
        _Event(
            name=str(raw.get("name", "")),
            category=raw["cat"],
            thread=(raw.get("pid"), raw.get("tid")),
            start=float(raw["ts"]),
            end=float(raw["ts"]) + float(raw.get("dur", 0.0)),
            args=raw.get("args") or {},
        )
        for raw in trace_events
        if raw.get("ph") == "X" and raw.get("cat") in HOST_CATEGORIES
    ]
    # A scope still open when the profiler stopped (it stops inside the optimizer's step) runs to the
    # end of the trace, profiler shutdown included: end it with the last op.
    last_op_end = max((e.end for e in events if not e.is_scope), default=None)
    if last_op_end is not None:
        for event in events:
            if event.is_scope and event.end > last_op_end:
                event.end = max(event.start, last_op_end)
    events.sort(key=lambda e: (e.start, -e.end))
    stacks: dict[tuple[Any, Any], list[_Event]] = defaultdict(list)
    for event in events:
        stack = stacks[event.thread]
        while stack and stack[-1].end + _NESTING_SLACK_US < event.end:
            stack.pop()
        if stack:
            event.parent = stack[-1]
            stack[-1].children_us += event.elapsed_us
            stack[-1].children.append(event)
        stack.append(event)
    return events


def _labels(events: list[_Event]) -> dict[int, str | None]:
    """``id(event) -> where it ran`` (a module's qualified name, DataLoader, optimizer.step (SGD)...)."""
    context: dict[int, tuple[str, Any]] = {}
    for event in events:  # parents come first
        if event.name.startswith(BACKWARD_NODE):
            context[id(event)] = ("backward", event.args.get("Sequence number"))
        elif event.is_scope and scope_label(event.name) is not None:
            context[id(event)] = ("scope", scope_label(event.name))
        elif event.parent is not None:
            context[id(event)] = context[id(event.parent)]
        else:
            context[id(event)] = ("scope", None)
    # The forward op that created autograd node N is the last op that saw sequence number N. Numbers
    # are per thread and the trace does not map the backward's thread ids to the forward's: a number
    # seen on several threads is left unattributed.
    creators: dict[int, dict[Any, str]] = defaultdict(dict)
    for event in events:
        kind, label = context[id(event)]
        number = event.args.get("Sequence number")
        if kind == "scope" and label is not None and not event.is_scope and isinstance(number, int) and number >= 0:
            creators[number][event.thread] = label
    resolved: dict[int, str | None] = {}
    for event in events:
        kind, value = context[id(event)]
        if kind == "scope":
            resolved[id(event)] = value
        else:
            by_thread = creators.get(value, {}) if isinstance(value, int) else {}
            resolved[id(event)] = next(iter(by_thread.values())) if len(by_thread) == 1 else None
    return resolved


def _in_ops_us(events: list[_Event], device_events: list[dict[str, Any]]) -> float:
    """Wall time spent in some op: on any host thread in an op's own time (not a module scope's or a
    profiler step's, which is Python between ops), or on the device. Overlaps count once, so threads that
    ran at the same time add no more than the wall."""
    spans: list[tuple[float, float]] = []
    for event in events:
        if event.is_glue:
            continue
        cursor = event.start
        for child in event.children:  # its own time: the gaps between its children
            if child.start > cursor:
                spans.append((cursor, min(child.start, event.end)))
            cursor = max(cursor, child.end)
        if event.end > cursor:
            spans.append((cursor, event.end))
    spans += [(float(raw["ts"]), float(raw["ts"]) + float(raw.get("dur", 0.0))) for raw in device_events]
    covered = 0.0
    reached = float("-inf")
    for start, end in sorted(spans):
        if end > reached:
            covered += end - max(start, reached)
            reached = end
    return covered


def _inside(event: _Event, prefix: str) -> bool:
    parent = event.parent
    while parent is not None:
        if parent.name.startswith(prefix):
            return True
        parent = parent.parent
    return False


@dataclass
class _Row:
    cpu_us: float = 0.0
    device_us: float = 0.0
    calls: int = 0
    flags: set[str] = field(default_factory=set)
    by_module_cpu: dict[str | None, float] = field(default_factory=lambda: defaultdict(float))
    by_module_device: dict[str | None, float] = field(default_factory=lambda: defaultdict(float))
    shapes: dict[tuple[str | None, str], tuple[float, list[Any]]] = field(default_factory=dict)
    """Per (where it ran, input shapes): the time spent and the shapes."""


def summarise(trace: dict[str, Any], *, wall_s: float | None, device_used: bool) -> dict[str, Any]:
    """The fields of a ``hotspots`` record (all but the status, step range and trace path)."""
    trace_events = trace.get("traceEvents") or []
    events = _host_events(trace_events)
    labels = _labels(events)
    device_events = (
        [raw for raw in trace_events if raw.get("ph") == "X" and raw.get("cat") in DEVICE_CATEGORIES]
        if device_used
        else []
    )
    # Device work belongs to the host op that launched it.
    launched_by = {e.args["External id"]: e for e in events if e.category != "cuda_runtime" and "External id" in e.args}
    for raw in device_events:
        owner = launched_by.get((raw.get("args") or {}).get("External id"))
        if owner is not None:
            owner.device_us += float(raw.get("dur", 0.0))
            owner.device_names.append(str(raw.get("name", "")))

    rows: dict[str, _Row] = defaultdict(_Row)
    sync_callers: set[str] = set()
    culprit_us: dict[str, float] = defaultdict(float)
    culprit_calls: dict[str, int] = defaultdict(int)
    for event in events:
        name = event.name
        if event.is_glue:
            continue
        row = rows[name]
        label = labels[id(event)]
        row.cpu_us += event.self_us
        row.device_us += event.device_us
        row.calls += 1
        row.by_module_cpu[label] += event.self_us
        row.by_module_device[label] += event.device_us
        shapes = event.args.get("Input Dims")
        if shapes:
            key = (label, repr(shapes))
            spent, _ = row.shapes.get(key, (0.0, shapes))
            row.shapes[key] = (spent + event.self_us + event.device_us, shapes)
        if any("Pageable" in kernel and "HtoD" in kernel for kernel in event.device_names):
            row.flags.add("pageable-h2d")
        if name in SYNC_CALLS:
            culprit_us["sync"] += event.elapsed_us
            culprit_calls["sync"] += 1
            parent = event.parent
            while parent is not None:  # the ops that asked for it: aten::item, aten::nonzero...
                if not parent.is_scope and not parent.name.startswith(BACKWARD_NODE):
                    sync_callers.add(parent.name)
                parent = parent.parent
        for flag, prefix in (
            ("dataloader", DATALOADER_SCOPE),
            ("optimizer", OPTIMIZER_STEP_SCOPE),
            ("optwatch", OPTWATCH_SCOPE),
        ):
            if name.startswith(prefix) and event.is_scope and not _inside(event, prefix):
                culprit_us[flag] += event.elapsed_us
                culprit_calls[flag] += 1
    if device_used and "sync" not in culprit_us:
        # Without the CUDA runtime's events, the scalar reads themselves are the waits.
        for event in events:
            if event.name == "aten::_local_scalar_dense":
                culprit_us["sync"] += event.elapsed_us
                culprit_calls["sync"] += 1
    for raw in device_events:
        if "Pageable" in raw.get("name", "") and "HtoD" in raw.get("name", ""):
            culprit_us["pageable-h2d"] += float(raw.get("dur", 0.0))
            culprit_calls["pageable-h2d"] += 1

    cpu_total = sum(row.cpu_us for row in rows.values())
    device_total = sum(float(raw.get("dur", 0.0)) for raw in device_events)
    wall_us = wall_s * 1e6 if wall_s else None
    by_device = device_total > 0 and (wall_us is None or device_total >= 0.5 * wall_us)
    total = device_total if by_device else cpu_total

    def metric(row: _Row) -> float:
        return row.device_us if by_device else row.cpu_us

    ranked = sorted(rows.items(), key=lambda item: (-metric(item[1]), -item[1].cpu_us, item[0]))
    # The modules (the model's and any other nn.Module), as against the DataLoader's, the optimizer's and
    # the script's own scopes: the digest names the heaviest.
    module_labels = {e.name[len(MODULE_SCOPE) :] for e in events if e.is_scope and e.name.startswith(MODULE_SCOPE)}
    modules: dict[str, float] = defaultdict(float)
    for row in rows.values():
        for label, spent in (row.by_module_device if by_device else row.by_module_cpu).items():
            if label is not None:
                modules[label] += spent
    ops = []
    for index, (name, row) in enumerate(ranked[:TOP_OPS]):
        by_module = row.by_module_device if by_device and row.device_us > 0 else row.by_module_cpu
        placed = {label: spent for label, spent in by_module.items() if label is not None and spent > 0}
        module = max(placed, key=placed.__getitem__) if placed else None
        flags = set(row.flags)
        if name in SYNC_CALLS or name in sync_callers or (device_used and name in SCALAR_READS):
            flags.add("sync")
        if name.startswith(DATALOADER_SCOPE) or module == "DataLoader":
            flags.add("dataloader")
        if name.startswith(OPTIMIZER_STEP_SCOPE) or (module or "").startswith("optimizer.step"):
            flags.add("optimizer")
        if name == OPTWATCH_SCOPE or module == OPTWATCH_SCOPE:
            flags.add("optwatch")
        # The shapes of the calls in the module shown beside them: a row reads as one fact (BatchNorm2d(32)
        # beside another layer's [128, 64, 8, 8] read as if that layer saw those inputs).
        mine = [value for (label, _), value in row.shapes.items() if label == module or module is None]
        heaviest = sorted(mine, key=lambda pair: -pair[0])[:SHAPES_EACH]
        ops.append(
            {
                "name": name,
                "self_cpu_s": round(row.cpu_us / 1e6, 6),
                "self_device_s": round(row.device_us / 1e6, 6) if device_used else None,
                "calls": row.calls,
                "pct": round(100.0 * metric(row) / total, 2) if total > 0 else 0.0,
                "shapes": [shapes for _, shapes in heaviest] if index < SHAPES_FOR_TOP else [],
                "module": module,
                # (the other modules it also ran in: 50 convolution calls shown beside one module read as
                # that module's own)
                "modules_more": max(len(placed) - 1, 0),
                "flags": sorted(flags),
            }
        )
    by_module = [
        {
            "name": label,
            "pct": round(100.0 * spent / total, 2) if total > 0 else 0.0,
            "self_s": round(spent / 1e6, 6),
        }
        for label, spent in sorted(modules.items(), key=lambda item: -item[1])[:TOP_MODULES]
    ]
    outside_us = max(0.0, wall_us - _in_ops_us(events, device_events)) if wall_us else None
    outside_pct = round(100.0 * outside_us / wall_us, 2) if outside_us is not None and wall_us else None
    return {
        "sort_by": "self_device_s" if by_device else "self_cpu_s",
        "ops": ops,
        "modules": by_module,
        "culprits": [
            {
                "flag": flag,
                "s": round(spent / 1e6, 6),
                "calls": culprit_calls[flag],
                "pct_of_wall": round(100.0 * spent / wall_us, 2) if wall_us else None,
            }
            for flag, spent in sorted(culprit_us.items(), key=lambda item: -item[1])
        ],
        "outside_ops_s": round(outside_us / 1e6, 6) if outside_us is not None else None,
        "outside_ops_pct": outside_pct,
        "digest": digest(ops, [m for m in by_module if m["name"] in module_labels], outside_pct),
        "self_cpu_total_s": round(cpu_total / 1e6, 6),
        "device_total_s": round(device_total / 1e6, 6) if device_used else None,
        "events": len(events) + len(device_events),
    }
