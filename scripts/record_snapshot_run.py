"""Record tests/data/snapshot_run.jsonl, the stream the dashboard's snapshot tests replay.

A real run of examples/ddp.py on two ranks (gloo, CPU), with something on every tab: rank 1 loads its
data slowly (a straggler alert, an input-bound verdict against rank 0's), steps 30-32 are profiled (Hot
spots), and three scheduled learning-rate changes, the middle one far too high for three steps (an
exploding-gradient alert, and a before/after on the Controls tab).

    python scripts/record_snapshot_run.py

Regenerating the record changes what every snapshot shows (run id, timings, losses): update them after,
look at them, and commit the lot together:

    python -m pytest tests/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "tests" / "data" / "snapshot_run.jsonl"
STEPS = 90


def main() -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ow-snap-") as tmp:
        env = dict(os.environ)
        env["OPTWATCH_RUNTIME_DIR"] = str(Path(tmp) / "rt")  # short: Unix socket paths are limited
        env["OPTWATCH_TRACE_DIR"] = str(Path(tmp) / "traces")  # the profiler's trace, not kept
        command = [
            sys.executable, "-m", "optwatch", "run", "--headless", "--record", str(RECORD),
            "--nproc-per-node", "2",
            "--profile-at", "30:3",
            "--control", "lr=0.02@36", "--control", "lr=0.3@50", "--control", "lr=0.02@53",
            "examples/ddp.py",  # relative, as the dashboard's header shows it
            "--steps", str(STEPS), "--slow-rank", "1", "--step-sleep", "0.04",
        ]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT, env=env)
    print(f"wrote {RECORD.relative_to(ROOT)} ({RECORD.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
