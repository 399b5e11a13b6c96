"""CPU a training process's optwatch threads use while its hub is out of reach (dead, or never started).

A probe's channel keeps trying to reach the hub (ZeroMQ reconnects by itself) so that a hub that comes back
gets the run's records. This prints each thread's CPU time per second of wall clock over ``--seconds``.

    python benchmarks/unreachable_hub.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lockstep import threads_cpu_s  # noqa: E402

from optwatch.probe.channel import Channel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    channel = Channel(Path(tempfile.mkdtemp(prefix="ow-gone-")))  # a run directory without a hub
    channel.start()
    try:
        time.sleep(2.0)  # past the first tries
        before = threads_cpu_s()
        time.sleep(args.seconds)
        after = threads_cpu_s()
    finally:
        channel.close()
    for name, cpu in sorted(after.items()):
        if name != "MainThread":
            print(f"{name:<20} {(cpu - before.get(name, 0.0)) / args.seconds * 1000:6.2f} ms of CPU a second")


if __name__ == "__main__":
    main()
