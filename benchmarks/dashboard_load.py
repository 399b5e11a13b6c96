"""The dashboard under load: a job of N ranks (8 by default) at 100 steps/s each, with per-layer stats of a
100-layer model.

Generator processes play the job: one channel per rank (the training side's real sender) to a real hub
process, several channels per process when there are more ranks than cores; this process runs the real
dashboard, headless, attached to it, and reports: the dashboard's and the hub's CPU use and memory,
publish-to-screen latency p50/p99 (from the moment a step record is made in the job to the first redraw
of the figures that includes it), dropped messages, and what a simulated rank's publishing costs per step.
Then it checks that memory stays flat over 1,000,000 steps, for the viewer's store and for the training
side with nobody attached.

    python benchmarks/dashboard_load.py                         # 60 s of load + the 1M-step checks
    python benchmarks/dashboard_load.py --seconds 20 --skip-million
    python benchmarks/dashboard_load.py --ranks 256 --processes 4 --rate 10 --skip-million --tab r
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


def generate(run_dir: Path, first_rank: int, world_size: int, report: Path, args: argparse.Namespace) -> None:
    """Ranks ``first_rank`` .. ``first_rank + ranks - 1`` of the job at ``rate`` steps/s each, each rank's
    records through a channel of its own (the training side's real sender) to the job's hub, as the ranks of
    a job send them. Several of these processes play a large job between them."""
    from optwatch.probe.channel import Channel, ReadyRecords

    ranks, rate, layers, seconds = args.ranks, args.rate, args.layers, args.seconds + 6
    channels = {rank: Channel(run_dir, rank=rank) for rank in range(first_rank, first_rank + ranks)}
    for rank, channel in channels.items():
        channel.start()
        # As a rank says hello: the hub then runs its gradient diagnosis and verdicts on its records.
        hello = protocol.make_record(
            protocol.HELLO, rank, run_id=run_dir.name, script="load", argv=[], pid=os.getpid(), host="load",
            world_size=world_size, diagnosis={},
        )  # fmt: skip
        channel.submit(ReadyRecords([hello]))
    names = [f"blocks.{i}.mlp.weight" for i in range(layers)]
    numel = [4096] * layers
    chunk_size = max(1, layers // 10)  # the weight and update norms of a rotating tenth of the layers per step
    made = 0
    started = time.time()
    cpu_started = time.process_time()
    step = 0
    random.seed(first_rank)
    while time.time() - started < seconds:
        chunk = [(step * chunk_size + i) % layers for i in range(chunk_size)]
        for rank, channel in channels.items():
            loss = 2.0 * math.exp(-step / 3000) + 0.05 * random.random()
            # The records as a rank's probe hands them to its channel (the layers record in its wire form:
            # every layer's gradient norm, the chunk's weight and update norms, which the hub completes).
            records = [
                protocol.make_record(
                    protocol.STEP, rank, step=step, loss=loss, grad_norm=1.0 + random.random(), lr=0.001,
                    step_time_s=1 / rate, data_wait_s=0.001, to_backward_s=0.004 + 0.001 * (rank % 8),
                    samples=64, samples_per_s=64 * rate, amp=False, cudnn_benchmark=False,
                ),
            ]  # fmt: skip
            if step % args.layers_every == 0:
                records.append(protocol.make_record(
                    protocol.LAYERS, rank, step=step, names=names, numel=numel,
                    grad_norm=[random.random() for _ in names], _chunk=chunk, _weight=[1.0] * chunk_size,
                    _update=[1e-3] * chunk_size, _nonzero=[4096.0] * chunk_size, every=args.layers_every,
                ))  # fmt: skip
            channel.submit(ReadyRecords(records))
            made += len(records)
        step += 1
        time.sleep(max(0.0, started + step / rate - time.time()))
    for channel in channels.values():
        channel.close()
    report.write_text(json.dumps({
        "steps": step, "records": made, "job_dropped": sum(c.dropped for c in channels.values()),
        "cpu_s": time.process_time() - cpu_started, "rank_steps": step * ranks,
    }))  # fmt: skip


class ProcessLoad:
    """CPU (share of one core) and RSS of another process, between ``start()`` and ``stop()``."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)

    def start(self) -> None:
        times = self.process.cpu_times()
        self.cpu_before, self.wall_before = times.user + times.system, time.monotonic()

    def stop(self) -> dict[str, float]:
        times = self.process.cpu_times()
        return {
            "cpu_percent_of_one_core": 100
            * (times.user + times.system - self.cpu_before)
            / (time.monotonic() - self.wall_before),
            "rss_mib": self.process.memory_info().rss / 2**20,
        }


async def watch(run_id: str, seconds: float, hub_pid: int, tab: str) -> dict:
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
    late: list[float] = []
    """The latencies of the window's last quarter: a pipeline that keeps up has them as low as the rest."""
    late_from = math.inf
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
                    if now >= late_from:
                        late.append(now - record["time"])
                if state.steps:
                    shown[rank] = state.steps[-1]["step"]

    app.render_views = measured_render
    process = psutil.Process()
    hub_load = ProcessLoad(hub_pid)
    async with app.run_test(size=(120, 40)) as pilot:
        if tab:
            await pilot.press(tab)
        await asyncio.sleep(3)  # connect and take the history in; measure the steady state
        latencies.clear()
        cpu_before = process.cpu_times()
        wall_before = time.monotonic()
        hub_load.start()
        hub_before = app.store.hub_figures[-1] if app.store.hub_figures else None
        rss_start = process.memory_info().rss
        late_from = time.time() + 0.75 * seconds
        await asyncio.sleep(seconds)
        hub_after = app.store.hub_figures[-1] if app.store.hub_figures else None
        cpu_after = process.cpu_times()
        wall = time.monotonic() - wall_before
        hub = hub_load.stop()
        rss_end = process.memory_info().rss
        with app.store.lock:
            steps_seen = sum(len(state.steps) for state in app.store.ranks.values())
            distinct = {rank: {r["step"] for r in state.steps} for rank, state in app.store.ranks.items()}
            # Steps a rank made before its newest one on screen that never reached the viewer, and steps it
            # holds twice.
            missing = sum(max(steps) + 1 - len(steps) for steps in distinct.values() if steps)
            repeated = sum(len(app.store.ranks[rank].steps) - len(steps) for rank, steps in distinct.items())
            ranks_seen = len(app.store.ranks)
        records_seen = app.store.records_seen
    session.close()
    cpu = (cpu_after.user - cpu_before.user + cpu_after.system - cpu_before.system) / wall
    latencies.sort()
    published = None
    if hub_before and hub_after and hub_after["time"] > hub_before["time"]:
        published = (hub_after["published"] - hub_before["published"]) / (hub_after["time"] - hub_before["time"])
    return {
        "dashboard_cpu_percent_of_one_core": 100 * cpu,
        "latency_p50_s": statistics.median(latencies),
        "latency_p99_s": latencies[int(0.99 * (len(latencies) - 1))],
        "latency_samples": len(latencies),
        "latency_p50_last_quarter_s": statistics.median(late) if late else math.nan,
        "hub_published_records_per_s": published if published is not None else math.nan,
        "records_received": records_seen,
        "gaps_filled": session.feed.gaps_filled,
        "rss_start_mib": rss_start / 2**20,
        "rss_end_mib": rss_end / 2**20,
        "steps_in_store": steps_seen,
        "ranks_in_store": ranks_seen,
        "steps_missing_at_viewer": missing,
        "steps_repeated_at_viewer": repeated,
        "hub_cpu_percent_of_one_core": hub["cpu_percent_of_one_core"],
        "hub_rss_mib": hub["rss_mib"],
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
    parser.add_argument(
        "--layers-every", type=int, default=1, help="per-layer records on every Nth step (the probe's detail steps)"
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--processes", type=int, default=1, help="processes that play the ranks (ranks / processes channels each)"
    )
    parser.add_argument("--tab", default="", help="a key to press first (r: the Ranks tab); default: the Overview")
    parser.add_argument("--skip-million", action="store_true", help="skip the 1,000,000-step memory checks")
    parser.add_argument(
        "--generate", nargs=4, metavar=("RUN_DIR", "FIRST_RANK", "WORLD_SIZE", "REPORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.generate:
        run_dir, first_rank, world_size, report = args.generate
        generate(Path(run_dir), int(first_rank), int(world_size), Path(report), args)
        return

    from optwatch import hub

    os.environ.setdefault("OPTWATCH_RUNTIME_DIR", tempfile.mkdtemp(prefix="owl-"))
    reports = Path(tempfile.mkdtemp(prefix="owl-report-"))
    run_id = f"load-{os.getpid()}"
    run_dir = runtime.make_run_dir(run_id)
    hub_process = hub.spawn(run_dir, run_id, world_size=args.ranks, job_pid=os.getpid(), script="load")
    processes = max(1, min(args.processes, args.ranks))
    generators = []
    for index in range(processes):
        first = index * args.ranks // processes
        count = (index + 1) * args.ranks // processes - first
        generators.append(subprocess.Popen(
            [sys.executable, __file__, "--generate", str(run_dir), str(first), str(args.ranks),
             str(reports / f"{index}.json"),
             "--ranks", str(count), "--rate", str(args.rate), "--layers", str(args.layers),
             "--layers-every", str(args.layers_every), "--seconds", str(args.seconds)],
        ))  # fmt: skip
    print(f"dashboard under load: {args.ranks} ranks from {processes} process(es) x {args.rate:g} steps/s, "
          f"{args.layers} layers every {args.layers_every} step(s), {args.seconds:.0f} s, tab {args.tab or 'o'}, "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")  # fmt: skip
    figures = asyncio.run(watch(run_id, args.seconds, hub_process.pid, args.tab))
    for generator in generators:
        generator.wait()
    hub_process.terminate()
    jobs = [json.loads((reports / f"{index}.json").read_text()) for index in range(processes)]
    figures["job_records_made"] = sum(job["records"] for job in jobs)
    figures["job_dropped"] = sum(job["job_dropped"] for job in jobs)
    # What a simulated rank's publishing costs its process per step: making its step and layers records,
    # numbering, encoding and sending them (the channel thread), its share of the ZeroMQ I/O threads.
    figures["publish_cpu_us_per_rank_step"] = 1e6 * sum(j["cpu_s"] for j in jobs) / sum(j["rank_steps"] for j in jobs)
    for name, value in figures.items():
        print(f"  {name:<36} {value:.3f}" if isinstance(value, float) else f"  {name:<36} {value}")
    if not args.skip_million:
        print("viewer store, 8 ranks x 1,000,000 steps, RSS MiB at step:", store_memory_over_a_million_steps())
        print(
            "training side, 1,000,000 steps, nobody attached, RSS MiB at step:", training_memory_over_a_million_steps()
        )


if __name__ == "__main__":
    main()
