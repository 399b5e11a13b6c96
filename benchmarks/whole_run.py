"""Memory of the whole-run history and size of the record, as a run grows to 10^5, 10^6, 10^7 steps.

Plays a 100-layer model's records (a step record per step as the probe writes it, a per-layer record every
``--layers-every`` steps, a system record every 50) through the real pieces: the job's hub history
(``hub.history.History``), a viewer's store (``store.Store``) and the hub's recorder (``hub.recorder``,
gzip as written by default). Reports, at each size: the history's and the store's memory (tracemalloc: what
they hold, not the process's RSS), the record's size on disk and its bytes per step, and the time per step
each piece took (for the hub and the viewer, the cost of keeping a step).

    python benchmarks/whole_run.py                       # 10^5 and 10^6 steps (a few minutes)
    python benchmarks/whole_run.py --steps 1e5,1e6,1e7   # 10^7 takes about ten times as long as 10^6
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

from optwatch import protocol
from optwatch.hub.history import History
from optwatch.hub.recorder import RunRecorder
from optwatch.store import Store

LAYERS = 100


def step_record(step: int) -> dict:
    return {
        "v": 1, "kind": "step", "rank": 0, "time": 1.8e9 + step * 0.05, "seq": step, "origin": 0, "step": step,
        "loss": 3.0 * math.exp(-step / 2e5) + 0.5 + 0.01 * math.sin(step), "grad_norm": 1.0 + 0.1 * math.cos(step),
        "lr": 3e-4, "step_time_s": 0.05, "data_wait_s": 0.001, "to_backward_s": 0.02, "forward_s": None,
        "backward_s": None, "optimizer_s": None, "other_s": None, "optwatch_s": 0.0002, "optwatch_bg_s": 0.0001,
        "samples": 64, "samples_per_s": 1280.0, "amp": False, "cudnn_benchmark": False, "detail_every": 8,
    }  # fmt: skip


def layers_record(step: int, names: list[str]) -> dict:
    values = [1.0 + i * 1e-3 for i in range(LAYERS)]
    return {
        "v": 1, "kind": "layers", "rank": 0, "time": 1.8e9, "step": step, "names": names, "numel": [4096] * LAYERS,
        "grad_norm": values, "weight_norm": values, "zero_frac": [0.0] * LAYERS, "update_norm": values,
        "update_ratio": [1e-3] * LAYERS, "updated_at": [step] * LAYERS, "alerting": {},
    }  # fmt: skip


def system_record(step: int) -> dict:
    return {"v": 1, "kind": "system", "rank": 0, "time": 1.8e9, "step": step, "cpu_percent": 95.0, "rss_bytes": 2e9}


def feed(piece: str, steps: int, layers_every: int, workdir: Path):
    """Play ``steps`` steps into one piece; return it."""
    names = [f"blocks.{i}.weight" for i in range(LAYERS)]
    if piece == "hub history":
        target = History()
        add = target.add
    elif piece == "viewer store":
        target = Store()

        def add(record: dict) -> None:
            target.ingest([record])
    else:
        target = RunRecorder(workdir / f"run-{steps}-{time.monotonic_ns()}", {"run_id": "bench"})

        def add(record: dict) -> None:
            target.add([record])

    for step in range(steps):
        add(step_record(step))
        if step % layers_every == 0:
            add(layers_record(step, names))
        if step % 50 == 0:
            add(system_record(step))
        if piece == "record" and step % 20_000 == 0:
            target.flush()  # the hub flushes once a second: here every 20,000 steps
    return target


def measure(steps: int, layers_every: int, workdir: Path, timing_steps: int) -> dict:
    results = {}
    for piece in ("hub history", "viewer store", "record"):
        # The time a step costs, on a run short enough to time without tracing.
        started = time.perf_counter()
        feed(piece, min(steps, timing_steps), layers_every, workdir)
        us_per_step = (time.perf_counter() - started) / min(steps, timing_steps) * 1e6
        if piece == "record":
            recorder = feed(piece, steps, layers_every, workdir)
            recorder.close("finished", 0)
            size = recorder.path.stat().st_size
            results[piece] = {"bytes": size, "per_step": size / steps, "us_per_step": us_per_step}
            continue
        gc.collect()
        tracemalloc.start()
        target = feed(piece, steps, layers_every, workdir)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        results[piece] = {"bytes": held, "us_per_step": us_per_step}
        if piece == "hub history":
            whole = target.whole[0].to_record()
            line = protocol.record_to_json_line(protocol.make_record(protocol.HISTORY, 0, **whole))
            results[piece]["history_record_bytes"] = len(line)
        del target
    return results


def mib(count: float) -> str:
    return f"{count / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1e5,1e6", help="comma-separated run lengths")
    parser.add_argument("--layers-every", type=int, default=8, help="a per-layer record every N steps")
    parser.add_argument("--timing-steps", type=int, default=50_000)
    args = parser.parse_args()
    sizes = [int(float(text)) for text in args.steps.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"whole-run history and record, {time.strftime('%Y-%m-%d')}, commit {commit}, {platform.node()}, "
          f"python {platform.python_version()}; a per-layer record ({LAYERS} layers) every {args.layers_every} steps")  # fmt: skip  # noqa: E501
    print()
    print("| steps | hub history | viewer store | history record | record on disk | bytes/step | hub µs/step | viewer µs/step | record µs/step |")  # fmt: skip  # noqa: E501
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="ow-whole-") as tmp:
        for steps in sizes:
            r = measure(steps, args.layers_every, Path(tmp), args.timing_steps)
            print(
                f"| {steps:.0e} | {mib(r['hub history']['bytes'])} | {mib(r['viewer store']['bytes'])} | "
                f"{r['hub history']['history_record_bytes'] / 1024:.0f} KiB | {mib(r['record']['bytes'])} | "
                f"{r['record']['per_step']:.1f} | {r['hub history']['us_per_step']:.1f} | "
                f"{r['viewer store']['us_per_step']:.1f} | {r['record']['us_per_step']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
