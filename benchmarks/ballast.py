"""Run a training script bare but for some ballast: a control of the measurement, with no optwatch in it.

A process under optwatch differs from the bare one in more than optwatch's work: its heap holds other
objects, its allocations land elsewhere. Here the script runs as ``python SCRIPT`` does, in a process that
first made and keeps 100,000 small dicts and 12 MiB of buffers, and never touches them again. Its ratio to
bare is what ``benchmarks/wall_clock.py`` reads for a difference between two processes that costs the
loop nothing by itself; where it moves from 1.00 by more than the A/A control does (two bare processes,
the same heap), a figure within that distance of 1.00 is within the method's reach, not optwatch's cost.
``benchmarks/wall_clock.py --configs ...,ballast`` runs it.

    python benchmarks/ballast.py SCRIPT [ARGS...]
"""

from __future__ import annotations

from lockstep import run_script_as_main

BALLAST_DICTS = 100_000
BALLAST_BUFFERS = 3_000  # of 4 KiB: 12 MiB


def main() -> None:
    ballast = [{"index": i, "name": str(i)} for i in range(BALLAST_DICTS)]
    ballast += [bytearray(4096) for _ in range(BALLAST_BUFFERS)]
    run_script_as_main("python benchmarks/ballast.py SCRIPT [ARGS...]")
    del ballast


if __name__ == "__main__":
    main()
