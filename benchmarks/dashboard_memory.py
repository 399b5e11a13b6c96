"""The running dashboard's memory over a long run whose script prints a line per step.

A real job: ``optwatch run`` of a tiny torch script (one trivial optimizer step and one printed line per
step), with the real Textual dashboard on a pseudo-terminal of a fixed size, left on its first tab as a
person would leave it. This process only drains the terminal, reads the job's progress from its stdout
file, and samples the dashboard process's RSS (psutil); at the end it presses q.

    python benchmarks/dashboard_memory.py                        # 1,000,000 steps (~20 min on 2 cores)
    python benchmarks/dashboard_memory.py --steps 100000 --warmup 20000
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

import psutil

JOB = """\
import sys
import torch

weight = torch.zeros(4, requires_grad=True)
optimizer = torch.optim.SGD([weight], lr=1e-3)
inputs = torch.ones(4)
for step in range(int(sys.argv[1])):
    optimizer.zero_grad()
    loss = (weight * inputs).sum().sub(torch.randn(())).square()
    loss.backward()
    optimizer.step()
    print(f"step {step} loss {loss.item():.6f}")
"""

LAST_STEP = re.compile(rb"step (\d+) loss [^\n]*\n$")


def open_terminal(columns: int, rows: int) -> tuple[int, int]:
    """A pseudo-terminal of ``columns`` x ``rows``: (the end this process reads, the end the dashboard gets)."""
    reader, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return reader, terminal


def drain(fd: int, drawn: list[int]) -> None:
    """Read and drop what the dashboard draws, so that it never blocks on a full terminal; count the bytes."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError:  # the dashboard has exited and closed its end
            return
        if not chunk:
            return
        drawn[0] += len(chunk)


def job_step(runtime_dir: Path) -> int | None:
    """The last step the job has printed, from the tail of its stdout file in the run directory."""
    for log in runtime_dir.glob("*/stdout.log"):
        with open(log, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 200))
            tail = handle.read()
        match = LAST_STEP.search(tail)
        if match:
            return int(match.group(1))
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=100_000, help="steps before the reference RSS is taken")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--size", default="100x30", help="terminal columns x rows")
    args = parser.parse_args()
    columns, rows = (int(n) for n in args.size.split("x"))

    work = Path(tempfile.mkdtemp(prefix="owm-"))
    script = work / "print_every_step.py"
    script.write_text(JOB)
    runtime_dir = work / "rt"
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env.update(OPTWATCH_RUNTIME_DIR=str(runtime_dir), TERM="xterm-256color")
    reader, terminal = open_terminal(columns, rows)
    started = time.monotonic()
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", str(script), str(args.steps)],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, cwd=work, start_new_session=True,
    )  # fmt: skip
    os.close(terminal)
    drawn = [0]
    threading.Thread(target=drain, args=(reader, drawn), daemon=True).start()
    process = psutil.Process(dashboard.pid)
    print(f"dashboard memory: `optwatch run` of a script printing a line per step, {args.steps:,} steps, "
          f"{columns}x{rows} terminal, Overview tab; {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'seconds':>8} {'step':>9} {'RSS MiB':>8}")

    samples: list[tuple[float, int, float]] = []
    last = args.steps - 1
    while dashboard.poll() is None:
        time.sleep(args.every)
        step = job_step(runtime_dir)
        try:
            rss = process.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            break
        if step is None:
            continue
        samples.append((time.monotonic() - started, step, rss))
        print(f"{samples[-1][0]:8.0f} {step:>9} {rss:8.1f}", flush=True)
        if step >= last:
            break
    cpu = process.cpu_times()
    time.sleep(2 * args.every)  # the dashboard takes in the last lines and the end of the run
    final_rss = process.memory_info().rss / 2**20
    os.write(reader, b"q")
    try:
        dashboard.wait(timeout=60)
    except subprocess.TimeoutExpired:
        dashboard.kill()
        dashboard.wait()

    shutil.rmtree(work, ignore_errors=True)
    after = [s for s in samples if s[1] >= args.warmup]
    if not after or samples[-1][1] < last:
        sys.exit(f"the job did not reach step {last} (last seen: {samples[-1][1] if samples else None})")
    reference = after[0]
    highest = max(s[2] for s in after)
    print(f"RSS after warm-up (step {reference[1]:,}): {reference[2]:.1f} MiB; at the end (step {last:,}): "
          f"{final_rss:.1f} MiB; highest after warm-up {highest:.1f} MiB, "
          f"growth {max(highest, final_rss) - reference[2]:+.1f} MiB")  # fmt: skip
    print(f"{samples[-1][0]:.0f} s for the run; the dashboard's CPU time {cpu.user + cpu.system:.0f} s, "
          f"{drawn[0] / 2**20:.1f} MiB drawn to its terminal")  # fmt: skip


if __name__ == "__main__":
    main()
