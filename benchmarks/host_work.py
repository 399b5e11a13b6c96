"""Host instructions that optwatch adds per training step, counted by callgrind: the same on every run.

On a busy or shared machine step times move by ±10-20% between rounds, more than optwatch's own cost on
a host-bound step; the number of instructions the training thread executes per step does not move. This
counts them, bare and under optwatch, over the same steady-state steps (valgrind's callgrind, collection
switched on by the training thread itself around the steps, so imports, set-up and warm-up are left out).
On a GPU box a host-bound step (the cifar model on a fast GPU) is exactly this host work: kernel
launches are the training thread's instructions too. What it does not see: cache effects, optwatch's
background threads (``overhead.py`` reports their CPU time), and the hand-over of values to the
channel once per publish interval. On a CPU, per-tensor norms that a GPU fuses into one launch run
one operator per tensor, so the statistics' share reads higher here than on a GPU.

    python benchmarks/host_work.py --workload cifar-host
    python benchmarks/host_work.py --workload tiny --modes default,forward-check,no-gradients
    python benchmarks/host_work.py --workload cifar-host --modes light,every-step   # between detail steps

The ``light`` mode counts only steps between two detail steps (``--budget`` spacing them at every
128th): the step record every step pays for, which is most of optwatch's cost on a host-bound GPU step.

Needs valgrind and a C compiler with valgrind's headers (``apt-get install valgrind gcc``); the script
builds a three-line helper library that lets Python switch callgrind's collection on and off, then runs
itself under valgrind. Each mode runs ``--rounds`` times in the same process to show that the counts
repeat.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HELPER_SOURCE = """
#include <valgrind/callgrind.h>
void start_instrumentation(void) { CALLGRIND_START_INSTRUMENTATION; }
void toggle_collect(void) { CALLGRIND_TOGGLE_COLLECT; }
void dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""
ENV_HELPER = "OPTWATCH_HOST_WORK_HELPER"
WARMUP_STEPS = 20  # natively, before callgrind instruments anything: the probe's first-step work
SETTLE_STEPS = 3  # instrumented but not counted: callgrind's own first pass over new code


def build_helper(directory: Path) -> Path:
    source, library = directory / "callgrind_helper.c", directory / "libcallgrind_helper.so"
    source.write_text(HELPER_SOURCE)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("host_work.py needs a C compiler (cc or gcc) to build its callgrind helper")
    result = subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", "-o", str(library), str(source)], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"could not build the callgrind helper (is valgrind's callgrind.h installed?):\n{result.stderr}")
    return library


def measure(args: argparse.Namespace) -> None:
    """Under valgrind: run each mode's steps with collection on around them, one dump per mode and round."""
    import ctypes

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import MODES, instrument, workload

    helper = ctypes.CDLL(os.environ[ENV_HELPER])
    torch.set_num_threads(1)  # all of torch's work on the training thread, where it is counted
    instrumenting = False
    for round_index in range(args.rounds):
        for mode in args.modes:
            model, optimizer, step = workload(args.workload, torch.device("cpu"))
            probe = None
            if MODES[mode] is not None:
                # No hand-over to the channel during the counted steps: natively it comes once per
                # publish interval (every ~70 steps of the cifar model on an H200), but under valgrind's
                # slowdown it would come at every step and be counted as per-step work.
                probe = instrument(model, optimizer, {"publish_interval_s": 3600.0, **MODES[mode]})
            for _ in range(WARMUP_STEPS if not instrumenting else 0):
                step()
            if not instrumenting:
                helper.start_instrumentation()
                instrumenting = True
            for _ in range(SETTLE_STEPS):
                step()
            if probe is not None and mode == "light":
                skip_to_light_steps(probe, step, args.steps)
            # A collection of the older generations, whose turn comes every so many allocations, costs
            # millions of instructions: landing in one mode's counted steps and not another's it moved a
            # light step's figure by half. Collected here, none falls due in the few steps counted.
            gc.collect()
            helper.toggle_collect()  # this thread's instructions, from here
            for _ in range(args.steps):
                step()
            helper.toggle_collect()
            helper.dump(f"{mode}:{round_index}".encode())
            if probe is not None:
                probe.close()


def skip_to_light_steps(probe, step, steps: int) -> None:
    """Train (counted out) until the budget has spaced the detail steps wider than ``steps`` and the next
    ``steps`` steps fall between two of them: the ``light`` mode counts those steps alone."""
    for _ in range(1000):
        if probe.detail_every > steps + 1 and probe.step % probe.detail_every == 1:
            return
        step()
    sys.exit(f"the light mode's spacing did not pass {steps} steps (it is {probe.detail_every})")


def report(out_dir: Path, args: argparse.Namespace) -> None:
    counts: dict[str, list[float]] = {}
    for path in sorted(out_dir.glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:])):
        text = path.read_text(errors="replace")
        name = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
        total = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        if name and total:
            mode = name.group(1).rsplit(":", 1)[0]
            counts.setdefault(mode, []).append(int(total.group(1)) / args.steps)
    if "bare" not in counts:
        sys.exit(f"no counts came back from valgrind; its output is in {out_dir}")
    bare = min(counts["bare"])
    print(
        f"optwatch host work per step: {args.workload}, {args.steps} steps x {args.rounds} rounds, "
        "training thread, instructions (callgrind)"
    )
    for mode, values in counts.items():
        low, high = min(values), max(values)
        added = low - bare
        print(
            f"  {mode:<18} {low / 1e3:10.0f} k/step (rounds within {100 * (high - low) / low:.2f}%)"
            f"  added {added / 1e3:+8.0f} k = {100 * added / bare:+6.2f}% of the bare step"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload", choices=("tiny", "cifar", "cifar-host", "transformer", "llm"), default="cifar-host"
    )
    parser.add_argument("--modes", default="bare,default", help="comma-separated, as in overhead.py")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.modes = ["bare", *(m for m in args.modes.split(",") if m and m != "bare")]
    if ENV_HELPER in os.environ:
        measure(args)
        return
    if shutil.which("valgrind") is None:
        sys.exit("host_work.py needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="owhw-") as tmp:
        out_dir = Path(tmp)
        env = {**os.environ, ENV_HELPER: str(build_helper(out_dir))}
        env.setdefault("OPTWATCH_RUNTIME_DIR", str(out_dir / "rt"))
        command = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
            f"--callgrind-out-file={out_dir / 'callgrind.out'}",
            sys.executable, __file__, *sys.argv[1:],
        ]  # fmt: skip
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"the run under valgrind failed:\n{result.stderr[-3000:]}")
        report(out_dir, args)


if __name__ == "__main__":
    main()
