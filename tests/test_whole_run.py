"""The whole run at any length: a downsampled history from step 0 at flat memory, charts that zoom out to it, and
a viewer that attaches late sees it too."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPTS, live_jobs, optwatch, read_jsonl, screen_lines, steps_of, wait_for, wait_for_ui
from optwatch import protocol
from optwatch.runhistory import BUCKETS, RunHistory
from optwatch.store import STEP_CAPACITY, Store

MILLION = 1_000_000
NAN_STEP = 654_321


def descending_loss(step: int) -> float:
    """A loss falling from 3.5 to about 0.55 over a million steps, with one spike."""
    return 3.0 * math.exp(-step / 200_000) + 0.5 + (40.0 if step == 777_777 else 0.0)


@pytest.fixture(scope="module")
def million_step_store() -> Store:
    store = Store()
    store.ingest([protocol.make_record(protocol.HELLO, 0, run_id="long", script="long.py", world_size=1)])
    batch = []
    for step in range(MILLION):
        loss = math.nan if step == NAN_STEP else descending_loss(step)
        batch.append({"v": 1, "kind": "step", "rank": 0, "time": float(step), "step": step, "loss": loss})
        if len(batch) == 10_000:
            store.ingest(batch)
            batch = []
    return store


@pytest.mark.xdist_group("million_step_store")  # one worker builds the module's million_step_store
def test_a_million_steps_are_kept_whole_at_bounded_memory(million_step_store):
    state = million_step_store.primary
    loss = state.whole.series["loss"]
    assert len(loss.count) <= BUCKETS
    assert state.whole.nbytes() < 64 * 1024  # flat: the same bound holds at 10^7 steps (benchmarks/whole_run.py)
    assert len(state.steps) == STEP_CAPACITY  # the full-resolution window is as before

    steps, means, lows, highs = loss.points()
    # Each bucket's mean is exactly the mean of its steps' losses (computed here by hand); the spike and the
    # NaN step are not averaged away.
    first_bucket = range(0, loss.width)
    assert means[0] == pytest.approx(sum(descending_loss(s) for s in first_bucket) / loss.width, rel=1e-9)
    assert means[0] > 3.4 and means[-1] < 0.6
    spike = next(i for i, high in enumerate(highs) if high is not None and high > 40)
    assert steps[spike] // loss.width == 777_777 // loss.width
    assert loss.nonfinite_steps() and loss.nonfinite_steps()[0] // loss.width == NAN_STEP // loss.width
    assert sum(loss.count) == MILLION - 1 and sum(loss.bad) == 1


@pytest.mark.xdist_group("million_step_store")  # one worker builds the module's million_step_store
async def test_the_overview_zooms_from_recent_steps_to_the_whole_run(million_step_store):
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.series_chart import SeriesChart

    app = OptwatchApp.for_store(million_step_store)
    async with app.run_test(size=(140, 45)) as pilot:
        chart = app.query_one("#loss-chart", SeriesChart)
        await wait_for_ui(pilot, lambda: chart.series)
        # Recent: the newest thousand steps, one point per step (thinned to the chart's columns).
        assert chart.title == "Loss · last 1,000 steps"
        assert min(chart.series[0][1]) >= MILLION - 1000
        await pilot.press("z")
        await wait_for_ui(pilot, lambda: chart.title == f"Loss · last {STEP_CAPACITY:,} steps")
        assert min(chart.series[0][1]) == MILLION - STEP_CAPACITY
        await pilot.press("z")
        await wait_for_ui(pilot, lambda: "whole run" in chart.title)
        assert chart.title == "Loss · whole run (steps 0–999,999)"
        mean = dict((label, (xs, ys)) for label, xs, ys, _ in chart.series)["mean"]
        assert mean[0][0] < 2048 and mean[1][0] > 3.4  # step 0's region, and the descent from it
        assert mean[1][-1] < 0.6
        [nan_marker] = chart.alert_markers  # the NaN step, marked where its bucket is
        assert nan_marker // 2048 == NAN_STEP // 2048
        text = "\n".join(screen_lines(app).values())
        assert "whole run (steps 0–999,999)" in text
        assert "1M" in text and "200k" in text  # whole steps on the axis, never 999999.0
        await pilot.press("z")
        await wait_for_ui(pilot, lambda: chart.title == "Loss · last 1,000 steps")  # back to the live edge


@pytest.mark.xdist_group("million_step_store")  # one worker builds the module's million_step_store
async def test_a_replay_shows_only_the_keys_that_work_there(million_step_store):
    from optwatch.app.app import OptwatchApp

    app = OptwatchApp.for_store(million_step_store)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for_ui(pilot, lambda: "Quit" in screen_lines(app).get(39, ""))
        footer = screen_lines(app)[39]
        assert "Zoom" in footer and "Quit" in footer
        for steering in ("AMP", "cudnn", "Pause", "Command", "Profile"):
            assert steering not in footer


def test_a_viewer_that_attaches_late_sees_the_run_from_step_0(tmp_path):
    """The job keeps its newest 4,000 steps per rank at full resolution; a viewer attaching after 4,500 steps
    gets the rest as the whole-run history, and its first bucket is the mean of the losses the script printed."""
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--no-record", "--control", "pause@4500",
         str(SCRIPTS / "short.py"), "--steps", "4600"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs, timeout_s=60)
        wait_for(lambda: "paused by" in optwatch("ls").stdout, timeout_s=120)
        record = tmp_path / "late.jsonl"
        attached = optwatch("attach", listed["run_id"], "--headless", "--record", str(record), "--duration", "3")
        assert attached.returncode == 0, attached.stderr
        records = read_jsonl(record)
        assert min(s["step"] for s in steps_of(records)) > 0, "the full-resolution window starts after step 0"
        [history] = [r for r in records if r["kind"] == "history" and r["rank"] == 0]
        loss = history["series"]["loss"]
        assert history["last_step"] >= 4499 and loss["last_step"][0] == loss["width"] - 1
        optwatch("ctl", listed["run_id"], "stop")
        out, _ = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    truth = [json.loads(line.split("TRUTH ", 1)[1]) for line in out.splitlines() if line.startswith("TRUTH ")]
    first = [t["loss"] for t in truth[: loss["width"]]]
    assert loss["sum"][0] / loss["count"][0] == pytest.approx(sum(first) / len(first), rel=1e-6)


def test_a_run_resumed_far_into_its_steps_is_drawn_as_finely_as_one_from_step_0():
    """Buckets start at a series' first step: 300 steps resumed at step 100,000 are 300 points from 100,000,
    as 300 steps from 0 are (buckets from step 0 made them 256 steps wide: two points), in the hub's history
    record and in a viewer that adopts it alike. A system sample taken before the first step (a resumed run's
    still says step 0) does not stretch its series back to 0."""
    from optwatch.runhistory import RunHistory

    for first in (0, 100_000):
        hub = RunHistory()
        hub.add_system({"kind": "system", "step": 0, "cpu_percent": 50.0})
        for n in range(first, first + 300):
            hub.add_step({"kind": "step", "step": n, "loss": 1.0 / (n - first + 1)})
            hub.add_system({"kind": "system", "step": n, "cpu_percent": 50.0})
        viewer = RunHistory()
        assert viewer.adopt(hub.to_record())
        for history in (hub, viewer):
            steps, means, _, _ = history.series["loss"].points()
            assert steps == list(range(first, first + 300)) and means[0] == 1.0
            assert history.series["cpu_percent"].points()[0] == list(range(first, first + 300))
            assert history.series["loss"].first_step() == first


def test_history_records_that_lie_are_left_out():
    whole = RunHistory()
    for step in range(100, 200):
        whole.add_step({"step": step, "loss": 1.0})
    good = RunHistory()
    for step in range(0, 200):
        good.add_step({"step": step, "loss": 2.0})
    lying = good.to_record()
    lying["series"]["loss"]["count"] = lying["series"]["loss"]["count"][:-1]  # lists that disagree
    assert not whole.adopt(lying)
    assert whole.adopt(good.to_record())
    assert whole.series["loss"].points()[1][0] == 2.0 and whole.first_step == 0
