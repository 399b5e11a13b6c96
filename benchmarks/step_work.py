"""What optwatch adds to each training step: operators, kernel launches, and where its host time goes.

The overhead benchmark says how much slower a step is; this one says why. Over the same steady-state
steps of a workload, bare and under optwatch (default settings or every diagnostic on):
- torch.profiler counts the operators and CUDA runtime calls (kernel launches, event records, copies)
  per step; the difference is optwatch's;
- cProfile times the training thread's Python per step, and lists optwatch's functions by own time.

    python benchmarks/step_work.py --workload cifar --device cuda
    python benchmarks/step_work.py --workload tiny --mode all --top 25
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import MODES, instrument, settle, workload  # noqa: E402

# CUDA runtime calls worth counting on the host side, by the profiler's names.
RUNTIME_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cudaEventRecord", "cudaMemcpyAsync", "cudaStreamWaitEvent")


def counts(step, steps: int, device: torch.device) -> tuple[collections.Counter, collections.Counter]:
    """Per-kind totals (aten ops, runtime calls, optwatch ranges) and per-operator counts over ``steps``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    counter: collections.Counter = collections.Counter()
    operators: collections.Counter = collections.Counter()
    for event in prof.events():
        if event.name.startswith("aten::"):
            counter["aten ops"] += 1
            operators[event.name] += 1
        if event.name in RUNTIME_CALLS or event.name.startswith("cudaLaunch"):
            counter[event.name] += 1
        if event.name.startswith("optwatch"):
            counter["optwatch ranges"] += 1
    return counter, operators


def thread_cpu(step, steps: int, device: torch.device) -> dict[str, float]:
    """CPU seconds per step of each thread of this process over ``steps`` plain steps (psutil, by native id)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    before = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    after = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    used = {names.get(tid, f"thread {tid}"): (cpu - before.get(tid, 0.0)) / steps for tid, cpu in after.items()}
    used["(wall)"] = wall / steps
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=("tiny", "cifar", "cifar-host", "transformer", "llm"), default="cifar")
    parser.add_argument("--mode", choices=("default", "every-step", "all"), default="default")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--top", type=int, default=20, help="optwatch functions listed by own time")
    parser.add_argument("--ops", type=int, default=12, help="operators listed by how many optwatch adds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    os.environ.setdefault("OPTWATCH_RUNTIME_DIR", tempfile.mkdtemp(prefix="owb-"))
    device = torch.device(args.device)
    print(f"optwatch per-step work: {args.workload} on {device}, mode {args.mode}, {args.steps} steps")

    _, _, bare_step = workload(args.workload, device)
    for _ in range(10):
        bare_step()
    bare, bare_ops = counts(bare_step, args.steps, device)

    model, optimizer, step = workload(args.workload, device)
    probe = instrument(model, optimizer, MODES[args.mode])
    try:
        for _ in range(10):
            step()
        spacing = settle(probe, step, device)
        print(f"detail steps (--budget): every {spacing} steps, settled before counting")
        instrumented, instrumented_ops = counts(step, args.steps, device)
        threads = thread_cpu(step, args.steps, device)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.steps):
            step()
        profiler.disable()
    finally:
        probe.close()

    print("\nper step: bare, under optwatch, added")
    for name in sorted(set(bare) | set(instrumented)):
        b, i = bare[name] / args.steps, instrumented[name] / args.steps
        print(f"  {name:<24} {b:8.1f} {i:8.1f} {i - b:+8.1f}")

    added = {name: (instrumented_ops[name] - bare_ops[name]) / args.steps for name in instrumented_ops | bare_ops}
    print("\noperators optwatch adds per step (nested ones counted too: a norm calls others)")
    for name, count in sorted(added.items(), key=lambda item: -abs(item[1]))[: args.ops]:
        if count:
            print(f"  {name:<32} {count:+8.1f}")

    print("\nCPU per step by thread, under optwatch (psutil; 10 ms clock ticks, so read over many steps)")
    for name, seconds in sorted(threads.items(), key=lambda item: -item[1]):
        if seconds > 0:
            print(f"  {name:<24} {1e6 * seconds:9.0f} us")

    stats = pstats.Stats(profiler)
    rows = []
    total_own = 0.0
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        if "optwatch" in filename and "benchmarks" not in filename:
            rows.append((own, cumulative, calls, f"{Path(filename).name}:{line} {function}"))
            total_own += own
    rows.sort(reverse=True)
    own_us = 1e6 * total_own / args.steps
    print(f"\noptwatch's Python on the training thread (cProfile, inflated by it): {own_us:.0f} us/step own time")
    print(f"  {'own us/step':>11} {'cum us/step':>11} {'calls/step':>10}  function")
    for own, cumulative, calls, where in rows[: args.top]:
        per_step = (1e6 * own / args.steps, 1e6 * cumulative / args.steps, calls / args.steps)
        print("  {:11.1f} {:11.1f} {:10.1f}  ".format(*per_step) + where)


if __name__ == "__main__":
    main()
