"""Does the profiler cost anything while no window is requested?

A/B, interleaved: `present` is the probe as shipped (the profiler plugin installed and idle), `absent`
the same probe with the profiler plugin taken out of its plugin list. Each round is a fresh process
that trains in short blocks, alternating the two arms block by block (ABBA order), so that load from
other processes falls on both arms alike. Step time is the wall clock of zero_grad, forward,
backward and optimizer step, the probe's hooks included. Two CPU workloads:

- `mlp`: a tiny MLP, well under a millisecond per step, where a per-step cost would show;
- `cnn`: the example's small ResNet at width 16, batch 16 (tens of milliseconds per step).

It also times, alone, the idle plugin's `after_step` (its whole per-step cost) and what stays in both
arms: the probe's check at each step boundary whether a profiler is recording (`as_optwatch_work()`).

    python benchmarks/profiler_idle.py [--rounds 3] [--blocks 10]

Prints a Markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("absent", "present")
BLOCK_STEPS = {"mlp": 100, "cnn": 6}


def run_round(blocks: int, first: str) -> dict[str, dict[str, list[float]]]:
    """In a fresh process: step times per workload and arm, the arms alternating block by block."""
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from cifar import SmallResNet
    from harness import instrument

    from optwatch.probe.profiler import ProfilerPlugin

    torch.set_num_threads(1)  # steadier numbers on a shared machine
    probe = instrument(None, None, {})
    shipped = list(probe.plugins)
    plugins = {"present": shipped, "absent": [p for p in shipped if not isinstance(p, ProfilerPlugin)]}
    assert len(plugins["present"]) == len(plugins["absent"]) + 1

    torch.manual_seed(0)
    workloads = {
        "mlp": (
            torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)),
            torch.randn(64, 32),
            torch.randn(64, 1),
            torch.nn.functional.mse_loss,
        ),
        "cnn": (
            SmallResNet(width=16),
            torch.randn(16, 3, 32, 32),
            torch.randint(10, (16,)),
            torch.nn.functional.cross_entropy,
        ),
    }
    second = "present" if first == "absent" else "absent"
    times: dict[str, dict[str, list[float]]] = {}
    block_medians: dict[str, list[tuple[str, float]]] = {}
    for name, (model, x, y, loss_fn) in workloads.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        times[name] = {arm: [] for arm in ARMS}
        block_medians[name] = []
        order = ["warm-up"] + [arm for _ in range(blocks // 2) for arm in (first, second, second, first)]
        for arm in order:
            probe.plugins = plugins["present" if arm == "warm-up" else arm]
            block = []
            for _ in range(BLOCK_STEPS[name]):
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                optimizer.step()
                block.append(time.perf_counter() - started)
            if arm != "warm-up":
                times[name][arm].extend(block)
                block_medians[name].append((arm, statistics.median(block)))
    # Neighbouring blocks see the same load: the ratio of each present block to its absent neighbour.
    pairs = {
        name: [
            (a if a_arm == "present" else b) / (b if a_arm == "present" else a)
            for (a_arm, a), (_, b) in zip(medians[0::2], medians[1::2])
        ]
        for name, medians in block_medians.items()
    }
    probe.plugins = shipped
    probe.close()
    return {"times": times, "pairs": pairs}


def idle_after_step_s() -> float:
    """Seconds per step for the idle profiler plugin's ``after_step`` (its whole per-step cost)."""
    from optwatch.options import ProbeOptions
    from optwatch.probe.profiler import ProfilerPlugin

    plugin = ProfilerPlugin(ProbeOptions())
    record = {"step": 7, "step_time_s": 0.01}
    runs = 200_000
    return min(timeit.repeat(lambda: plugin.after_step(None, record), number=runs, repeat=5)) / runs  # type: ignore[arg-type]


def own_work_s() -> float:
    """Seconds per step boundary that ``as_optwatch_work()`` adds outside a window (in both arms)."""
    from optwatch.probe.plugin import as_optwatch_work

    def work() -> None:
        pass

    def wrapped_work() -> None:
        with as_optwatch_work():
            work()

    runs = 200_000
    wrapped = min(timeit.repeat(wrapped_work, number=runs, repeat=5))
    bare = min(timeit.repeat(lambda: work(), number=runs, repeat=5))
    return (wrapped - bare) / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes; the first arm alternates")
    parser.add_argument("--blocks", type=int, default=30, help="blocks per arm and workload in each round")
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_round(args.blocks, args.child)))
        return

    runtime_dir = tempfile.mkdtemp(prefix="ow-bench-")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OPTWATCH_RUNTIME_DIR=runtime_dir)
    pooled: dict[str, dict[str, list[float]]] = {name: {arm: [] for arm in ARMS} for name in BLOCK_STEPS}
    round_ratios: dict[str, list[float]] = {name: [] for name in BLOCK_STEPS}
    pair_ratios: dict[str, list[float]] = {name: [] for name in BLOCK_STEPS}
    for index in range(args.rounds):
        first = ARMS[index % 2]
        command = [sys.executable, __file__, "--child", first, "--blocks", str(args.blocks)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        for name, ratios in result["pairs"].items():
            pair_ratios[name].extend(ratios)
        for name, arms in result["times"].items():
            for arm, samples in arms.items():
                pooled[name][arm].extend(samples)
            ratio = statistics.median(arms["present"]) / statistics.median(arms["absent"])
            round_ratios[name].append(ratio)
            print(f"round {index + 1}/{args.rounds} {name}: present/absent {ratio:.4f}", file=sys.stderr)
    shutil.rmtree(runtime_dir, ignore_errors=True)

    import torch

    print(f"\n`{' '.join(['python', 'benchmarks/profiler_idle.py', *sys.argv[1:]])}`")
    print(f"on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), {time.strftime('%Y-%m-%d')},")
    versions = f"Python {platform.python_version()}, torch {torch.__version__}"
    print(f"{versions}; {args.rounds} rounds of {args.blocks} blocks per arm\n")
    print("| workload | steps per arm | median step, absent | median step, present (idle) | present / absent |", end="")
    print(" neighbouring blocks: median ratio [IQR] | per round |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in BLOCK_STEPS:
        absent, present = pooled[name]["absent"], pooled[name]["present"]
        quartiles = statistics.quantiles(pair_ratios[name], n=4)
        print(
            f"| {name} | {len(present)} | {statistics.median(absent) * 1e3:.3f} ms "
            f"| {statistics.median(present) * 1e3:.3f} ms "
            f"| {statistics.median(present) / statistics.median(absent):.3f} "
            f"| {statistics.median(pair_ratios[name]):.3f} [{quartiles[0]:.3f}, {quartiles[2]:.3f}] "
            f"| {' '.join(f'{ratio:.3f}' for ratio in round_ratios[name])} |"
        )
    print(f"\nThe idle plugin's `after_step`: {idle_after_step_s() * 1e9:.0f} ns per step.")
    print(f"`as_optwatch_work()` outside a window: {own_work_s() * 1e9:.0f} ns per step boundary (in both arms).")


if __name__ == "__main__":
    main()
