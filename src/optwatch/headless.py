"""`--headless`: the same stream as the dashboard, as text. The script's output passes through unchanged."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, TextIO

from optwatch.session import ViewerSession
from optwatch.store import Store, finite, last_known, share_of_step_time


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
        own_share = share_of_step_time(recent, "optwatch_s")
        ema = state.loss_ema[-1] if state.loss_ema else None
        parts = [
            f"step {last['step']}",
            f"loss {_fmt(last.get('loss'), '.4g')} (ema {_fmt(ema, '.4g')})",
            f"{_fmt(median_time, '.3f')} s/step",
        ]
        if rates:
            parts.append(f"{sum(rates) / len(rates):.0f} samples/s")
        parts += [f"grad {_fmt(last_known(state.steps, 'grad_norm'), '.3g')}", f"lr {_fmt(last.get('lr'), '.3g')}"]
        if own_share is not None:
            spacing = last.get("detail_every") or 1
            parts.append(f"optwatch {100 * own_share:.1f}%" + (f" (checks 1/{spacing})" if spacing > 1 else ""))
        if len(store.ranks) > 1:
            parts.append(f"{len(store.ranks)} ranks")
        return "optwatch: " + " | ".join(parts)


def notable_line(record: dict) -> str | None:
    """A line for stderr about a record a person should see as it happens (events, alerts, hot spots).
    Verdicts are printed when they change, by ``changed_verdicts``."""
    kind = record.get("kind")
    rank = record.get("rank", 0)
    on_rank = f" [rank {rank}]" if isinstance(rank, int) and rank > 0 else ""
    if kind == "event" and rank == 0:
        reason = f" ({record['reason']})" if record.get("reason") else ""
        if record.get("status") == "accepted":
            step = record.get("effective_step")
            return f"optwatch: {record.get('command')} accepted, in effect from step {step}{reason}"
        return f"optwatch: {record.get('command')} rejected: {record.get('reason')}"
    if kind == "alert":
        return f"optwatch: ALERT {record.get('type')} @ step {record.get('step')}{on_rank}: {record.get('message')}"
    if kind == "hotspots":
        return hotspots_line(record)
    return None


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


def _write_output(output) -> None:
    for stream, data in output.chunks:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.buffer.write(data)
        target.flush()


def _say_if_recording_stopped(session: ViewerSession, stderr: TextIO) -> None:
    reason = session.recording_stopped()
    if reason:
        print(f"optwatch: {reason}", file=stderr, flush=True)


def run_headless(
    session: ViewerSession,
    summary_every_s: float = 5.0,
    stderr: TextIO | None = None,
    duration_s: float | None = None,
) -> int:
    """Follow the run until it exits (or for ``duration_s``); returns the script's exit code (0 when attached)."""
    stderr = stderr or sys.stderr
    process = session.process
    interrupts = 0

    def forward(signum, frame):
        nonlocal interrupts
        interrupts += 1
        if process is None:
            raise KeyboardInterrupt  # an attached viewer just leaves; the job goes on
        # First Ctrl-C asks the script to stop cleanly; a second one insists.
        process.send(signal.SIGINT if interrupts == 1 and signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    next_summary = started + summary_every_s
    shown_verdicts: dict[int, str] = {}
    try:
        while True:
            records, output = session.pump(0.1)
            _write_output(output)
            _say_if_recording_stopped(session, stderr)
            for record in records:
                line = notable_line(record)
                if line:
                    print(line, file=stderr, flush=True)
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
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            if process is None and duration_s is None and session.store.finished():
                break
    except KeyboardInterrupt:
        pass  # an attached viewer was asked to leave
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # The script may have written its last lines after its last telemetry.
    _, output = session.pump(0.0)
    _write_output(output)
    session.flush_partial_lines()  # now rather than at close, so that a failure to record them is told too
    _say_if_recording_stopped(session, stderr)
    line = summary_line(session.store)
    if line:
        print(line.replace("optwatch:", "optwatch: final", 1), file=stderr, flush=True)
    for verdict in changed_verdicts(session.store, shown_verdicts, final=True):
        print("\n".join(verdict_lines(verdict)), file=stderr, flush=True)
    return process.exit_code() if process is not None else 0
