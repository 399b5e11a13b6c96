"""`--headless`: the same stream as the dashboard, as text. The script's output passes through unchanged."""

from __future__ import annotations

import signal
import sys
import time
from typing import TextIO

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


def verdict_lines(verdict: dict) -> list[str]:
    """The verdict and its suggestions, e.g. ``optwatch: input-bound (steps 2-40): 62% of ...``."""
    window = verdict.get("window") or ["?", "?"]
    who = f"optwatch: rank {verdict['rank']}" if verdict.get("rank") else "optwatch:"
    final = "final " if verdict.get("final") else ""
    head = (
        f"{who} {final}verdict {verdict.get('bottleneck', '?')}-bound (steps {window[0]}-{window[-1]}): "
        f"{verdict.get('message', '')}"
    )
    return [head, *(f"optwatch:   try: {tip}" for tip in verdict.get("suggestions", []))]


def changed_verdicts(store: Store, shown: dict[int, str], final: bool = False) -> list[dict]:
    """Each rank's latest verdict if its bottleneck differs from the one in ``shown`` (updated),
    or with ``final``, each rank's final verdict."""
    fresh = []
    with store.lock:
        for rank, state in sorted(store.ranks.items()):
            verdict = state.latest.get("verdict")
            if verdict is None or bool(verdict.get("final")) != final:
                continue
            if final or shown.get(rank) != verdict.get("bottleneck"):
                shown[rank] = verdict.get("bottleneck")
                fresh.append(verdict)
    return fresh


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
    shown_verdicts: dict[int, str] = {}
    try:
        while True:
            _, output = session.pump(0.1)
            for stream, data in output.chunks:
                target = sys.stdout if stream == "stdout" else sys.stderr
                target.buffer.write(data)
                target.flush()
            # A verdict is printed when it changes; the final one always is, after the script's output.
            for verdict in changed_verdicts(session.store, shown_verdicts):
                print("\n".join(verdict_lines(verdict)), file=stderr, flush=True)
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
        for verdict in changed_verdicts(session.store, shown_verdicts, final=True):
            print("\n".join(verdict_lines(verdict)), file=stderr, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return process.exit_code() if process is not None else 0
