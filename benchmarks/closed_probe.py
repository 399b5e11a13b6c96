"""Run a training script under optwatch's probe, closed from the start: what a probe costs by being there.

The probe starts as ``optwatch run`` starts it in the training process (its threads, imports, memory and
wrappers) and is closed at once: its hooks then only call what they wrap. Against bare, what a process pays
for a probe that measures nothing; against ``probe`` (the same, working), what its work costs.
``benchmarks/wall_clock.py --configs ...,closed`` runs it, with the hub out of reach as for ``probe``.

    python benchmarks/closed_probe.py SCRIPT [ARGS...]
"""

from __future__ import annotations

import sys

import optwatch.probe.start
from optwatch.probe import launch

_start_probe = optwatch.probe.start.start_probe


def start_closed(*args, **kwargs):
    probe = _start_probe(*args, **kwargs)
    probe.closed = True
    return probe


if __name__ == "__main__":
    optwatch.probe.start.start_probe = start_closed  # (launch.run_script imports it when it runs)
    sys.exit(launch.run_script(sys.argv[1], sys.argv[2:]))
