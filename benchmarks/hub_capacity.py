"""What one hub, and one viewer's store, hold per rank with their histories full, and what the hub's
per-record and once-a-second work costs: the figures docs/scale.md extrapolates from.

For each number of ranks, in a process of its own (so its memory figure is clean):

- hub: every rank says hello, then sends step records (a real rank's fields) and layers records of a
  100-layer model (the probe's wire form) through the hub's own path (decode, diagnosis, history,
  encode for viewers), timed, for the first steps; then the step rings are filled to the hub's bound
  (4000 per rank). Reported: RSS per rank, CPU per rank-step of the path (with its layers record, and for a
  step record alone, as between detail steps), the once-a-second straggler check, and one history
  snapshot (what a viewer that attaches downloads).
- viewer: the dashboard's store fed the same records (as the feed hands them over) to its bound (5000
  steps per rank). Reported: RSS per rank.

    python benchmarks/hub_capacity.py --ranks 8,64,256
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import psutil

from optwatch import protocol

LAYERS = 100
TIMED_STEPS = 250
"""Steps per rank taken through the hub's whole path (and timed); the rest of the ring is filled directly."""


def rss_mib() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def step_record(rank: int, step: int) -> dict:
    """The fields of a real rank's step record (tests/data/snapshot_run.jsonl, examples/ddp.py)."""
    return protocol.make_record(
        protocol.STEP, rank, step=step, loss=2.0 + 0.001 * rank, grad_norm=8.2, lr=0.01, step_time_s=0.186,
        data_wait_s=0.071, samples=32, samples_per_s=172.1, to_backward_s=0.113 + 0.001 * rank, optwatch_s=0.0716,
        optwatch_bg_s=0.0004, detailed=True, detail_every=1, amp=False, cudnn_benchmark=False, forward_s=0.0413,
        backward_s=0.0014, optimizer_s=0.0002, other_s=0.0716,
    )  # fmt: skip


NAMES = [f"blocks.{i}.mlp.weight" for i in range(LAYERS)]


def layers_record(rank: int, step: int) -> dict:
    chunk = [(step * 10 + i) % LAYERS for i in range(10)]
    return protocol.make_record(
        protocol.LAYERS, rank, step=step, names=NAMES, numel=[4096] * LAYERS,
        grad_norm=[0.5 + 0.001 * i for i in range(LAYERS)], _chunk=chunk, _weight=[1.0] * 10,
        _update=[1e-3] * 10, _nonzero=[4096.0] * 10, every=1,
    )  # fmt: skip


def hello(rank: int, ranks: int) -> dict:
    return protocol.make_record(
        protocol.HELLO, rank, run_id="capacity", script="capacity", argv=[], pid=os.getpid(), host="node",
        world_size=ranks, diagnosis={},
    )  # fmt: skip


def hub_side(ranks: int) -> dict:
    from optwatch.hub.diagnosis import JobDiagnosis
    from optwatch.hub.history import STEP_HISTORY, History

    history, diagnosis = History(), JobDiagnosis()
    before = rss_mib()
    seq = [0] * ranks

    def through_the_hub(records: list[dict]) -> None:
        """As ``Hub._from_rank`` and ``Hub.take`` do with a rank's batch, sockets aside."""
        received, _ = protocol.decode_records(protocol.encode_batch(records))
        for record in diagnosis.observe(received):
            history.add(record)
        protocol.encode_batch(received)  # published to the viewers

    for rank in range(ranks):
        through_the_hub([{**hello(rank, ranks), "seq": 0}])
    cpu = time.process_time()
    for step in range(TIMED_STEPS):
        for rank in range(ranks):
            records = [step_record(rank, step), layers_record(rank, step)]
            for record in records:
                seq[rank] += 1
                record["seq"] = seq[rank]
            through_the_hub(records)
    cpu_per_rank_step = (time.process_time() - cpu) / (TIMED_STEPS * ranks)
    cpu = time.process_time()  # the steps between detail steps: a step record alone
    for step in range(TIMED_STEPS, 2 * TIMED_STEPS):
        for rank in range(ranks):
            seq[rank] += 1
            through_the_hub([{**step_record(rank, step), "seq": seq[rank]}])
    cpu_per_bare_step = (time.process_time() - cpu) / (TIMED_STEPS * ranks)
    template = [dict(ring[-1]) for ring in history.steps_by_rank.values()]
    for step in range(2 * TIMED_STEPS, STEP_HISTORY):
        for record in template:
            history.add({**record, "step": step})
    full = rss_mib()
    ticks = []
    for _ in range(3):
        started = time.perf_counter()
        diagnosis.tick(history.steps(last=diagnosis.TICK_STEPS))  # as the hub's tick reads them
        ticks.append(time.perf_counter() - started)
    started = time.perf_counter()
    pages = history.pages()
    snapshot_s = time.perf_counter() - started
    return {
        "hub_mib_per_rank": (full - before) / ranks,
        "hub_mib_total": full,
        "hub_cpu_us_per_rank_step": 1e6 * cpu_per_rank_step,
        "hub_cpu_us_per_step_record": 1e6 * cpu_per_bare_step,
        "straggler_check_s": statistics.median(ticks),
        "history_snapshot_s": snapshot_s,
        "history_snapshot_mib": sum(len(page) for page in pages) / 2**20,
    }


def viewer_side(ranks: int) -> dict:
    from optwatch.store import STEP_CAPACITY, Store

    store = Store()
    before = rss_mib()
    store.ingest([hello(rank, ranks) for rank in range(ranks)])
    for step in range(STEP_CAPACITY):
        batch = [step_record(rank, step) for rank in range(ranks)]
        if step % 50 == 0:  # the newest layers record per rank is what the store keeps of them
            batch += protocol.decode_records(protocol.encode_batch([layers_record(r, step) for r in range(ranks)]))[0]
        store.ingest(batch)
    full = rss_mib()
    return {"viewer_mib_per_rank": (full - before) / ranks, "viewer_mib_total": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="8,64,256", help="comma-separated numbers of ranks")
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "RANKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        side, ranks = args.one
        print(json.dumps((hub_side if side == "hub" else viewer_side)(int(ranks))))
        return
    print(f"hub and viewer at capacity, {LAYERS} layers, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")
    for ranks in (int(n) for n in args.ranks.split(",")):
        figures = {}
        for side in ("hub", "viewer"):
            result = subprocess.run(
                [sys.executable, __file__, "--one", side, str(ranks)], capture_output=True, text=True, check=True
            )
            figures.update(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"{ranks} ranks:")
        for name, value in figures.items():
            print(f"  {name:<28} {value:.3f}")


if __name__ == "__main__":
    main()
