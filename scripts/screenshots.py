"""Regenerate screenshots/ from a real short run of the example.

Runs `optwatch run --headless --record` on examples/cifar.py, then replays the record into the
dashboard at fixed terminal sizes and saves SVG screenshots (the README shows them). Then the whole run and
runs side by side: two recorded runs of the LLM-shaped benchmark loop (3,000 iterations, two widths), the
first in whole-run zoom, both in `optwatch compare`. Then web.png: a live run of the example served by
`optwatch attach --web`, as headless Chromium shows it (skipped without one).

    python scripts/screenshots.py [--steps 120] [--no-web] [--no-runs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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


def shoot_runs(iterations: int) -> None:
    """whole-run-140x45.svg and compare-140x45.svg, from two runs recorded as every run is (by default)."""
    from optwatch import runs
    from optwatch.app.app import OptwatchApp
    from optwatch.app.compare_app import CompareApp
    from optwatch.comparison import compare_runs
    from optwatch.runs_cli import load

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OPTWATCH_RUNS_DIR"] = str(Path(tmp) / "runs")
        env = {**os.environ, "OPTWATCH_RUNTIME_DIR": str(Path(tmp) / "rt")}
        for width in ("32", "64"):
            loop = ["benchmarks/llm_loop.py", "--quiet", "--iters", str(iterations), "--width", width]
            command = [sys.executable, "-m", "optwatch", "run", "--headless", *loop]
            subprocess.run(command, check=True, cwd=ROOT, env=env)
        entries = runs.list_runs()

        async def whole() -> None:
            store, _ = load(entries[0].run_id)
            app = OptwatchApp.for_store(store)
            async with app.run_test(size=(140, 45)) as pilot:
                await pilot.press("z", "z")  # the whole run from step 0
                await pilot.pause(0.5)
                app.render_views(force_charts=True)
                await pilot.pause(0.3)
                app.save_screenshot(filename="whole-run-140x45.svg", path=str(OUT))

        async def side_by_side() -> None:
            loaded = [load(entry.run_id) for entry in entries]
            app = CompareApp(compare_runs([(path.name, store) for store, path in loaded]))
            async with app.run_test(size=(140, 45)) as pilot:
                await pilot.pause(0.8)
                app.save_screenshot(filename="compare-140x45.svg", path=str(OUT))

        asyncio.run(whole())
        asyncio.run(side_by_side())
        print(f"wrote {OUT / 'whole-run-140x45.svg'} and {OUT / 'compare-140x45.svg'}")


def shoot_web(steps: int) -> None:
    """web.png: the live example, once it has made ``steps`` steps, in a browser at 1280x800."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        print("no Chromium and Playwright here (scripts/setup.sh installs them): web.png not redone")
        return
    from optwatch.wire.subscriber import Feed

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OPTWATCH_RUNTIME_DIR": str(Path(tmp) / "rt")}

        def start(*args: str, output=subprocess.PIPE) -> subprocess.Popen:
            command = [sys.executable, "-m", "optwatch", *args]
            return subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output, text=True)

        # The example by its path from the root, as the README runs it: the header shows it.
        job = start("run", "--headless", "examples/cifar.py", "--eval-every", "40", output=subprocess.DEVNULL)
        server = None
        try:
            while not (infos := list((Path(tmp) / "rt").glob("*/info.json"))):
                time.sleep(0.2)
            run_dir = infos[0].parent
            feed = Feed(f"ipc://{run_dir / 'pub.sock'}", f"ipc://{run_dir / 'ctl.sock'}")
            made = 0
            while made < steps:
                made = max([made] + [r["step"] + 1 for r in feed.poll(0.5) if r["kind"] == "step"])
            feed.close()
            server = start("attach", "--web", run_dir.name, "--port", "0")
            url = re.search(r"is at (\S+)", server.stdout.readline()).group(1)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(url)
                time.sleep(8)  # the dashboard starts, takes the history and draws
                page.screenshot(path=str(OUT / "web.png"))
                browser.close()
            print(f"wrote {OUT / 'web.png'}")
        finally:
            for process in (server, job):
                if process is not None:
                    process.send_signal(signal.SIGINT)
                    process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--no-web", action="store_true", help="leave web.png as it is")
    parser.add_argument("--no-runs", action="store_true", help="leave whole-run and compare as they are")
    parser.add_argument("--iterations", type=int, default=3000, help="iterations of each run for --runs shots")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "run.jsonl"
        record_run(args.steps, record)
        asyncio.run(shoot(record))
    if not args.no_runs:
        shoot_runs(args.iterations)
    if not args.no_web:
        shoot_web(args.steps)


if __name__ == "__main__":
    main()
