"""How long the training thread waits while optwatch's background threads run: wall time minus its CPU time.

A step's wall time less the training thread's own CPU time (``time.thread_time``) is the time it was not
running: waiting for the GIL that optwatch's channel or sampler thread holds, or for a core. Bare, it is next
to nothing on an idle machine; the difference under optwatch is what its threads in the training process cost
the training beyond their own CPU time. Modes, interleaved over rounds, each in a process of its own:

    bare        the loop alone
    every       optwatch, every check on every step (``--budget 0``)
    nosampler   the same without the sampler thread's system records (its interval set to an hour)
    nopublish   the same without publishing during the run (the publish interval set to an hour)

    python benchmarks/stalls.py --rounds 3 --steps 300
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {
    "bare": None,
    "every": {"budget": 0.0},
    "nosampler": {"budget": 0.0, "system_interval_s": 3600.0},
    "nopublish": {"budget": 0.0, "publish_interval_s": 3600.0},
}


def measure(mode: str, steps: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from overhead import instrument, workload

    torch.set_num_threads(1)
    model, optimizer, step = workload("llm", torch.device("cpu"))
    for _ in range(10):
        step()
    probe = instrument(model, optimizer, MODES[mode]) if MODES[mode] is not None else None
    walls, stalls = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.thread_time()
        step()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        walls.append(wall)
        stalls.append(wall - cpu)
    if probe is not None:
        probe.close()
    print(f"RESULT {statistics.median(walls)} {sum(stalls) / steps} {sorted(stalls)[int(0.99 * (steps - 1))]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.steps)
        return
    modes = args.modes.split(",")
    results: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:  # a rotating order
            done = subprocess.run(
                [sys.executable, __file__, "--measure", mode, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
            )
            line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
            results[mode].append(tuple(float(x) for x in line.split()[1:]))
    print(f"llm loop, every check where optwatch runs; {args.steps} steps x {args.rounds} rounds (median of rounds)")
    print(f"{'mode':<11} {'step':>9} {'waiting a step':>15} {'p99 wait':>9}   per round (waiting, ms a step)")
    for mode, rows in results.items():
        wall, stall, p99 = (statistics.median(column) for column in zip(*rows))
        per_round = ", ".join(f"{row[1] * 1e3:.3f}" for row in rows)
        print(f"{mode:<11} {wall * 1e3:7.2f}ms {stall * 1e3:12.3f} ms {p99 * 1e3:7.2f}ms   {per_round}")


if __name__ == "__main__":
    main()
