"""Regenerate screenshots/ from a real short run of the example.

Runs `optwatch run --headless --record` on examples/cifar.py, then replays the record into the
dashboard at fixed terminal sizes and saves SVG screenshots (the README shows them).

    python scripts/screenshots.py [--steps 120]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "screenshots"
# (file, terminal size, key pressed first: which tab)
SHOTS = [
    ("dashboard-80x24.svg", (80, 24), None),
    ("dashboard-140x45.svg", (140, 45), None),
    ("gradients-140x45.svg", (140, 45), "g"),
    ("system-140x45.svg", (140, 45), "s"),
    ("hotspots-140x45.svg", (140, 45), "h"),
]


def record_run(steps: int, path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "optwatch",
        "run",
        "--headless",
        "--record",
        str(path),
        "--profile-at",  # so the Hot spots tab has a window to show
        "40:5",
        str(ROOT / "examples" / "cifar.py"),
        "--steps",
        str(steps),
        "--eval-every",
        "40",
    ]
    subprocess.run(command, check=True, cwd=ROOT)


async def shoot(record: Path) -> None:
    from optwatch.app.app import OptwatchApp
    from optwatch.store import Store, read_records

    for name, size, key in SHOTS:
        store = Store()
        store.ingest(list(read_records(record)))
        app = OptwatchApp.for_store(store)
        async with app.run_test(size=size) as pilot:
            if key:
                await pilot.press(key)
            await pilot.pause(0.5)
            app.render_views(force_charts=True)
            await pilot.pause(0.3)
            app.save_screenshot(filename=name, path=str(OUT))
        print(f"wrote {OUT / name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "run.jsonl"
        record_run(args.steps, record)
        asyncio.run(shoot(record))


if __name__ == "__main__":
    main()
