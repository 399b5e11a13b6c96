"""The dashboard under load: a job of 8 ranks at 100 steps/s each, with per-layer stats of a 100-layer model.

A generator process plays the job: one channel per rank (the training side's real sender) to a real hub
process; this process runs the real dashboard, headless, attached to it, and reports: the dashboard process's CPU use,
publish-to-screen latency p50/p99 (from the moment a step record is made in the job to the first redraw
of the figures that includes it), dropped messages, and memory. Then it checks that memory stays flat
over 1,000,000 steps, for the viewer's store and for the training side with nobody attached.

    python benchmarks/dashboard_load.py                         # 60 s of load + the 1M-step checks
    python benchmarks/dashboard_load.py --seconds 20 --skip-million
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from optwatch import protocol
from optwatch.wire import runtime


def generate(run_id: str, ranks: int, rate: float, layers: int, seconds: float, report: Path) -> None:
    """The job: ``ranks`` ranks at ``rate`` steps/s each, each rank's records through a channel of its own
    to a real hub process, as the ranks of a job send them."""
    from optwatch import hub
    from optwatch.probe.channel import Channel, ReadyRecords

    run_dir = runtime.make_run_dir(run_id)
    hub_process = hub.spawn(run_dir, run_id, world_size=ranks, job_pid=os.getpid(), script="load")
    channels = [Channel(run_dir, rank=rank) for rank in range(ranks)]
    for channel in channels:
        channel.start()
    names = [f"blocks.{i}.mlp.weight" for i in range(layers)]
    numel = [4096] * layers
    made = 0
    started = time.time()
    step = 0
    random.seed(0)
    while time.time() - started < seconds:
        for rank, channel in enumerate(channels):
            loss = 2.0 * math.exp(-step / 3000) + 0.05 * random.random()
            records = [
                protocol.make_record(
                    protocol.STEP, rank, step=step, loss=loss, grad_norm=1.0 + random.random(), lr=0.001,
                    step_time_s=1 / rate, data_wait_s=0.001, to_backward_s=0.004 + 0.001 * rank, samples=64,
                    samples_per_s=64 * rate, amp=False, cudnn_benchmark=False,
                ),
                protocol.make_record(
                    protocol.LAYERS, rank, step=step, names=names, numel=numel,
                    grad_norm=[random.random() for _ in names], weight_norm=[1.0] * layers,
                    update_norm=[1e-3] * layers, update_ratio=[1e-3] * layers, zero_frac=[0.0] * layers, every=1,
                ),
            ]  # fmt: skip
            channel.submit(ReadyRecords(records))
            made += len(records)
        step += 1
        time.sleep(max(0.0, started + step / rate - time.time()))
    for channel in channels:
        channel.close()
    hub_process.terminate()
    report.write_text(json.dumps({"steps": step, "records": made, "job_dropped": sum(c.dropped for c in channels)}))


async def watch(run_id: str, seconds: float) -> dict:
    from optwatch.app.app import OptwatchApp
    from optwatch.session import ViewerSession
    from optwatch.wire.subscriber import Feed

    deadline = time.monotonic() + 30
    while not any(job.run_id == run_id for job in runtime.list_jobs()):
        if time.monotonic() > deadline:
            raise RuntimeError("the load generator did not start")
        await asyncio.sleep(0.05)
    job = next(job for job in runtime.list_jobs() if job.run_id == run_id)
    session = ViewerSession(Feed(job.endpoints["pub"], job.endpoints["ctl"]))
    app = OptwatchApp(session, mode="attach")
    latencies: list[float] = []
    shown: dict[int, int] = {}
    render = app.render_views

    def measured_render(*args, **kwargs):
        render(*args, **kwargs)
        now = time.time()
        with app.store.lock:
            for rank, state in app.store.ranks.items():
                last = shown.get(rank, -1)
                for record in reversed(state.steps):
                    if record["step"] <= last:
                        break
                    latencies.append(now - record["time"])
                if state.steps:
                    shown[rank] = state.steps[-1]["step"]

    app.render_views = measured_render
    process = psutil.Process()
    async with app.run_test(size=(120, 40)):
        await asyncio.sleep(3)  # connect and take the history in; measure the steady state
        latencies.clear()
        cpu_before = process.cpu_times()
        wall_before = time.monotonic()
        rss_start = process.memory_info().rss
        await asyncio.sleep(seconds)
        cpu_after = process.cpu_times()
        wall = time.monotonic() - wall_before
        rss_end = process.memory_info().rss
        steps_seen = sum(len(state.steps) for state in app.store.ranks.values())
        records_seen = app.store.records_seen
    session.close()
    cpu = (cpu_after.user - cpu_before.user + cpu_after.system - cpu_before.system) / wall
    latencies.sort()
    return {
        "dashboard_cpu_percent_of_one_core": 100 * cpu,
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[int(0.99 * (len(latencies) - 1))],
        "latency_samples": len(latencies),
        "records_received": records_seen,
        "gaps_filled": session.feed.gaps_filled,
        "rss_start_mib": rss_start / 2**20,
        "rss_end_mib": rss_end / 2**20,
        "steps_in_store": steps_seen,
    }


def store_memory_over_a_million_steps(ranks: int = 8) -> list[tuple[int, float]]:
    """The viewer's store fed 1,000,000 steps per rank... in batches, as the feed would: RSS along the way."""
    from optwatch.store import Store

    store = Store()
    process = psutil.Process()
    marks = []
    batch_steps = 1000
    for start in range(0, 1_000_000, batch_steps):
        store.ingest([
            {"v": 1, "kind": "step", "rank": rank, "seq": step, "time": 0.0, "step": step, "loss": 1.0,
             "grad_norm": 1.0, "lr": 0.001, "step_time_s": 0.01}
            for step in range(start, start + batch_steps) for rank in range(ranks)
        ])  # fmt: skip
        if start + batch_steps in (100_000, 250_000, 500_000, 750_000, 1_000_000):
            marks.append((start + batch_steps, process.memory_info().rss / 2**20))
    return marks


def training_memory_over_a_million_steps() -> list[tuple[int, float]]:
    """A probe-instrumented loop of 1,000,000 tiny steps with nobody attached: RSS along the way.

    The defaults (a budget of 1%), with a hub process beside it that nobody reads.
    """
    code = r"""
import sys, psutil, torch
sys.path.insert(0, sys.argv[1])
from harness import instrument
model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
inputs = torch.ones(2, 4)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
probe = instrument(model, optimizer, {})
marks = []
for step in range(1, 1_000_001):
    optimizer.zero_grad()
    model(inputs).square().mean().backward()
    optimizer.step()
    if step in (100_000, 250_000, 500_000, 750_000, 1_000_000):
        marks.append((step, psutil.Process().memory_info().rss / 2**20))
probe.close()
print(marks)
"""
    here = str(Path(__file__).resolve().parent)
    result = subprocess.run([sys.executable, "-c", code, here], capture_output=True, text=True, check=True)
    return eval(result.stdout.strip().splitlines()[-1])  # our own child's repr of a list of tuples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0, help="steps per second per rank")
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip-million", action="store_true", help="skip the 1,000,000-step memory checks")
    parser.add_argument("--generate", nargs=2, metavar=("RUN_ID", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        run_id, report = args.generate
        generate(run_id, args.ranks, args.rate, args.layers, args.seconds + 6, Path(report))
        return

    os.environ.setdefault("OPTWATCH_RUNTIME_DIR", tempfile.mkdtemp(prefix="owl-"))
    report = Path(tempfile.mkdtemp(prefix="owl-report-")) / "generator.json"
    run_id = f"load-{os.getpid()}"
    generator = subprocess.Popen(
        [sys.executable, __file__, "--generate", run_id, str(report), "--ranks", str(args.ranks),
         "--rate", str(args.rate), "--layers", str(args.layers), "--seconds", str(args.seconds)],
    )  # fmt: skip
    print(f"dashboard under load: {args.ranks} ranks x {args.rate:.0f} steps/s, {args.layers} layers, "
          f"{args.seconds:.0f} s, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")  # fmt: skip
    figures = asyncio.run(watch(run_id, args.seconds))
    generator.wait()
    job = json.loads(report.read_text())
    figures["job_records_made"] = job["records"]
    figures["job_dropped"] = job["job_dropped"]
    for name, value in figures.items():
        print(f"  {name:<36} {value:.3f}" if isinstance(value, float) else f"  {name:<36} {value}")
    if not args.skip_million:
        print("viewer store, 8 ranks x 1,000,000 steps, RSS MiB at step:", store_memory_over_a_million_steps())
        print(
            "training side, 1,000,000 steps, nobody attached, RSS MiB at step:", training_memory_over_a_million_steps()
        )


if __name__ == "__main__":
    main()
