"""`--headless`: the same stream as the dashboard, as text. The script's output passes through unchanged."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, TextIO

from optwatch import protocol
from optwatch.session import ViewerSession
from optwatch.store import Store, finite


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if finite(value) else "-"


def summary_line(store: Store) -> str | None:
    """One line about the run for stderr, e.g. ``optwatch: step 120 loss 1.234 (avg 1.30) ...``."""
    with store.lock:
        state = store.primary
        if state is None or state.last_step is None:
            return None
        last = state.last_step
        recent = list(state.steps)[-20:]
        times = sorted(r["step_time_s"] for r in recent if finite(r.get("step_time_s")))
        median_time = times[len(times) // 2] if times else None
        rates = [r["samples_per_s"] for r in recent if finite(r.get("samples_per_s"))]
        ema = state.loss_ema[-1] if state.loss_ema else None
        parts = [
            f"step {last['step']}",
            f"loss {_fmt(last.get('loss'), '.4g')} (ema {_fmt(ema, '.4g')})",
            f"{_fmt(median_time, '.3f')} s/step",
        ]
        if rates:
            parts.append(f"{sum(rates) / len(rates):.0f} samples/s")
        parts += [f"grad {_fmt(last.get('grad_norm'), '.3g')}", f"lr {_fmt(last.get('lr'), '.3g')}"]
        if len(store.ranks) > 1:
            parts.append(f"{len(store.ranks)} ranks")
        return "optwatch: " + " | ".join(parts)


def hotspots_line(record: dict[str, Any]) -> str | None:
    """What a ``hotspots`` record says, in one line for stderr."""
    steps = record.get("steps") or []
    where = f"steps {steps[0]}-{steps[1]}" if len(steps) == 2 else "a window"
    where += f" rank {record['rank']}" if record.get("rank", 0) > 0 else ""
    status = record.get("status")
    if status == "profiling":
        return f"optwatch: profiling {where}…"
    if status == "failed":
        return f"optwatch: profiling {where} failed: {record.get('error', 'unknown error')}"
    if status == "done":
        trace = record.get("trace")
        return f"optwatch: hot spots, {where}: {record.get('digest', '')}" + (f" (trace {trace})" if trace else "")
    return None


def run_headless(session: ViewerSession, summary_every_s: float = 5.0, stderr: TextIO | None = None) -> int:
    """Follow the run until it exits; returns the script's exit code."""
    stderr = stderr or sys.stderr
    process = session.process
    interrupts = 0

    def forward(signum, frame):
        nonlocal interrupts
        interrupts += 1
        if process is not None:
            # First Ctrl-C asks the script to stop cleanly; a second one insists.
            process.send(signal.SIGINT if interrupts == 1 and signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    next_summary = time.monotonic() + summary_every_s
    try:
        while True:
            records, output = session.pump(0.1)
            for stream, data in output.chunks:
                target = sys.stdout if stream == "stdout" else sys.stderr
                target.buffer.write(data)
                target.flush()
            for record in records:
                line = hotspots_line(record) if record.get("kind") == protocol.HOTSPOTS else None
                if line:
                    print(line, file=stderr, flush=True)
            if time.monotonic() >= next_summary:
                next_summary = time.monotonic() + summary_every_s
                line = summary_line(session.store)
                if line:
                    print(line, file=stderr, flush=True)
            if session.done():
                break
        # The script may have written its last lines after its last telemetry.
        _, output = session.pump(0.0)
        for stream, data in output.chunks:
            (sys.stdout if stream == "stdout" else sys.stderr).buffer.write(data)
        sys.stdout.flush()
        line = summary_line(session.store)
        if line:
            print(line.replace("optwatch:", "optwatch: final", 1), file=stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return process.exit_code() if process is not None else 0
