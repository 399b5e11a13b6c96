"""`--headless`: the same stream as the dashboard, as text. The script's output passes through unchanged."""

from __future__ import annotations

import contextlib
import io
import math
import os
import signal
import sys
import time
from typing import Any, TextIO

from optwatch import protocol
from optwatch.diagnose.bottleneck import bound_text
from optwatch.protocol import finite
from optwatch.session import ViewerSession, job_gone
from optwatch.store import Store
from optwatch.summary import (
    RunSummary,
    alert_text,
    cost_text,
    duration_text,
    non_finite_text,
    shown_metrics,
    waiting_text,
)


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if finite(value) else non_finite_text(value, "-")


def _per_step(seconds: float | None) -> str:
    """``0.412 ms/step``, ``210 ms/step``, ``1.35 s/step``."""
    return f"{duration_text(seconds)}/step" if finite(seconds) else "- s/step"


def summary_line(store: Store, final: bool = False) -> str | None:
    """One line about the run for stderr, e.g. ``optwatch: step 120 | loss 1.234 (ema 1.30) | ...``; the
    ``final`` one also gives the whole run's throughput, beside the median step's."""
    summary = store.summary()
    if summary is None:
        return None
    recent = summary.recent
    loss = summary.loss
    if isinstance(loss, float) and not math.isfinite(loss):
        shown = f"loss {_fmt(loss, '.4g')} (ema of the finite ones {_fmt(summary.loss_ema, '.4g')})"  # a NaN says so
    else:
        shown = f"loss {_fmt(loss, '.4g')} (ema {_fmt(summary.loss_ema, '.4g')})"
    # The final line counts the steps too: a script's "trained 390 steps" ends at step 389.
    parts = [f"step {summary.step} ({summary.steps_in + 1} steps)" if final else f"step {summary.step}", shown]
    for name, loss in list(summary.losses.items())[:4]:
        parts.append(f"{name} {loss:.4g}")
    parts.append(_per_step(recent.step_time_s))
    if recent.samples_per_s is not None:
        throughput = f"{recent.samples_per_s:.0f} samples/s"
        if final and summary.run_samples_per_s is not None:
            throughput += f" ({summary.run_samples_per_s:.0f} over the whole run)"
        parts.append(throughput)
    grad = f"grad {_fmt(summary.grad_norm, '.3g')}{summary.grad_norm_when}"
    if summary.clipped_share is not None:  # (over the recent steps: a whole run's share is not this line's)
        share = 100 * summary.clipped_share
        grad += f" (clipped at {summary.clip_max_norm:g} in {share:.0f}% of {summary.clipped_over})"
    parts += [grad, f"lr {_fmt(summary.lr, '.3g')}"]
    with store.lock:
        metrics = shown_metrics(store.metrics)
    # What the script or its framework logged (an evaluation's loss), as the Overview shows it.
    parts += [f"{metric.name} {_fmt(metric.value, '.4g')} @{metric.step}" for metric in metrics]
    cost = cost_text(summary)
    if cost:
        parts.append(cost)
    if summary.cost.hub_cpu_share is not None:  # off the training process, but on its machine's cores
        parts.append(f"hub {100 * summary.cost.hub_cpu_share:.0f}% of a core")
    if summary.ranks > 1:
        parts.append(f"{summary.ranks} ranks (the figures are rank 0's)")
    return "optwatch: " + " | ".join(parts)


def notable_line(record: dict) -> str | None:
    """A line for stderr about a record a person should see as it happens (events, alerts, hot spots).
    Verdicts are printed when they change, by ``changed_verdicts``."""
    kind = record.get("kind")
    rank = record.get("rank", 0)
    if kind == "event" and rank == 0:
        reason = f" ({record['reason']})" if record.get("reason") else ""
        if record.get("status") == "accepted":
            step = record.get("effective_step")
            return f"optwatch: {record.get('command')} accepted, in effect from step {step}{reason}"
        return f"optwatch: {record.get('command')} rejected: {record.get('reason')}"
    if kind == "alert":
        return f"optwatch: ALERT {alert_text(record)}"
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


def verdict_lines(verdict: dict, tips: bool = True) -> list[str]:
    """The verdict and (with ``tips``) its suggestions, e.g. ``optwatch: input-bound (steps 2-40): 62% of ...``."""
    window = verdict.get("window") or ["?", "?"]
    who = f"optwatch: rank {verdict['rank']}" if verdict.get("rank") else "optwatch:"
    final = "final " if verdict.get("final") else ""
    head = f"{who} {final}verdict {bound_text(verdict)} (steps {window[0]}-{window[-1]}): {verdict.get('message', '')}"
    return [head, *(f"optwatch:   try: {tip}" for tip in verdict.get("suggestions", []) if tips)]


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


def replay_lines(store: Store) -> list[str]:
    """What ``--headless`` printed of a recorded run, from its records: each command's answer, alert and hot
    spot as it came, each rank's verdict where it changed, then the final summary and verdicts: as many of
    each kind as the store keeps (``RARE_CAPACITY``, the newest). (The script's output is in its log files.)"""
    kinds = (protocol.EVENT, protocol.ALERT, protocol.HOTSPOTS, protocol.VERDICT)
    with store.lock:
        records = sorted((r for kind in kinds for r in store.rare.get(kind, ())), key=lambda r: r.get("time", 0.0))
    lines: list[str] = []
    shown: dict[int, str] = {}
    finals = []
    for record in records:
        if record.get("kind") != protocol.VERDICT:
            line = notable_line(record)
            if line:
                lines.append(line)
        elif record.get("final"):
            finals.append(record)
        elif shown.get(record.get("rank", 0)) != record.get("bottleneck"):
            shown[record.get("rank", 0)] = record.get("bottleneck")
            lines += verdict_lines(record)
    summary = summary_line(store, final=True)
    lines.append(summary.replace("optwatch:", "optwatch: final", 1) if summary else "no steps in this record")
    for verdict in finals:
        lines += verdict_lines(verdict)
    return lines


class _OwnLines(io.TextIOBase):
    """optwatch's own lines on stderr, each on a line of its own: a progress bar the script left unfinished
    (tqdm redraws its line with carriage returns and no newline) is ended first, where it shares the terminal,
    rather than run into. The script's bytes are never changed."""

    def __init__(self, stderr: TextIO):
        self._stderr = stderr
        self._open: dict[str, bool] = {"stdout": False, "stderr": False}
        self._shared = _same_file(sys.stdout, stderr)
        """The script's stdout and optwatch's lines go to the same place (a terminal): its open line counts too."""

    def passed(self, stream: str, data: bytes) -> None:
        if data:
            self._open[stream] = not data.endswith(b"\n")

    def write(self, text: str) -> int:  # type: ignore[override]
        if text and (self._open["stderr"] or (self._shared and self._open["stdout"])):
            text = "\n" + text
            self._open = dict.fromkeys(self._open, False)
        return self._stderr.write(text)

    def flush(self) -> None:
        self._stderr.flush()


def _same_file(one: TextIO, other: TextIO) -> bool:
    try:
        return os.path.samestat(os.fstat(one.fileno()), os.fstat(other.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


def _write_output(output, own: _OwnLines) -> None:
    for stream, data in output.chunks:
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.buffer.write(data)
        target.flush()
        own.passed(stream, data)
    for notice in output.notices:
        print(f"optwatch: {notice}", file=own, flush=True)


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
        # Ctrl-C reaches the script as under python, the second too (a script's emergency checkpoint on it);
        # a third insists (SIGTERM), for a script that does not end on them.
        if interrupts <= 2 and signum == signal.SIGINT:
            interrupt = getattr(process, "interrupt", None)
            if interrupt is not None:
                interrupt()  # (the script's process group, as a terminal's Ctrl-C)
            else:
                process.send(signal.SIGINT)
        else:
            process.send(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # (`optwatch run`'s training: the ranks of a launch get their signals from the launcher)
        passing = getattr(process, "passing_signals", None)
        with passing() if passing is not None else contextlib.nullcontext():
            return _follow(session, summary_every_s, stderr, duration_s)
    except BrokenPipeError:
        return _output_closed(session)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _output_closed(session: ViewerSession) -> int:
    """Whoever read our output went away (``optwatch run --headless ... | head -3``): as with ``python
    script.py | head -3``, the run ends; it is stopped cleanly (Ctrl-C) rather than left running unseen.
    Attached, the viewer just leaves."""
    _silence(sys.stdout)  # a closed pipe must not fail once more at exit
    process = session.process
    if process is None:
        return 0
    process.stop()
    said = f"optwatch: the output pipe closed; stopped {process.run_id} (exit {process.exit_code()})\n"
    try:
        sys.stderr.write(said)
        sys.stderr.flush()
    except OSError:  # stderr was the closed pipe too: say it where a person looks
        _silence(sys.stderr)
        try:
            with open("/dev/tty", "w") as tty:
                tty.write(said)
        except OSError:
            pass
    return process.exit_code() or 1


def _say_hub_silence(store: Store, said: bool, stderr: TextIO) -> bool:
    """Say once when the job's hub stops answering, and once when it is back; whether it is silent now."""
    silent = store.hub_silence()
    if silent is not None and not said:
        print(
            "optwatch: the job's hub is gone; the training goes on (rank 0 starts a new hub within seconds)",
            file=stderr,
            flush=True,
        )
    elif silent is None and said:
        print("optwatch: the job's hub answers again", file=stderr, flush=True)
    return silent is not None


def _silence(stream: TextIO) -> None:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass


def _left_line(store: Store, attached_to: str | None = None) -> str:
    """``optwatch: stopped watching at step 866; the run goes on (optwatch attach RUN to watch it again)``;
    over TCP, the address attached to (the run's id is known only on the job's own machine)."""
    summary = store.summary()
    at = f" at step {summary.step}" if summary is not None else ""
    with store.lock:
        run_id = store.primary.hello.get("run_id") if store.primary is not None else None
    target = attached_to or run_id
    again = f" (optwatch attach {target} to watch it again)" if target else ""
    silent = store.hub_silence()
    if silent is not None:  # (a training killed without a word, or only its hub: this viewer cannot tell)
        return f"optwatch: stopped watching{at}; the job's hub has not answered for {silent:.0f} s{again}"
    return f"optwatch: stopped watching{at}; the run goes on{again}"


def _diverged(summary: RunSummary | None) -> bool:
    """The run's latest loss is NaN or infinite."""
    return summary is not None and isinstance(summary.loss, float) and not math.isfinite(summary.loss)


def _follow(session: ViewerSession, summary_every_s: float, stderr: TextIO, duration_s: float | None) -> int:
    process = session.process
    own = _OwnLines(stderr)  # (each line of optwatch's own goes through it)
    started = time.monotonic()
    next_summary = started + summary_every_s
    shown_verdicts: dict[int, str] = {}
    hub_said = False
    last_summary = None
    try:
        while True:
            records, output = session.pump(0.1)
            _write_output(output, own)
            _say_if_recording_stopped(session, own)
            for record in records:
                if record.get("kind") == "log" and not session.tails:
                    # Attached: the job's output comes as lines from its hub.
                    stream = sys.stderr if record.get("stream") == "stderr" else sys.stdout
                    print(record.get("line", ""), file=stream, flush=True)
                    continue
                line = notable_line(record)
                if line:
                    print(line, file=own, flush=True)
            # A verdict is printed when it changes; the final one always is, after the script's output.
            for verdict in changed_verdicts(session.store, shown_verdicts):
                # (no tips while the loss is NaN: a faster way to NaN is no advice, as at the end)
                print(
                    "\n".join(verdict_lines(verdict, tips=not _diverged(session.store.summary()))), file=own, flush=True
                )
            hub_said = _say_hub_silence(session.store, hub_said, own)
            if hub_said and process is None and job_gone(session.store):
                print(
                    "optwatch: the job's processes on this machine are gone, without an end record (killed?)",
                    file=own,
                    flush=True,
                )
                break
            # (Not once the script has ended, its end record said or its process gone: its traceback is then
            # followed by the final figures alone.)
            exited = (process is not None and process.poll() is not None) or session.store.finished()
            if time.monotonic() >= next_summary and not exited:
                next_summary = time.monotonic() + summary_every_s
                # No step for a while: where the training is (each rank's), in place of the last step's
                # figures again.
                waiting = session.store.waiting()
                if waiting is None:
                    line = summary_line(session.store)
                else:
                    line = f"optwatch: {waiting_text(waiting, session.store.waiting_ranks())}"
                if line:
                    print(line, file=own, flush=True)
                    last_summary = line
            if session.done():
                break
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            if process is None and duration_s is None and session.store.finished():
                break
    except KeyboardInterrupt:
        pass  # an attached viewer was asked to leave
    # The script may have written its last lines after its last telemetry.
    _, output = session.pump(0.0, final=True)
    _write_output(output, own)
    _say_if_recording_stopped(session, own)
    # An attached viewer that leaves (Ctrl-C, --duration) before the run ends: the run goes on, nothing is final.
    left = process is None and not session.store.finished()
    line = summary_line(session.store, final=not left)
    if line and not (left and line == last_summary):  # (leaving: the last summary again only if it changed)
        print(line if left else line.replace("optwatch:", "optwatch: final", 1), file=own, flush=True)
    if left:
        print(_left_line(session.store, session.attached_over_tcp), file=own, flush=True)
    ending = session.ending_line()
    code = session.exit_code()
    # A script that failed: its error is what to change first, so the final verdict comes without its tips,
    # and the last line says so (a traceback with five lines of speed-up tips under it read as the advice).
    failed = process is not None and ending is None and code not in (None, 0, protocol.INTERRUPTED)
    # So does a run whose loss ended non-finite: a faster way to NaN is no advice.
    summary = session.store.summary()
    for verdict in changed_verdicts(session.store, shown_verdicts, final=True):
        print("\n".join(verdict_lines(verdict, tips=not (failed or _diverged(summary)))), file=own, flush=True)
    if failed:
        # (after the last step that ended: it may have raised in the middle of the next one)
        at = f" after step {summary.step}" if summary is not None else " before its first step"
        ending = f"optwatch: the script exited with {code}{at} (see its output above)"
    if ending:
        print(ending, file=own, flush=True)
    if process is None:
        return 0
    return code or 0
