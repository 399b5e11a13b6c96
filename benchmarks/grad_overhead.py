"""What gradient diagnostics cost per training step, on the cifar example's model (issue 3 asks for ≤ 1%).

    python benchmarks/grad_overhead.py                 # default cadence (--grad-every 1)
    python benchmarks/grad_overhead.py --rounds 10 --steps 30 --grad-every 10

One process, the example's SmallResNet and optimizer; ``--data fixed`` (default) trains on one fixed
batch, so the step is pure compute and the overhead is measured against the smallest denominator;
``--data example`` loads batches like the example does (its synthetic CIFAR, no workers). Two views:
- A/B: rounds of steps alternate between a probe with gradient diagnostics and one without
  (``grad_every=0``); their median step times are compared. On a busy machine the noise of this
  difference is larger than 1%: read it with the spread it prints.
- Attribution: the plugin's own work on the training thread (forward output checks; statistics before
  and after ``optimizer.step()``) is timed directly, as a share of the median step. This is the figure
  that stays steady when other processes share the CPU. The publisher thread's diagnosis is timed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from cifar import SmallResNet, SyntheticCIFAR  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from optwatch.probe.grads import GradientPlugin  # noqa: E402
from optwatch.probe.options import ProbeOptions  # noqa: E402
from optwatch.probe.probe import Probe  # noqa: E402
from optwatch.wire import runtime  # noqa: E402


class Clock:
    """Wall time and CPU time of the calling thread spent inside wrapped callables."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def wrap(self, function):
        def timed(*args, **kwargs):
            started, cpu_started = time.perf_counter(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.cpu_seconds += time.thread_time() - cpu_started

        return timed


def batches(data: str, batch_size: int):
    if data == "example":
        loader = DataLoader(SyntheticCIFAR(50_000), batch_size=batch_size, shuffle=True, drop_last=True)
        while True:
            yield from loader
    batch = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    while True:
        yield batch


def run_round(grad_every: int, steps: int, data: str, batch_size: int, seed: int, grad_budget: float) -> dict:
    torch.manual_seed(seed)
    model = SmallResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    # The steady state: the first 100 steps at full cadence are a transient these short rounds never leave.
    options = ProbeOptions(
        script="grad_overhead", grad_every=grad_every, grad_budget=grad_budget, grad_full_cadence_steps=0
    )
    probe = Probe(runtime.make_run_dir(f"bench-{seed}"), f"bench-{seed}", options)
    clocks = {"forward checks": Clock(), "before step": Clock(), "after step": Clock(), "diagnosis": Clock()}
    for plugin in probe.plugins:  # wrapped before start(), which installs the forward hook
        if not isinstance(plugin, GradientPlugin):
            continue
        plugin._check_output = clocks["forward checks"].wrap(plugin._check_output)
        plugin.on_backward_start = clocks["forward checks"].wrap(plugin.on_backward_start)
        plugin.before_optimizer_step = clocks["before step"].wrap(plugin.before_optimizer_step)
        plugin.after_step = clocks["after step"].wrap(plugin.after_step)
        plugin._observe = clocks["diagnosis"].wrap(plugin._observe)
    probe.start()
    source = batches(data, batch_size)
    times, cpu_times = [], []
    try:
        for step in range(steps + 3):
            started, cpu_started = time.perf_counter(), time.thread_time()
            images, labels = next(source)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step >= 3:  # warm-up: allocator, first-step model search
                times.append(time.perf_counter() - started)
                cpu_times.append(time.thread_time() - cpu_started)
            else:
                for clock in clocks.values():
                    clock.seconds = clock.cpu_seconds = 0.0
    finally:
        probe.close()
    return {
        "times": times,
        "cpu_times": cpu_times,
        "clocks": {name: (clock.seconds / steps, clock.cpu_seconds / steps) for name, clock in clocks.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per configuration, interleaved")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--grad-every", type=int, default=1)
    parser.add_argument(
        "--grad-budget", type=float, default=0.5, help="percent of the step the statistics may take (0: every step)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--data", choices=("fixed", "example"), default="fixed", help="one batch, or the example's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    on: list[float] = []
    off: list[float] = []
    cpu_off: list[float] = []
    per_round: list[tuple[float, float]] = []
    clocks: dict[str, list[float]] = {}
    for index in range(args.rounds):
        first, second = (args.grad_every, 0) if index % 2 == 0 else (0, args.grad_every)
        results = {
            every: run_round(every, args.steps, args.data, args.batch_size, index, args.grad_budget / 100)
            for every in (first, second)
        }
        on += results[args.grad_every]["times"]
        off += results[0]["times"]
        cpu_off += results[0]["cpu_times"]
        per_round.append((statistics.median(results[args.grad_every]["times"]), statistics.median(results[0]["times"])))
        for name, pair in results[args.grad_every]["clocks"].items():
            clocks.setdefault(name, []).append(pair)
        print(
            f"round {index}: median step {per_round[-1][0] * 1e3:.1f} ms with, {per_round[-1][1] * 1e3:.1f} ms without"
        )

    median_on, median_off = statistics.median(on), statistics.median(off)
    round_ratios = sorted(a / b - 1 for a, b in per_round)
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"grad_every {args.grad_every}, data {args.data}, {args.rounds} x {args.steps} steps per configuration"
    )
    print(
        f"A/B: median step {median_on * 1e3:.1f} ms with gradient diagnostics, {median_off * 1e3:.1f} ms without: "
        f"{100 * (median_on / median_off - 1):+.2f}% (per round: {', '.join(f'{100 * r:+.1f}%' for r in round_ratios)})"
    )
    median_cpu_off = statistics.median(cpu_off)
    print(
        f"median step without diagnostics: {median_off * 1e3:.1f} ms wall, {median_cpu_off * 1e3:.1f} ms CPU "
        "of the training thread (all the work with --threads 1)"
    )
    wall_total = cpu_total = 0.0
    for name, pairs in clocks.items():
        wall = statistics.median(p[0] for p in pairs)
        cpu = statistics.median(p[1] for p in pairs)
        where = "publisher thread" if name == "diagnosis" else "training thread"
        if name != "diagnosis":
            wall_total, cpu_total = wall_total + wall, cpu_total + cpu
        print(
            f"  {name:<15} {wall * 1e3:7.3f} ms/step wall = {100 * wall / median_off:5.2f}%, "
            f"{cpu * 1e3:7.3f} ms CPU = {100 * cpu / median_cpu_off:5.2f}% ({where})"
        )
    print(
        f"attribution (training thread): {wall_total * 1e3:.3f} ms wall = {100 * wall_total / median_off:.2f}% "
        f"of the median step; {cpu_total * 1e3:.3f} ms CPU = {100 * cpu_total / median_cpu_off:.2f}%"
    )


if __name__ == "__main__":
    main()
