"""optwatch's cost on training: the same loop bare, at default settings, and with every diagnostic on.

Runs the modes interleaved (A/B/C, A/B/C, ...) in one process so machine drift cancels, and prints the
median step time, throughput and the ratio to bare for each, with the spread over rounds. On CUDA it
also runs the instrumented steps under ``torch.cuda.set_sync_debug_mode("error")``: any host-device
sync caused by optwatch raises, so "0 syncs" is checked, not assumed.

    python benchmarks/overhead.py                      # tiny (optwatch's own cost), cifar, transformer
    python benchmarks/overhead.py --workload cifar --rounds 7 --steps 40
    python benchmarks/overhead.py --workload cifar --modes default,forward-check,no-gradients
    python benchmarks/overhead.py --workload cifar --threads 1 --clock thread-cpu   # CPU time, not wall
    python benchmarks/overhead.py --workload cifar-host --threads 1   # a host-bound step on a CPU
    python benchmarks/overhead.py --workload deep --modes default,every-step   # 100 layers' statistics
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from cifar import SmallResNet  # noqa: E402
from harness import instrument, published  # noqa: E402

# Settings per mode. "all" turns on every diagnostic optwatch has, at its most frequent cadence; the
# last two take one diagnostic off the default, to attribute its cost (--modes).
MODES: dict[str, dict | None] = {
    "bare": None,
    "default": {},
    "all": {"system_interval_s": 0.25, "grad_every": 1, "budget": 0.0, "forward_check": "always"},
    "forward-check": {"forward_check": "always"},
    "no-gradients": {"grad_every": 0},
    "every-step": {"budget": 0.0},  # every diagnostic at every step, whatever it costs (before --budget)
    # The detail steps at their widest spacing (every 128th): what every other step costs, the per-step
    # record alone. A budget no run can meet drives the spacing there within ~170 steps.
    "light": {"budget": 1e-6},
}


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 128, layers: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))


# Samples per step of each workload, for the throughput figures (the transformer's are 16 sequences of 63 tokens).
BATCH = {"tiny": 8, "deep": 16, "cifar": 128, "cifar-host": 2, "transformer": 16, "llm": 8}


def workload(name: str, device: torch.device):
    """(model, optimizer, step function) at a fixed seed, with data already in memory."""
    torch.manual_seed(0)
    if name == "tiny":
        # A step of a few tens of microseconds: what is measured is optwatch's own per-step cost.
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)).to(device)
        inputs, targets = torch.randn(8, 16, device=device), torch.randn(8, 1, device=device)

        def loss_fn():
            return F.mse_loss(model(inputs), targets)

    elif name == "deep":
        # 100 parameters, 100 rows of per-layer statistics: what one rank of docs/scale.md publishes.
        layers = [m for _ in range(100) for m in (nn.Linear(32, 32, bias=False), nn.ReLU())]
        model = nn.Sequential(*layers).to(device)
        inputs, targets = torch.randn(16, 32, device=device), torch.randn(16, 32, device=device)

        def loss_fn():
            return F.mse_loss(model(inputs), targets)

    elif name in ("cifar", "cifar-host"):
        # cifar-host: the same modules, parameters and operator calls, 4 channels wide on 2 images of 8x8:
        # next to no arithmetic. On a CPU it stands in for the cifar model on a fast GPU, where the
        # arithmetic is the device's and launching it is the step.
        model = SmallResNet(width=32 if name == "cifar" else 4).to(device)
        shape = (128, 3, 32, 32) if name == "cifar" else (2, 3, 8, 8)
        images = torch.randn(*shape, device=device)
        labels = torch.randint(0, 10, (shape[0],), device=device)

        def loss_fn():
            return F.cross_entropy(model(images), labels)

    elif name == "llm":
        # benchmarks/llm_loop.py's small GPT and its step: AdamW over two param groups, two micro-batches
        # of 4 sequences accumulated, and clip_grad_norm_ (whose gradient norms optwatch's statistics share).
        from llm_loop import GPT

        model = GPT(256, 16, 2, 32, 4).to(device)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay}], lr=6e-4)
        micro = [(torch.randint(0, 256, (4, 16), device=device), torch.randint(0, 256, (4, 16), device=device))]
        micro.append(micro[0])

        def llm_step():
            for inputs, targets in micro:
                (model(inputs, targets) / len(micro)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return model, optimizer, llm_step
    else:
        model = TinyTransformer().to(device)
        tokens = torch.randint(0, 1000, (16, 64), device=device)

        def loss_fn():
            logits = model(tokens[:, :-1])
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, optimizer, step


# What a step's time is read from (--clock). "thread-cpu" is the training thread's CPU time: with
# --threads 1 all of torch's work runs on that thread, so it is the step's work plus optwatch's work on
# the training thread, without the time other processes take the core away. (On the shared 2-core VM
# of RESULTS.md it was no steadier than wall time: neighbours still slow the caches and memory.)
# optwatch's background threads are counted apart either way.
CLOCKS = {"wall": time.perf_counter, "thread-cpu": time.thread_time}
clock = time.perf_counter
background_cpu: dict[str, list[float]] = {}
"""Per mode: CPU seconds per step spent in this process outside the training thread (optwatch's threads)."""
spacings: dict[str, list[int]] = {}
"""Per mode: the spacing of detail steps (``--budget``) each round settled at."""
reported_own: dict[str, list[float]] = {}
"""Per mode: the mean ``optwatch_s`` of the timed steps' records, per round: optwatch's own figure of its
cost on the training thread, which the dashboard shows, to set against the measured difference."""


def timed_steps(step, steps: int, device: torch.device) -> list[float]:
    times = []
    for _ in range(steps):
        started = clock()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the benchmark's own sync, outside optwatch, to time honestly
        times.append(clock() - started)
    return times


def run_mode(mode: str, workload_name: str, steps: int, warmup: int, device: torch.device) -> list[float]:
    model, optimizer, step = workload(workload_name, device)
    timed_steps(step, warmup, device)
    settings = MODES[mode]
    if settings is None:
        return timed_steps(step, steps, device)
    probe = instrument(model, optimizer, settings)
    try:
        timed_steps(step, warmup, device)  # the probe's own first-step work (model lookup) is not steady state
        spacings.setdefault(mode, []).append(settle(probe, step, device))
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        first_timed = probe.step
        try:
            process_started, thread_started = time.process_time(), time.thread_time()
            times = timed_steps_without_sync(step, steps, device)
            other = (time.process_time() - process_started) - (time.thread_time() - thread_started)
            background_cpu.setdefault(mode, []).append(other / steps)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    finally:
        records = published(probe)
    own = [
        r["optwatch_s"]
        for r in records
        if r["kind"] == "step" and r["step"] >= first_timed and r.get("optwatch_s") is not None
    ]
    if own:
        reported_own.setdefault(mode, []).append(statistics.fmean(own))
    return times


def settle(probe, step, device: torch.device, quiet_steps: int = 64, most_steps: int = 600) -> int:
    """Train until the budget's spacing of detail steps (``--budget``) has not changed for ``quiet_steps``
    and for a whole window of the governor (two spacings): the steady state a long run spends its time
    in, not the climb to it."""
    spacing, unchanged = probe.detail_every, 0
    for _ in range(most_steps):
        if unchanged > max(quiet_steps, 2 * spacing):
            break
        timed_steps(step, 1, device)
        unchanged = unchanged + 1 if probe.detail_every == spacing else 0
        spacing = probe.detail_every
    return spacing


def timed_steps_without_sync(step, steps: int, device: torch.device) -> list[float]:
    if device.type != "cuda":
        return timed_steps(step, steps, device)
    # Under sync-debug "error" we cannot synchronize per step; time the whole run with events instead.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(steps):
        start.record()
        step()
        end.record()
        torch.cuda.set_sync_debug_mode("default")
        end.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        times.append(start.elapsed_time(end) / 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload", choices=("tiny", "deep", "cifar", "cifar-host", "transformer", "llm", "all"), default="all"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode per round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--modes", default="bare,default,all", help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="what a step's time is read from (CPU only)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "thread-cpu" and args.device != "cpu":
        parser.error("--clock thread-cpu times CPU work: use it with --device cpu")
    modes = ["bare", *(m for m in args.modes.split(",") if m and m != "bare")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    os.environ.setdefault("OPTWATCH_RUNTIME_DIR", tempfile.mkdtemp(prefix="owb-"))
    device = torch.device(args.device)
    names = ("tiny", "cifar", "transformer") if args.workload == "all" else (args.workload,)
    results = {}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print(
        f"optwatch overhead: {machine}, torch {torch.__version__}, device {device}, "
        f"{args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} torch threads, "
        f"clock {args.clock}, {time.strftime('%Y-%m-%d')}"
    )
    for name in names:
        background_cpu.clear()
        reported_own.clear()
        spacings.clear()
        medians: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                medians[mode].append(statistics.median(run_mode(mode, name, args.steps, args.warmup, device)))
        bare = medians["bare"]
        print(f"\n{name}: median step time and throughput over rounds, ratio to bare (min..max over rounds)")
        results[name] = {}
        for mode, values in medians.items():
            ratios = [v / b for v, b in zip(values, bare)]
            median_time = statistics.median(values)
            throughput = [BATCH[name] / v for v in values]
            results[name][mode] = {
                "median_step_s": median_time,
                "samples_per_s": statistics.median(throughput),
                "samples_per_s_min": min(throughput),
                "samples_per_s_max": max(throughput),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
            }
            added_us = (median_time - statistics.median(bare)) * 1e6
            print(
                f"  {mode:<8} {median_time * 1000:8.3f} ms/step  {statistics.median(throughput):9.1f} samples/s "
                f"({min(throughput):.1f}..{max(throughput):.1f})  ratio {statistics.median(ratios):.4f} "
                f"({min(ratios):.4f}..{max(ratios):.4f})  overhead {100 * (statistics.median(ratios) - 1):+.2f}% "
                f"({added_us:+.0f} us/step)"
            )
            if mode in background_cpu:
                results[name][mode]["background_cpu_s_per_step"] = statistics.median(background_cpu[mode])
                print(f"  {'':<8} other threads: {statistics.median(background_cpu[mode]) * 1e6:.0f} us CPU per step")
            if mode in reported_own:
                own = statistics.median(reported_own[mode])
                results[name][mode]["reported_optwatch_s_per_step"] = own
                print(
                    f"  {'':<8} optwatch's own figure (optwatch_s in its step records): {own * 1e6:.0f} us/step, "
                    f"{100 * own / median_time:.1f}% of the step"
                )
            if mode in spacings:
                results[name][mode]["detail_every"] = spacings[mode]
                print(f"  {'':<8} detail steps (--budget): every {', '.join(map(str, spacings[mode]))} steps by round")
    if device.type == "cuda":
        print("\nhost-device syncs caused by optwatch: 0 (every instrumented step ran under sync debug mode 'error')")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
