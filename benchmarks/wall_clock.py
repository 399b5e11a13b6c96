"""What optwatch costs a real training loop, on the loop's own clock: bare against `optwatch run`, interleaved.

Each round runs every configuration once, in a rotating order, as separate processes (so each pays for its
own imports and warm-up, as a user's run does), with the loop's own per-iteration timer:

    bare        python LOOP
    aa          python LOOP again: the A/A control, whose ratio to bare shows what this machine can resolve
    default     optwatch run --headless LOOP            (the defaults)
    every       optwatch run --headless --budget 0 LOOP (every check on every step)
    dashboard   optwatch run LOOP, the dashboard drawing in a pseudo-terminal

Per run and phase (the first 100 iterations, where optwatch checks every step by design, and the steady
state after them): the median iteration's wall time and the process's CPU time per iteration (the
training process: optwatch's threads in it included); per round, each configuration's ratio to bare; the
figure is the median ratio over rounds, with its spread. Beside it: optwatch's own live figure (its step
records' ``optwatch_s + optwatch_bg_s`` over ``step_time_s``), the hub's CPU, and everything's CPU
(`optwatch run`, the training process and the hub, from the kernel's accounting of the finished processes).

    python benchmarks/wall_clock.py --workload llm --rounds 8
    python benchmarks/wall_clock.py --workload cifar --rounds 5 --iters 160
    python benchmarks/wall_clock.py --workload llm --device cuda --configs bare,aa,default,every
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "llm": [str(ROOT / "benchmarks" / "llm_loop.py"), "--quiet"],
    "cifar": [str(ROOT / "benchmarks" / "cifar_loop.py")],
}
CONFIGS = ("bare", "aa", "default", "every", "dashboard")
FIRST = 100  # optwatch checks every step up to here by design (--budget applies after it)
WARMUP = 5


def command(config: str, loop: list[str], record: Path) -> list[str]:
    python = [sys.executable]
    if config in ("bare", "aa"):
        return [*python, *loop]
    ow = [*python, "-m", "optwatch", "run"]
    if config == "default":
        return [*ow, "--headless", "--record", str(record), *loop]
    if config == "every":
        return [*ow, "--headless", "--budget", "0", "--record", str(record), *loop]
    if config == "dashboard":
        return [*ow, "--record", str(record), *loop]
    raise ValueError(config)


def run_once(config: str, loop: list[str], workdir: Path) -> dict:
    record = workdir / f"{config}-{time.monotonic_ns()}.jsonl"
    argv = command(config, loop, record)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OPTWATCH_RUNTIME_DIR": str(workdir / "rt")}
    env["OPTWATCH_RUNS_DIR"] = str(workdir / "runs")  # the records runs keep by default, not in the checkout
    started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if config == "dashboard":
        out = run_in_pty(argv, env)
    else:
        out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - started
    times = next(json.loads(line[11:]) for line in out.splitlines() if line.startswith("LOOP_TIMES "))
    # Every process of the run, reaped: `optwatch run`, the training process, the hub.
    everything = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result = {"times": times, "run_wall_s": wall, "all_cpu_s": everything}
    if record.exists():
        records = [json.loads(line) for line in record.read_text().splitlines()]
        result["steps"] = [r for r in records if r["kind"] == "step" and r["rank"] == 0]
        hubs = [r for r in records if r["kind"] == "hub"]
        result["hub_cpu_s"] = hubs[-1]["cpu_s"] if hubs else None
        record.unlink()
    return result


def run_in_pty(argv: list[str], env: dict) -> str:
    """The dashboard, drawing into a 100x30 pseudo-terminal whose screen is read and thrown away; the loop's
    own output is in the run's log file, read back from the record's log lines."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(env, COLUMNS="100", LINES="30", TERM="xterm-256color")
        os.execvp(argv[0], argv)
    deadline = time.monotonic() + 1800
    finished_at = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                os.read(fd, 65536)
            except OSError:
                break
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        record = Path(argv[argv.index("--record") + 1])
        if finished_at is None and record.exists() and '"kind":"end"' in record.read_text():
            finished_at = time.monotonic()
        if finished_at is not None and time.monotonic() - finished_at > 1.0:
            os.write(fd, b"q")  # the run is over: q quits without asking
    else:
        os.kill(pid, 9)
    os.close(fd)
    record = Path(argv[argv.index("--record") + 1])
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return "\n".join(r["line"] for r in lines if r["kind"] == "log")


def phases(result: dict, iters: int) -> dict[str, dict[str, float]]:
    wall, cpu = result["times"]["wall_s"], result["times"]["cpu_s"]
    cut = {"first": (WARMUP, FIRST), "steady": (FIRST, iters)}
    return {
        name: {"wall": statistics.median(wall[a:b]), "cpu": statistics.median(cpu[a:b])} for name, (a, b) in cut.items()
    }


def live_share(result: dict) -> dict[str, float | None]:
    steps = result.get("steps")
    if not steps:
        return {"first": None, "steady": None}

    def share(chosen: list[dict]) -> float | None:
        chosen = [s for s in chosen if isinstance(s.get("step_time_s"), float)]
        total = sum(s["step_time_s"] for s in chosen)
        own = sum((s.get("optwatch_s") or 0.0) + (s.get("optwatch_bg_s") or 0.0) for s in chosen)
        return own / total if total > 0 else None

    return {
        "first": share([s for s in steps if WARMUP <= s["step"] < FIRST]),
        "steady": share([s for s in steps if s["step"] >= FIRST]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="llm")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    configs = args.configs.split(",")
    loop = [*WORKLOADS[args.workload], "--iters", str(args.iters), "--device", args.device]
    per_round: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="ow-wall-") as workdir:
        for round_index in range(args.rounds):
            order = configs[round_index % len(configs) :] + configs[: round_index % len(configs)]
            results = {}
            for config in order:
                result = run_once(config, loop, Path(workdir))
                results[config] = {"phases": phases(result, args.iters), "live": live_share(result)}
                results[config]["hub_cpu_s"] = result.get("hub_cpu_s")
                results[config]["all_cpu_s"] = result["all_cpu_s"]
            per_round.append(results)
            line = " ".join(
                f"{c}={results[c]['phases']['steady']['wall'] / results['bare']['phases']['steady']['wall']:.3f}"
                for c in configs
                if c != "bare"
            )
            print(f"round {round_index}: steady wall ratio {line}", flush=True)
    report = summarise(per_round, configs)
    report["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    report["command"] = " ".join(sys.argv)
    report["workload"] = args.workload
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def summarise(per_round: list[dict[str, dict]], configs: list[str]) -> dict:
    figures: dict = {"configs": {}}
    for config in configs:
        if config == "bare":
            continue
        entry = {}
        for phase in ("first", "steady"):
            for clock in ("wall", "cpu"):
                ratios = [r[config]["phases"][phase][clock] / r["bare"]["phases"][phase][clock] for r in per_round]
                entry[f"{phase}_{clock}"] = {
                    "median": statistics.median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                }
            lives = [r[config]["live"][phase] for r in per_round if r[config]["live"][phase] is not None]
            entry[f"{phase}_live"] = statistics.median(lives) if lives else None
        hub = [r[config]["hub_cpu_s"] for r in per_round if r[config].get("hub_cpu_s") is not None]
        entry["hub_cpu_s"] = statistics.median(hub) if hub else None
        entry["extra_cpu_s"] = statistics.median(r[config]["all_cpu_s"] - r["bare"]["all_cpu_s"] for r in per_round)
        figures["configs"][config] = entry
    figures["bare_ms"] = {
        phase: statistics.median(1000 * r["bare"]["phases"][phase]["wall"] for r in per_round)
        for phase in ("first", "steady")
    }
    return figures


def print_report(report: dict) -> None:
    bare = report["bare_ms"]
    print(f"\nbare median iteration: first 100 {bare['first']:.2f} ms, steady {bare['steady']:.2f} ms")
    print(f"{'config':<10} {'phase':<7} {'wall ratio (min-max)':<24} {'cpu ratio (min-max)':<24} {'live':>7}")
    for config, entry in report["configs"].items():
        for phase in ("first", "steady"):
            wall, cpu, live = entry[f"{phase}_wall"], entry[f"{phase}_cpu"], entry[f"{phase}_live"]
            print(
                f"{config:<10} {phase:<7} {wall['median']:.3f} ({wall['min']:.3f}-{wall['max']:.3f})"
                f"{'':<5} {cpu['median']:.3f} ({cpu['min']:.3f}-{cpu['max']:.3f}){'':<5} "
                + (f"{100 * live:6.2f}%" if live is not None else "      -")
            )
        hub = f", of which the hub {entry['hub_cpu_s']:.2f} s" if entry.get("hub_cpu_s") is not None else ""
        print(f"{config:<10} CPU of every process beyond bare's, per run: {entry['extra_cpu_s']:+.2f} s{hub}")


if __name__ == "__main__":
    main()
