"""What optwatch costs a real training loop, on the loop's own clock: bare against `optwatch run`, interleaved.

Each round runs every configuration once, as separate processes (so each pays for its own imports and
warm-up, as a user's run does), with the loop's own per-iteration timer:

    bare        python LOOP
    aa          python LOOP again: the A/A control, whose ratio to bare shows what this machine can resolve
    default     optwatch run --headless LOOP            (the defaults: the hub keeps the run's record)
    every       optwatch run --headless --budget 0 LOOP (every check on every step)
    probe       the probe alone in the training process, its hub out of reach: no hub, no viewer
    probe-every the same, every check on every step: with ``default`` and ``every``, what the hub and the
                viewer on the machine's other cores add
    dashboard   optwatch run LOOP, the dashboard drawing in a pseudo-terminal (only with --slice-ms 0)
    closed      the probe alone, closed as it starts (``closed_probe.py``): what a probe that measures nothing
                costs the process (threads, imports, wrappers that pass through)
    hooks-only  no optwatch: empty wrappers at its per-step hook points (``null_hooks.py``), the floor that
                hooking there costs whatever the hooks do
    ballast     no optwatch: the loop in a process that keeps objects and memory it never uses (``ballast.py``),
                a control of the method beside ``aa``: what a difference between processes that does no work
                reads (the A/A's two bare processes have the same heap)

The runs of a round take turns on the machine (``lockstep``: slices of a few iterations, a new order each
turn), and each run's iterations are compared with bare's of the same turn, so that the machine's own
swings cancel out; with ``--slice-ms 0`` they run one after the other and each run's median iteration is
compared with bare's. Per phase (the first 100 iterations, where optwatch checks every step by design, and
the steady state after them): the wall-time and CPU-time ratio to bare, as the median over all rounds'
turns with a 95% interval from a bootstrap over rounds, and the rounds' own medians. Beside it: optwatch's
own live figure over the same iterations (``optwatch.summary.own_seconds`` of its step records over
``step_time_s``), each thread's CPU per iteration (the training thread's, optwatch's, ZeroMQ's: read by the
loop from the threads' own clocks, not from optwatch), the hub's CPU, and everything's CPU (`optwatch run`,
the training process and the hub, from the kernel's accounting of the finished processes).

    python benchmarks/wall_clock.py --workload llm --rounds 10
    python benchmarks/wall_clock.py --workload llm --loop-args "--batch 32"   (a 7 ms step: 2.7 ms at batch 4)
    python benchmarks/wall_clock.py --workload cifar --rounds 3 --iters 200
    python benchmarks/wall_clock.py --workload llm --slice-ms 0 --configs bare,aa,dashboard
    python benchmarks/wall_clock.py --workload llm --device cuda
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import pty
import random
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lockstep import run_in_turns, whole_iterations

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "llm": [str(ROOT / "benchmarks" / "llm_loop.py"), "--quiet"],
    "cifar": [str(ROOT / "benchmarks" / "cifar_loop.py")],
}
CONFIGS = (
    "bare", "aa", "ballast", "default", "every", "probe", "probe-every", "closed", "dashboard", "hooks-only"
)  # fmt: skip
SLICE_S = {"llm": 0.15, "cifar": 1.2}
"""How long each run of a round has the machine at a time: a few of the loop's iterations (``lockstep``)."""
FIRST = 100  # optwatch checks every step up to here by design (--budget applies after it)
WARMUP = 5


def command(config: str, loop: list[str], runs: Path) -> list[str]:
    """The run's command line. optwatch's runs keep their record as a user's run does, in their own runs
    directory ``runs`` (read back after), not with ``--record``, which adds a viewer writing each record."""
    python = [sys.executable]
    if config in ("bare", "aa"):
        return [*python, *loop]
    if config == "hooks-only":
        return [*python, str(ROOT / "benchmarks" / "null_hooks.py"), *loop]
    if config == "ballast":
        return [*python, str(ROOT / "benchmarks" / "ballast.py"), *loop]
    ow = ["env", f"OPTWATCH_RUNS_DIR={runs}", *python, "-m", "optwatch", "run"]
    if config == "default":
        return [*ow, "--headless", *loop]
    if config == "every":
        return [*ow, "--headless", "--budget", "0", *loop]
    if config in ("probe", "probe-every", "closed"):
        # A rank whose hub is out of reach (a closed port): the probe's whole work in the training process,
        # with no hub and no viewer beside it on the machine.
        alone = ["RANK=1", "WORLD_SIZE=2", "OPTWATCH_HUB=127.0.0.1:9", f"OPTWATCH_TOKEN={'0' * 32}"]
        if config == "probe-every":
            alone.append('OPTWATCH_OPTIONS={"budget": 0.0}')
        if config == "closed":
            return ["env", *alone, *python, str(ROOT / "benchmarks" / "closed_probe.py"), *loop]
        return ["env", *alone, *python, "-m", "optwatch.probe.launch", *loop]
    if config == "dashboard":  # (the pseudo-terminal's reader learns from this record when the run is over)
        return [*ow, "--record", str(runs / "viewer.jsonl"), *loop]
    raise ValueError(config)


def new_runs_dir(workdir: Path, config: str) -> Path:
    """A runs directory of the run's own, so that its record is found after it."""
    runs = workdir / f"runs-{config}-{time.monotonic_ns()}"
    runs.mkdir(parents=True)
    return runs


def run_env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "OPTWATCH_RUNTIME_DIR": str(workdir / "rt")}


def run_once(config: str, loop: list[str], workdir: Path) -> dict:
    runs = new_runs_dir(workdir, config)
    argv = command(config, loop, runs)
    env = run_env(workdir)
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
    result.update(_record_figures(runs))
    return result


def run_round_in_turns(configs: list[str], loop: list[str], workdir: Path, slice_s: float) -> dict[str, dict]:
    """Every configuration of a round at once, taking turns on the machine (``lockstep.run_in_turns``); each
    run's iterations are those that ran whole inside one of its slices while all the runs were training."""
    runs = {config: new_runs_dir(workdir, config) for config in configs}
    turns = run_in_turns([command(c, loop, runs[c]) for c in configs], run_env(workdir), workdir, slice_s)
    times = {}
    for config, run in zip(configs, turns):
        out = run.output.read_text()
        times[config] = next(json.loads(line[11:]) for line in out.splitlines() if line.startswith("LOOP_TIMES "))
        run.output.unlink()
    until = min(t["end_s"][-1] for t in times.values())  # after that, the rest run on a quieter machine
    results = {}
    for config, run in zip(configs, turns):
        kept = whole_iterations(times[config]["end_s"], times[config]["wall_s"], run.slices, until)
        usage = run.rusage
        result = {"times": times[config], "kept": kept, "all_cpu_s": usage.ru_utime + usage.ru_stime}
        result.update(_record_figures(runs[config]))
        results[config] = result
    return results


def _record_figures(runs: Path) -> dict:
    """The step records and the hub's CPU, from the record the run kept in ``runs`` (then removed)."""
    files = sorted(runs.glob("*/record*.jsonl.gz"))
    if not files:
        return {}
    with gzip.open(files[0], "rt") as lines:
        records = [json.loads(line) for line in lines]
    shutil.rmtree(runs)
    hubs = [r for r in records if r["kind"] == "hub"]
    return {
        "steps": [r for r in records if r["kind"] == "step" and r["rank"] == 0],
        "hub_cpu_s": hubs[-1]["cpu_s"] if hubs else None,
    }


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


CLOCKS = {"wall": "wall_s", "cpu": "cpu_s", "thread": "thread_s"}
"""The loop's clocks per iteration: wall time, the process's CPU time, the training thread's CPU time."""


def phases(result: dict, iters: int) -> dict[str, dict[str, float]]:
    """The median iteration of each phase, over the iterations measured (``kept``: those that ran whole in
    one slice, when the round took turns; else all)."""
    kept = result.get("kept", range(len(result["times"]["wall_s"])))
    cut = {"first": (WARMUP, FIRST), "steady": (FIRST, iters)}
    figures = {}
    for name, (a, b) in cut.items():
        chosen = [i for i in kept if a <= i < b]
        if not chosen:
            raise SystemExit(f"no iteration of the {name} phase ran whole inside a slice: give --slice-ms more")
        figures[name] = {
            clock: statistics.median(result["times"][key][i] for i in chosen) for clock, key in CLOCKS.items()
        }
        figures[name]["n"] = len(chosen)
    return figures


def paired_ratios(result: dict, bare: dict, iters: int) -> dict[str, dict[str, list[float]]]:
    """Per phase, for each of the round's turns: this run's mean measured iteration in its slice of the turn
    over bare's in its slice of the same turn (a few hundred milliseconds apart). Each ratio compares two
    moments of the same machine, so what the machine does over seconds cancels out."""

    def by_turn(run: dict, indices: list[int], clock: str) -> dict[int, float]:
        turns: dict[int, list[float]] = {}
        for i in indices:
            turns.setdefault(run["kept"][i], []).append(run["times"][clock][i])
        return {turn: statistics.fmean(values) for turn, values in turns.items()}

    figures = {}
    for name, (a, b) in {"first": (WARMUP, FIRST), "steady": (FIRST, iters)}.items():
        figures[name] = {}
        for clock, key in CLOCKS.items():
            mine = by_turn(result, [i for i in result["kept"] if a <= i < b], key)
            theirs = by_turn(bare, list(bare["kept"]), key)
            ratios = [mine[turn] / theirs[turn] for turn in mine if turn in theirs]
            figures[name][clock] = ratios
    return figures


def ratios(round_results: dict, config: str, phase: str, clock: str) -> list[float]:
    """A configuration's cost in a round: a ratio per turn when the round took turns, else the one ratio of
    its median iteration to bare's."""
    entry = round_results[config]
    if "paired" in entry:
        return entry["paired"][phase][clock]
    return [entry["phases"][phase][clock] / round_results["bare"]["phases"][phase][clock]]


def pooled(per_round: list[list[float]], resamples: int = 2000) -> dict[str, float]:
    """The median of every round's ratios together, and its 95% interval from a bootstrap over rounds (the
    rounds are independent; the turns of one round share its processes)."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median([r for chosen in rng.choices(per_round, k=len(per_round)) for r in chosen])
        for _ in range(resamples)
    )
    round_medians = [statistics.median(r) for r in per_round]
    return {
        "median": statistics.median([r for values in per_round for r in values]),
        "low": medians[int(0.025 * resamples)],
        "high": medians[int(0.975 * resamples) - 1],
        "min": min(round_medians),
        "max": max(round_medians),
        "turns": sum(len(r) for r in per_round),
    }


def live_share(result: dict) -> dict[str, float | None]:
    from optwatch.summary import own_seconds

    steps = result.get("steps")
    if not steps:
        return {"first": None, "steady": None}

    kept = result.get("kept")
    if kept is not None:  # a step a stop cut through counts the stop in its time and optwatch's
        steps = [s for s in steps if s["step"] in kept]

    def share(chosen: list[dict]) -> float | None:
        chosen = [s for s in chosen if isinstance(s.get("step_time_s"), float)]
        total = sum(s["step_time_s"] for s in chosen)
        own = sum(own_seconds(s) for s in chosen)  # (the live figure's own definition)
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
    parser.add_argument("--configs", default="bare,aa,default,every", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--slice-ms",
        type=float,
        help="the runs of a round take turns on the machine in slices this long (0: one after the other); "
        f"by default {', '.join(f'{w} {1000 * s:.0f}' for w, s in SLICE_S.items())}",
    )
    parser.add_argument(
        "--loop-args", default="", help='more arguments of the loop: "--batch 32" (the LLM loop with a 7 ms step)'
    )
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args()
    configs = args.configs.split(",")
    slice_s = SLICE_S[args.workload] if args.slice_ms is None else args.slice_ms / 1000
    if slice_s and "dashboard" in configs:
        parser.error("the dashboard draws in a terminal of its own: measure it with --slice-ms 0")
    loop = [*WORKLOADS[args.workload], "--iters", str(args.iters), "--device", args.device, *args.loop_args.split()]
    per_round: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="ow-wall-") as workdir:
        for round_index in range(args.rounds):
            order = configs[round_index % len(configs) :] + configs[: round_index % len(configs)]
            if slice_s:
                raw = run_round_in_turns(order, loop, Path(workdir), slice_s)
            else:
                raw = {config: run_once(config, loop, Path(workdir)) for config in order}
            results = {}
            for config in order:
                result = raw[config]
                results[config] = {"phases": phases(result, args.iters), "live": live_share(result)}
                if slice_s and config != "bare":
                    results[config]["paired"] = paired_ratios(result, raw["bare"], args.iters)
                results[config]["hub_cpu_s"] = result.get("hub_cpu_s")
                results[config]["threads_ms"] = threads_per_iteration(result["times"])
                results[config]["all_cpu_s"] = result["all_cpu_s"]
            per_round.append(results)
            line = " ".join(
                f"{c}={statistics.median(ratios(results, c, 'steady', 'wall')):.3f}" for c in configs if c != "bare"
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
            for clock in CLOCKS:
                entry[f"{phase}_{clock}"] = pooled([ratios(r, config, phase, clock) for r in per_round])
            lives = [r[config]["live"][phase] for r in per_round if r[config]["live"][phase] is not None]
            entry[f"{phase}_live"] = statistics.median(lives) if lives else None
        hub = [r[config]["hub_cpu_s"] for r in per_round if r[config].get("hub_cpu_s") is not None]
        entry["hub_cpu_s"] = statistics.median(hub) if hub else None
        entry["extra_cpu_s"] = statistics.median(r[config]["all_cpu_s"] - r["bare"]["all_cpu_s"] for r in per_round)
        entry["threads_ms"] = median_threads_ms(per_round, config)
        figures["configs"][config] = entry
    figures["bare_threads_ms"] = median_threads_ms(per_round, "bare")
    figures["bare_ms"] = {
        phase: statistics.median(1000 * r["bare"]["phases"][phase]["wall"] for r in per_round)
        for phase in ("first", "steady")
    }
    return figures


def median_threads_ms(per_round: list[dict[str, dict]], config: str) -> dict[str, float]:
    """Each thread's CPU per iteration in ``config``'s runs, the median over rounds (0 in a round without it)."""
    names = sorted({name for r in per_round for name in r[config]["threads_ms"]})
    return {name: statistics.median(r[config]["threads_ms"].get(name, 0.0) for r in per_round) for name in names}


def print_report(report: dict) -> None:
    bare = report["bare_ms"]
    print(f"\nbare median iteration: first 100 {bare['first']:.2f} ms, steady {bare['steady']:.2f} ms")
    print(f"bare CPU per iteration by thread, ms: {_threads_text(report['bare_threads_ms'])}")
    print("ratios to bare: the median [its 95% interval] (the rounds' medians, least-most; turns compared)")
    print("(cpu: the training process's CPU time; thread: its training thread's alone)")
    print(f"{'config':<11} {'phase':<7} {'wall ratio':<38} {'cpu ratio':<21} {'thread ratio':<21} {'live':>7}")
    for config, entry in report["configs"].items():
        for phase in ("first", "steady"):
            wall, cpu, live = entry[f"{phase}_wall"], entry[f"{phase}_cpu"], entry[f"{phase}_live"]
            thread = entry[f"{phase}_thread"]
            print(
                f"{config:<11} {phase:<7} {wall['median']:.3f} [{wall['low']:.3f}-{wall['high']:.3f}]"
                f" ({wall['min']:.3f}-{wall['max']:.3f}; {wall['turns']:>4}) "
                f"{cpu['median']:.3f} [{cpu['low']:.3f}-{cpu['high']:.3f}]{'':<4} "
                f"{thread['median']:.3f} [{thread['low']:.3f}-{thread['high']:.3f}]{'':<4} "
                + (f"{100 * live:6.2f}%" if live is not None else "      -")
            )
        hub = f", of which the hub {entry['hub_cpu_s']:.2f} s" if entry.get("hub_cpu_s") is not None else ""
        print(f"{config:<11} CPU of every process beyond bare's, per run: {entry['extra_cpu_s']:+.2f} s{hub}")
        print(f"{config:<11} CPU per iteration by thread, ms: {_threads_text(entry['threads_ms'])}")


def _threads_text(threads_ms: dict[str, float]) -> str:
    return ", ".join(f"{name} {ms:.3f}" for name, ms in threads_ms.items() if ms >= 0.0005)


def threads_per_iteration(times: dict) -> dict[str, float]:
    """Each thread's CPU time over the loop's timed iterations, per iteration, in ms (the training thread is
    ``MainThread``; optwatch's are named ``optwatch-...``; ZeroMQ's ``ZMQbg/...``)."""
    iterations = len(times["wall_s"]) or 1
    return {name: 1000 * seconds / iterations for name, seconds in times.get("threads_cpu_s", {}).items()}


if __name__ == "__main__":
    main()
