from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A suite started in the background by a shell without job control inherits SIGINT ignored, and so would every
# training it starts (python keeps an ignored SIGINT ignored): the Ctrl-C and stop tests then wait for nothing.
# A handler here is reset to the default in each process the tests start.
signal.signal(signal.SIGINT, signal.default_int_handler)
SCRIPTS = ROOT / "tests" / "scripts"
EXAMPLES = ROOT / "examples"

# One intra-op thread for torch here and in every training process a test starts (torchrun's default too):
# two test workers on two cores, each with a training process of as many threads, would run four or more
# threads on two cores, and every timing-sensitive test would wait on the others.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch):
    """Each test gets its own private runtime directory (short: Unix socket paths are limited)."""
    path = Path(tempfile.mkdtemp(prefix="ow-"))
    monkeypatch.setenv("OPTWATCH_RUNTIME_DIR", str(path / "rt"))
    monkeypatch.setenv("OPTWATCH_RUNS_DIR", str(path / "runs"))  # records and traces, not in the checkout
    yield path / "rt"
    end_processes_left_by_the_test(str(path / "rt"))
    shutil.rmtree(path, ignore_errors=True)


def end_processes_left_by_the_test(runtime: str) -> list[str]:
    """Kill what a test started and left running (returned: their command lines).

    By design a training outlives its viewer: a test that kills `optwatch run` leaves the training and its
    hub running, reparented away from the test, for the rest of the suite. Each is known by the test's own
    runtime directory in its environment."""
    import psutil

    left = []
    for process in psutil.process_iter(["pid", "environ", "cmdline"]):
        if process.info["pid"] == os.getpid() or (process.info["environ"] or {}).get("OPTWATCH_RUNTIME_DIR") != runtime:
            continue
        try:
            process.kill()
        except psutil.Error:
            continue
        left.append(" ".join(process.info["cmdline"] or []))
    if left and os.environ.get("OPTWATCH_LEAK_LOG"):
        with open(os.environ["OPTWATCH_LEAK_LOG"], "a") as log:
            log.write(f"{os.environ.get('PYTEST_CURRENT_TEST')}: {left}\n")
    return left


def optwatch(*args: str, timeout: float = 120, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real `optwatch` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "optwatch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env if env is not None else dict(os.environ),
        **kwargs,
    )


def wait_for(predicate, timeout_s: float = 60.0, interval_s: float = 0.2):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError("condition not met in time")


def live_jobs() -> list[dict]:
    """What `optwatch ls --json` lists, computed in this process: tests poll it several times a second while a
    job starts, and a Python process per poll would take CPU from the very job they wait for. (The command
    itself is run by the tests of `ls`.)"""
    from optwatch.cli import jobs_listing

    return json.loads(json.dumps(jobs_listing()))


def wait_for_steps(job: dict, count: int) -> None:
    """Until the job has made ``count`` steps (a loaded machine can take a while to import torch)."""
    from optwatch.wire.subscriber import Feed

    feed = Feed(job["endpoints"]["pub"], job["endpoints"]["ctl"])
    seen: list[dict] = []
    try:
        wait_for(lambda: seen.extend(feed.poll(0.2)) or len(steps_of(seen)) >= count, timeout_s=90, interval_s=0)
    finally:
        feed.close()


async def wait_for_ui(pilot, predicate, timeout_s: float = 30.0) -> None:
    """In a pilot test: let the app run until ``predicate()`` holds, or fail after ``timeout_s``."""
    for _ in range(int(timeout_s / 0.1)):
        if predicate():
            return
        await pilot.pause(0.1)
    raise AssertionError("condition not met in time")


def screen_lines(app) -> dict[int, str]:
    """What the terminal shows, line by line: the text of the app's own screenshot (SVG), pieces in order.

    Cells left blank between pieces are not in the screenshot's text, so pieces are joined by a space.
    """
    pieces: dict[int, list[str]] = {}
    for line, text in re.findall(
        r'clip-path="url\(#terminal-\d+-line-(\d+)\)">([^<]*)</text>', app.export_screenshot()
    ):
        pieces.setdefault(int(line), []).append(html.unescape(text).replace("\xa0", " "))
    return {line: " ".join(texts) for line, texts in pieces.items()}


def train(model, optimizer, x, y, steps: int, loss_fn=None, spike=None) -> None:
    """``steps`` optimizer steps on one batch (mean squared error unless ``loss_fn``). ``spike``:
    (module, step): that module's ``armed`` flag is set at that step alone (test modules output inf then)."""
    import torch

    loss_fn = loss_fn or torch.nn.functional.mse_loss
    for step in range(steps):
        if spike is not None:
            spike[0].armed = step == spike[1]
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()


def start_training(script: str, *args: str):
    """A real instrumented training process, as `optwatch run` starts it."""
    from optwatch.options import ProbeOptions
    from optwatch.supervisor import TrainingProcess

    process = TrainingProcess(script, list(args), ProbeOptions(script=script, argv=list(args)))
    process.start()
    return process


def read_jsonl(path: Path) -> list[dict]:
    from optwatch.store import read_records

    return list(read_records(path))


def steps_of(records: list[dict], rank: int | None = None) -> list[dict]:
    return [r for r in records if r["kind"] == "step" and (rank is None or r["rank"] == rank)]


def dump(records: list[dict]) -> str:
    return "\n".join(json.dumps(r) for r in records[-20:])


class LocalHub:
    """A real hub serving a run directory from a thread of the test process, for probes made in it."""

    def __init__(self, run_dir: Path, run_id: str):
        import threading

        from optwatch.hub.server import Hub

        self.hub = Hub(run_dir, run_id)
        self.hub.bind()
        self._thread = threading.Thread(target=self._serve, name="test-hub", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self.hub.serve()
        finally:
            self.hub.close()

    def records(self, timeout_s: float = 20.0) -> list[dict]:
        """Everything the hub kept, once every rank that said hello has said its end."""
        wait_for(lambda: self.hub.history.hello and set(self.hub.history.hello) <= set(self.hub.history.end), timeout_s)
        return self.hub.history.records()

    def close(self) -> None:
        self.hub.stop()
        self._thread.join(5)


def new_probe(name: str = "probe-test", *, plugins=None, extra=(), first: bool = False, probe_class=None, **options):
    """A probe in this process, not started, with a real hub of its own (``probe.test_hub``): ``plugins``
    instead of the usual ones, or ``extra`` plugins after them (before them with ``first``)."""
    from optwatch.options import ProbeOptions
    from optwatch.probe.channel import Channel
    from optwatch.probe.probe import Probe
    from optwatch.probe.start import build_plugins
    from optwatch.wire import runtime

    run_dir = runtime.make_run_dir(name)
    hub = LocalHub(run_dir, name)
    options = ProbeOptions(**{"script": "test", "publish_interval_s": 0.0, **options})
    chosen = list(plugins) if plugins is not None else build_plugins(options)
    chosen = [*extra, *chosen] if first else [*chosen, *extra]
    probe = (probe_class or Probe)(run_dir, name, options, Channel(run_dir), chosen)
    probe.test_hub = hub
    return probe


def records_of(probe, kind: str | None = None) -> list[dict]:
    """Close ``probe`` and return what its hub received (of ``kind``), as a viewer attaching now would."""
    probe.close()
    records = probe.test_hub.records()
    probe.test_hub.close()
    return [r for r in records if kind is None or r["kind"] == kind]


def steps_for_now(steps: list[dict]) -> list[dict]:
    """The steps the "now" cost figure covers, by hand: the last 20, or more, to cover 2 s, past the first two
    steps (the warm-up) once there are any (docs/cost.md). For runs from step 0."""
    now = steps[-20:]
    covered = sum(s["step_time_s"] for s in now)
    while covered < 2.0 and len(now) < len(steps):
        now = steps[-len(now) - 1 :]
        covered += now[0]["step_time_s"]
    return [s for s in now if s["step"] >= 2] or now


def optwatch_share(steps: list[dict]) -> float:
    """optwatch's share of these steps' time, from their records by hand: its code on the training thread (less
    the part of the step's wait for a core that falls on it by time, as docs/cost.md says) and its threads'
    CPU time, over the step time."""
    own = sum(
        s["optwatch_s"] * (1 - (s.get("core_wait_s") or 0.0) / s["step_time_s"]) + s["optwatch_bg_s"] for s in steps
    )
    return own / sum(s["step_time_s"] for s in steps)
