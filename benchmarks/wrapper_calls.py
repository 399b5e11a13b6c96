"""What running optwatch's wrappers through ``torch.compiler.disable`` costs an eager loop: in-process A/B.

Until 3619a6d a probe that found torch._dynamo loaded when it started (every torch optimizer's construction
loads it, so every ``optwatch.watch(model, optimizer)``) called each wrapper through its disabled version,
compiling or not: 0.26 us a call against 0.03 us for a plain one (``timeit``), a few calls a step. Here one
process runs the LLM-shaped loop with the probe started and alternates blocks of iterations with the
wrappers called as now (plainly, outside torch.compile) and through their disabled versions (as before),
in a new order each round; the ratio of the blocks' median iterations (the training thread's CPU time),
with the rounds' interquartile range.

    python benchmarks/wrapper_calls.py [--loop-args "--batch 4"] [--rounds 60]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=30, help="iterations per block")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--loop-args", default="--batch 4", help="arguments of llm_loop.py")
    args = parser.parse_args()

    os.environ.update(RANK="1", WORLD_SIZE="2", OPTWATCH_HUB="127.0.0.1:9", OPTWATCH_TOKEN="0" * 32)
    import llm_loop

    import optwatch
    from optwatch.probe import hooks

    training = llm_loop.Training(llm_loop.parse_args(args.loop_args.split()))
    probe = optwatch.watch(training.model, training.optimizer)
    assert probe._hooks._disabled, "torch._dynamo was loaded (by the optimizer): the disabled versions exist"
    plain = hooks._compiled_frames

    def disabled_path(on: bool) -> None:  # as if under torch.compile: every wrapper through its disabled version
        hooks._compiled_frames = (lambda: True) if on else plain

    iteration = 0
    for _ in range(args.warmup):
        training.iteration(iteration)
        iteration += 1
    medians: dict[str, list[float]] = {"plain": [], "disabled": []}
    for _ in range(args.rounds):
        arms = list(medians)
        random.shuffle(arms)
        for arm in arms:
            disabled_path(arm == "disabled")
            times = []
            for _ in range(args.block):
                started = time.thread_time()
                training.iteration(iteration)
                times.append(time.thread_time() - started)
                iteration += 1
            medians[arm].append(statistics.median(times))
    disabled_path(False)
    ratios = [d / p for d, p in zip(medians["disabled"], medians["plain"])]
    low, _, high = statistics.quantiles(ratios, n=4)
    print(
        f"disabled / plain: {statistics.median(ratios):.4f} [interquartile {low:.4f}-{high:.4f}], "
        f"plain {1000 * statistics.median(medians['plain']):.2f} ms a step, {args.rounds} rounds of {args.block}"
    )
    probe.close()


if __name__ == "__main__":
    main()
