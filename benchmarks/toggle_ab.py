"""What optwatch's probe costs the training thread, switched on and off in one process: in-process A/B.

``wall_clock.py`` compares separate processes, so each configuration also differs in what a process
does not choose (where its heap and code land, how the machine treats it that second), and a round's
spread is a percent or two. Here one process runs the LLM-shaped loop (``llm_loop.Training``) with
optwatch's probe started, and alternates blocks of iterations with the probe working and the probe
closed (its hooks then only call what they wrap; its threads, imports and memory stay), in a new order
each round. The ratio of the two blocks' median iterations says what the probe's work costs the
training, whatever else the process holds; beside it, the probe's own live figure over the same
iterations (``optwatch.summary.own_seconds`` of its step records over ``step_time_s``), which should agree.

    python benchmarks/toggle_ab.py                       # the defaults, past the first steps
    python benchmarks/toggle_ab.py --budget 0            # every check on every step
    python benchmarks/toggle_ab.py --null-hooks          # empty wrappers at the probe's hook points
    python benchmarks/toggle_ab.py --aa                  # the A/A control: both arms the same, the probe working

The probe's hub is out of reach (a rank whose hub is a closed port): the training process's share alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--block", type=int, default=40, help="iterations per block")
    parser.add_argument("--warmup", type=int, default=400, help="iterations before the first block (the first steps)")
    parser.add_argument("--budget", type=float, default=None, help="the probe's --budget (0: every check)")
    parser.add_argument("--null-hooks", action="store_true", help="empty wrappers instead of the probe")
    parser.add_argument("--aa", action="store_true", help="the A/A control: the probe works in both arms")
    parser.add_argument("--loop-args", default="", help="arguments of llm_loop.py (--batch 8 ...)")
    args = parser.parse_args()

    os.environ.update(RANK="1", WORLD_SIZE="2", OPTWATCH_HUB="127.0.0.1:9", OPTWATCH_TOKEN="0" * 32)
    if args.budget is not None:
        os.environ["OPTWATCH_OPTIONS"] = json.dumps({"budget": args.budget})
    import llm_loop

    training = llm_loop.Training(llm_loop.parse_args(args.loop_args.split()))
    records: list[dict] = []
    step_now = lambda: 0  # noqa: E731  (the probe's step count, where there is a probe)
    if args.null_hooks:
        import null_hooks

        installed: list = []  # what takes the wrappers out, while they are in

        def switch(on: bool) -> None:
            if on and not installed:
                installed.append(null_hooks.install())
            elif not on and installed:
                installed.pop()()
    else:
        import optwatch

        probe = optwatch.watch(training.model, training.optimizer)
        lock = threading.Lock()

        def keep(batch: list[dict]) -> None:
            with lock:
                records.extend(r for r in batch if r.get("kind") == "step")

        probe.channel.on_ready(keep)
        step_now = lambda: probe.step  # noqa: E731

        def switch(on: bool) -> None:
            probe.closed = not on and not args.aa  # (a batch a block made is read back whenever it is due)

    iteration = 0
    for _ in range(args.warmup):
        training.iteration(iteration)
        iteration += 1
    ratios, on_blocks = [], []
    for round_index in range(args.rounds):
        medians = {}
        for on in (True, False) if round_index % 2 else (False, True):
            switch(on)
            started_at = step_now()
            times = []
            for _ in range(args.block):
                began = time.perf_counter()
                training.iteration(iteration)
                times.append(time.perf_counter() - began)
                iteration += 1
            medians[on] = statistics.median(times)
            if on:  # (the block's first step also holds the block before: left out)
                on_blocks.append((started_at + 1, step_now()))
        ratios.append(medians[True] / medians[False])
    switch(False)
    time.sleep(0.6)  # the channel's thread reads the last block back
    report(args, ratios, records, on_blocks)


def report(args: argparse.Namespace, ratios: list[float], records: list[dict], on_blocks: list) -> None:
    from optwatch.summary import own_on_core

    ratios = sorted(ratios)
    quarter = len(ratios) // 4
    what = "null hooks" if args.null_hooks else f"probe, budget {args.budget if args.budget is not None else 'default'}"
    what += ", A/A (the probe working in both arms)" if args.aa else ""
    print(f"{what}: {len(ratios)} rounds of {args.block} iterations on and off")
    print(
        f"  on/off median iteration: {statistics.median(ratios):.4f} "
        f"(interquartile {ratios[quarter]:.4f}-{ratios[-quarter - 1]:.4f})"
    )
    if records:
        steps = {r["step"]: r for r in records}
        inside = [steps[s] for first, end in on_blocks for s in range(first, end) if s in steps]
        own = sum(own_on_core(r) for r in inside)  # (as the live figure counts it)
        background = sum(r.get("optwatch_bg_s") or 0.0 for r in inside)
        total = sum(r.get("step_time_s") or 0.0 for r in inside)
        if total:
            print(
                f"  live figure over those steps: {100 * (own + background) / total:.2f}% "
                f"(own {100 * own / total:.2f}%, background threads {100 * background / total:.2f}%; "
                f"{len(inside)} steps)"
            )


if __name__ == "__main__":
    main()
