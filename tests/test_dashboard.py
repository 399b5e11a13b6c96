"""The dashboard, driven by Textual's pilot and fed by a real training process."""

from __future__ import annotations

import asyncio
import os
import re
import signal

import psutil
import pytest

from conftest import (
    SCRIPTS,
    live_jobs,
    optwatch_share,
    screen_lines,
    start_training,
    steps_for_now,
    wait_for,
    wait_for_ui,
)
from optwatch.app.app import OptwatchApp
from optwatch.app.widgets.confirm_quit import ConfirmQuit
from optwatch.app.widgets.hotspots_view import HotspotsView
from optwatch.app.widgets.log_pane import LogPane
from optwatch.app.widgets.run_header import RunHeader
from optwatch.app.widgets.series_chart import SeriesChart
from optwatch.app.widgets.stats_panel import StatsPanel
from optwatch.session import ViewerSession
from optwatch.store import Store


@pytest.fixture
def training():
    process = start_training(str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.05")
    yield process
    process.stop(grace_s=2)
    process.cleanup()


async def test_widgets_show_what_the_run_sent_and_q_stops_it(training):
    app = OptwatchApp(ViewerSession.for_process(training))
    async with app.run_test(size=(80, 24)) as pilot:
        store = app.store
        await wait_for_ui(pilot, lambda: store.primary is not None and len(store.primary.steps) >= 8)
        await wait_for_ui(pilot, lambda: app.query_one(StatsPanel).rows.get("Step") not in (None, "waiting…"))
        await wait_for_ui(pilot, lambda: app.query_one("#overview-log", LogPane).lines)
        with store.lock:  # freeze what the store holds, then render it
            app.render_views(force_charts=True)
            last = store.primary.last_step
            rows = dict(app.query_one(StatsPanel).rows)
            steps = [r["step"] for r in store.primary.steps]
            losses = [r["loss"] for r in store.primary.steps]
            own_share = optwatch_share(steps_for_now(list(store.primary.steps)))
        assert rows["Step"] == str(last["step"])
        assert own_share is not None and 0 < own_share < 0.5 and rows["optwatch"].endswith(f", {100 * own_share:.1f}%")
        assert rows["Loss"].startswith(format(last["loss"], ".4g"))
        assert rows["LR"] == "0.05" and rows["Precision"] == "float32"  # plain_train.py's own float32 model
        assert rows["Grad norm"] == format(last["grad_norm"], ".3g")
        chart = app.query_one("#loss-chart", SeriesChart)
        label, xs, ys, _ = chart.series[0]
        assert label == "loss" and xs == steps and ys == losses
        assert app.query_one(RunHeader).status == "running"
        assert "plain_train.py" in app.query_one(RunHeader).run_name
        # The script's own output reaches the log pane.
        log_text = "\n".join(strip.text for strip in app.query_one("#overview-log", LogPane).lines)
        assert "step 0 loss" in log_text

        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")  # going back leaves the run alone
        assert not isinstance(app.screen, ConfirmQuit) and training.poll() is None
        # Textual's own ways out (ctrl+q, the palette's "Quit") ask too: they stopped the run at once.
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        await pilot.press("ctrl+p", *"Quit")

        def first_offered() -> str:
            offered = app.screen.query("CommandList")
            if not offered or not offered.first().option_count:
                return ""
            return str(offered.first().get_option_at_index(0).prompt)

        await wait_for_ui(pilot, lambda: first_offered().startswith("Quit"))
        await pilot.press("enter")
        await wait_for_ui(pilot, lambda: isinstance(app.screen, ConfirmQuit))
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmQuit) and training.poll() is None
        await pilot.press("q", "y")
        await wait_for_ui(pilot, lambda: training.poll() is not None, timeout_s=20)
    assert training.poll() is not None
    assert not psutil.pid_exists(training.pid) or psutil.Process(training.pid).status() == psutil.STATUS_ZOMBIE


async def test_detach_leaves_the_run_going(training):
    app = OptwatchApp(ViewerSession.for_process(training))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_ui(pilot, lambda: app.store.primary is not None and app.store.primary.steps)
        await pilot.press("q", "d")
        await pilot.pause(0.2)
    assert app.detached and training.poll() is None
    await asyncio.sleep(0.5)
    assert training.poll() is None


async def test_replay_of_records_fills_the_views():
    store = Store()
    records = [
        {"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "run_id": "r1", "script": "s.py", "device": "cpu"},
        *[
            {
                "v": 1,
                "kind": "step",
                "rank": 0,
                "seq": i + 1,
                "time": float(i),
                "step": i,
                "loss": 2.0 / (i + 1),
                "grad_norm": 1.0,
                "lr": 0.1,
                "step_time_s": 0.2,
                "samples": 128,
                "samples_per_s": 640.0,
                "optwatch_s": 0.004 if i % 2 else 0.002,
            }
            for i in range(30)
        ],
    ]
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        assert app.query_one(StatsPanel).rows["Step"] == "29"
        assert app.query_one(StatsPanel).rows["Throughput"] == "640 samples/s"
        assert app.query_one(StatsPanel).rows["optwatch"] == "3.0 ms/step, 1.5%"  # median; share of the time
        assert app.query_one(RunHeader).status == "replay"
        await pilot.press("l")
        assert app.query_one("TabbedContent").active == "log"
        await pilot.press("q")
    assert app.return_code in (0, None)


async def test_the_figures_on_screen_follow_a_live_run():
    def steps(first: int, count: int, loss: float) -> list[dict]:
        return [
            {"v": 1, "kind": "step", "rank": 0, "seq": i + 1, "time": float(i), "step": i, "loss": loss,
             "grad_norm": 1.0, "lr": 0.1, "step_time_s": 0.2, "samples": 128, "samples_per_s": 640.0}
            for i in range(first, first + count)
        ]  # fmt: skip

    def figure(lines: dict[int, str], label: str) -> str:
        return next(" ".join(text.split()) for text in lines.values() if text.lstrip().startswith(label))

    store = Store()
    store.ingest(steps(0, 30, loss=2.5))
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        lines = screen_lines(app)
        assert figure(lines, "Step").startswith("Step 29 ") and figure(lines, "Loss").startswith("Loss 2.5 ema")
        # Only the figures that changed are repainted: what did not change must stay on screen.
        store.ingest(steps(30, 5, loss=1.25))
        app.render_views()
        await pilot.pause(0.3)
        lines = screen_lines(app)
        assert figure(lines, "Step").startswith("Step 34 ") and figure(lines, "Loss").startswith("Loss 1.25 ema")
        assert figure(lines, "Throughput").startswith("Throughput 640 samples/s")
        assert figure(lines, "LR").startswith("LR 0.1 ")


async def test_feed_messages_arriving_while_the_app_tears_down_do_not_crash_it():
    """The feed worker posts from its own thread: RunExited can land after the widgets are gone (seen in CI)."""
    from optwatch.app.messages import FeedUpdated, RunExited

    store = Store()
    store.ingest([{"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "run_id": "r1", "device": "cpu"}])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.screen.remove_children()
        app.post_message(FeedUpdated())
        app.post_message(RunExited(0))
        await pilot.pause(0.2)
        assert app.exit_code == 0
    assert app.return_code in (0, None)


async def test_findings_bar_shows_the_latest_verdict_and_alerts():
    store = Store()
    store.ingest(
        [
            {"v": 1, "kind": "step", "rank": 0, "seq": 0, "time": 0.0, "step": 0, "loss": 1.0},
            {
                "v": 1,
                "kind": "alert",
                "rank": 0,
                "seq": 1,
                "time": 0.0,
                "step": 7,
                "type": "exploding",
                "message": "grad norm 40x its median",
            },
            {
                "v": 1,
                "kind": "verdict",
                "rank": 0,
                "seq": 2,
                "time": 0.0,
                "bottleneck": "input",
                "message": "62% of each step waits for data",
            },
        ]
    )
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        lines = app.query_one("#findings").lines
    assert lines == ["input-bound: 62% of each step waits for data", "exploding @ step 7: grad norm 40x its median"]


def log_lines(first: int, count: int) -> list[dict]:
    return [
        {"v": 1, "kind": "log", "rank": 0, "seq": i, "time": 0.0, "stream": "stdout", "line": f"line {i}"}
        for i in range(first, first + count)
    ]


def pane_text(pane: LogPane) -> list[str]:
    return [strip.text.rstrip() for strip in pane.lines]


async def test_a_hidden_log_pane_holds_no_lines_back_and_shows_the_newest_when_opened():
    """A RichLog that has never been on screen defers every write until it knows its size: the Log tab,
    hidden from the start of a long run, once held every line the script printed (issue 19)."""
    store = Store()
    store.ingest([{"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "run_id": "r1", "device": "cpu"}])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        full = app.query_one("#full-log", LogPane)
        overview = app.query_one("#overview-log", LogPane)
        for first in range(0, 10_000, 1000):  # ten redraws' worth, each within the store's 2000 lines
            store.ingest(log_lines(first, 1000))
            app.render_views()
            await pilot.pause()
        assert len(full.lines) + len(full._deferred_renders) <= full.max_lines
        assert pane_text(overview)[-1] == "line 9999" and len(overview.lines) == overview.max_lines

        await pilot.press("l")
        await wait_for_ui(pilot, lambda: full.lines and pane_text(full)[-1] == "line 9999")
        assert pane_text(full) == [f"line {i}" for i in range(8000, 10_000)]

        # The Overview, hidden now, takes nothing while the Log tab follows; back on screen, it catches up.
        store.ingest(log_lines(10_000, 500))
        app.render_views()
        await pilot.pause()
        assert pane_text(full)[-1] == "line 10499"
        assert pane_text(overview)[-1] == "line 9999" and not overview._deferred_renders
        await pilot.click("#--content-tab-overview")  # a click: no redraw of the app's follows it
        await wait_for_ui(pilot, lambda: pane_text(overview)[-1] == "line 10499")
        assert pane_text(overview) == [f"line {i}" for i in range(10_300, 10_500)]


@pytest.fixture
def steerable():
    process = start_training(str(SCRIPTS / "control_probe.py"), "--steps", "100000", "--sleep", "0.03")
    yield process
    process.stop(grace_s=2)
    process.cleanup()


async def test_a_command_typed_in_the_dashboard_reaches_the_run_and_is_acknowledged(steerable):
    from optwatch.app.widgets.command_input import CommandInput
    from optwatch.app.widgets.controls_panel import ControlsPanel
    from optwatch.app.widgets.findings_bar import FindingsBar

    app = OptwatchApp(ViewerSession.for_process(steerable))
    async with app.run_test(size=(100, 30)) as pilot:
        store = app.store
        await wait_for_ui(pilot, lambda: store.primary is not None and len(store.primary.steps) >= 5)

        await pilot.press("colon")
        assert isinstance(app.screen, CommandInput)
        await pilot.press(*"lr=banana")
        await pilot.press("enter")  # refused by the validator: nothing is sent, the reason is shown
        assert isinstance(app.screen, CommandInput)
        assert "must be a number" in str(app.screen.query_one("#command-error").render())
        await pilot.press(*["backspace"] * 6, *"0.002", "enter")
        assert not isinstance(app.screen, CommandInput)

        def acknowledged():
            return any(e.get("command") == "lr=0.002" for e in store.rare.get("event", ()))

        await wait_for_ui(pilot, acknowledged)
        app.render_views(force_charts=True)
        [event] = [e for e in store.rare["event"] if e["command"] == "lr=0.002"]
        assert event["status"] == "accepted" and event["source"] == "dashboard"
        step = event["effective_step"]
        assert any(f"lr=0.002 in effect from step {step}" in line for line in app.query_one(FindingsBar).lines)
        assert step in app.query_one("#loss-chart", SeriesChart).markers

        # The training process itself saw the new learning rate from that step on.
        await wait_for_ui(pilot, lambda: any(f"step={step} lr=0.002" in r["line"] for r in store.logs))
        assert any(f"step={step - 1} lr=0.01" in r["line"] for r in store.logs)

        await pilot.press("a")  # AMP on, through the same path
        await wait_for_ui(pilot, lambda: any(e.get("command") == "amp=on" for e in store.rare.get("event", ())))
        await wait_for_ui(pilot, lambda: store.primary.last_step.get("amp") is True)

        await pilot.press("c")
        await wait_for_ui(pilot, lambda: len(store.primary.steps) > event["effective_step"] + 5)
        app.render_views()
        assert set(app.query_one(ControlsPanel).impact_rows) >= {"Step time p50", "Loss mean"}
        await pilot.press("q", "y")
        await wait_for_ui(pilot, lambda: steerable.poll() is not None, timeout_s=20)


async def test_a_stop_typed_in_the_dashboard_ends_the_run_stopped_not_crashed(steerable):
    """`:stop` ends the run with 130 (the stop's KeyboardInterrupt): the header said "crashed (exit 130)"."""
    from optwatch.app.widgets.command_input import CommandInput

    app = OptwatchApp(ViewerSession.for_process(steerable))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for_ui(pilot, lambda: app.store.primary is not None and len(app.store.primary.steps) >= 5)
        await pilot.press("colon")
        assert isinstance(app.screen, CommandInput)
        await pilot.press(*"stop", "enter")
        await wait_for_ui(pilot, lambda: steerable.poll() is not None, timeout_s=30)
        await wait_for_ui(pilot, lambda: app.exit_code is not None, timeout_s=15)
        assert (app.exit_code, app.query_one(RunHeader).status) == (130, "stopped (exit 130)")


def step_record(step: int, lr: float) -> dict:
    return {"v": 1, "kind": "step", "rank": 0, "seq": step, "time": float(step), "step": step, "loss": 1.0, "lr": lr}


@pytest.mark.parametrize(
    ("typed", "error"),
    [
        ("profile=²", "profile=N takes a number of steps from 1 to 50, got '²'"),  # crashed the app: int('²')
        ("lr=[/x]", "lr must be a number written like 0.001 or 3e-4, got '[/x]'"),  # shown as text, not markup
        ("amp=on!", "'!' confirms a big learning-rate change"),
    ],
)
async def test_nothing_typed_as_a_command_takes_the_dashboard_down(typed, error):
    from optwatch.app.widgets.command_input import CommandInput

    store = Store()
    store.ingest([step_record(0, lr=0.001)])
    app = OptwatchApp(store=store)  # a live dashboard's input; a replay has none
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("colon", *typed, "enter")
        await pilot.pause(0.1)
        assert app.is_running and app._exception is None
        assert isinstance(app.screen, CommandInput)
        assert error in str(app.screen.query_one("#command-error").render())
        await pilot.press("escape")
        assert not isinstance(app.screen, CommandInput)
    assert app.return_code in (0, None)


async def test_the_command_box_says_a_big_change_as_it_is_typed_and_lists_every_form():
    """controls.md promised the big change said as you type: it showed only on Enter. And the help line's
    "lr[G]=V" was read as markup, showing "lr=V" twice."""
    from optwatch.app.widgets.command_input import CommandInput

    store = Store()
    store.ingest([step_record(0, lr=0.01)])
    app = OptwatchApp(store=store)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("colon", *"lr=5")
        await pilot.pause(0.1)
        assert isinstance(app.screen, CommandInput)
        assert (
            str(app.screen.query_one("#command-error").render())
            == "lr=5 is 500x the current 0.01: send lr=5! to confirm"
        )
        await pilot.press("backspace", *"0.02")
        await pilot.pause(0.1)
        assert str(app.screen.query_one("#command-error").render()) == ""
        assert "lr=V  lr*=F  lr[G]=V  amp=on|off" in str(app.screen.query_one("#command-help").render())


async def test_a_parser_bug_shows_as_an_error_line(monkeypatch):
    from optwatch import controls
    from optwatch.app.widgets.command_input import CommandInput

    def broken(text):
        raise IndexError("a bug")

    monkeypatch.setattr(controls, "parse", broken)
    app = OptwatchApp(store=Store())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("colon", *"lr=0.1", "enter")
        assert app.is_running and isinstance(app.screen, CommandInput)
        assert "optwatch could not read this command (IndexError: a bug)" in str(
            app.screen.query_one("#command-error").render()
        )
    assert app.return_code in (0, None)


async def test_a_big_lr_change_typed_in_the_dashboard_is_sent_on_a_second_enter(steerable):
    from optwatch.app.widgets.command_input import CommandInput

    app = OptwatchApp(ViewerSession.for_process(steerable))
    async with app.run_test(size=(100, 30)) as pilot:
        store = app.store
        await wait_for_ui(
            pilot, lambda: store.primary is not None and (store.primary.last_step or {}).get("lr") == 0.01
        )

        await pilot.press("colon", *"lr=5", "enter")  # 500x the script's 0.01
        assert isinstance(app.screen, CommandInput)
        reason = "lr=5 is 500x the current 0.01: send lr=5! to confirm, or press Enter again"
        assert str(app.screen.query_one("#command-error").render()) == reason
        await pilot.press("backspace", "6", "enter")  # another value is judged afresh
        assert isinstance(app.screen, CommandInput)
        assert "lr=6 is 600x" in str(app.screen.query_one("#command-error").render())
        await pilot.pause(0.5)
        assert not any(e.get("command", "").startswith("lr=") for e in store.rare.get("event", ()))

        await pilot.press("enter")
        assert not isinstance(app.screen, CommandInput)

        def accepted():
            return any(e.get("command") == "lr=6!" and e["status"] == "accepted" for e in store.rare.get("event", ()))

        await wait_for_ui(pilot, accepted)
        # The training process itself saw the new learning rate.
        await wait_for_ui(pilot, lambda: any("lr=6.0 " in r["line"] for r in store.logs))
        await pilot.press("q", "y")
        await wait_for_ui(pilot, lambda: steerable.poll() is not None, timeout_s=20)


@pytest.mark.parametrize("when", ["mounting", "drawing a step"])
def test_when_the_dashboard_fails_the_run_goes_on(monkeypatch, capsys, when):
    """A bug in the dashboard ends the dashboard, not the training: the run is left going, attachable.
    (A failure while mounting also left the feed worker running, and `optwatch run` hung.)"""
    from textual.app import App

    from optwatch import cli

    draw = OptwatchApp.render_views

    def broken_render(self, force_charts=False):
        if when == "mounting" or (self.store.primary is not None and self.store.primary.last_step is not None):
            raise RuntimeError(f"a bug while {when}")
        draw(self, force_charts)

    monkeypatch.setattr(OptwatchApp, "render_views", broken_render)
    monkeypatch.setattr(OptwatchApp, "run", lambda self: App.run(self, headless=True, size=(80, 24)))
    monkeypatch.setattr(cli, "_headless_without_a_terminal", lambda args: None)  # (the app's own is headless)
    code = cli.main(["run", str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.05"])
    stderr = capsys.readouterr().err
    said = re.search(
        r"^optwatch: the dashboard failed; the run (\S+) goes on \(pid (\d+)\): optwatch attach \1$", stderr, re.M
    )
    assert code == 1 and said and f"a bug while {when}" in stderr, stderr
    run_id, pid = said[1], int(said[2])
    try:
        wait_for(lambda: [job["run_id"] for job in live_jobs()] == [run_id])
        assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    finally:
        os.killpg(pid, signal.SIGKILL)
        psutil.Process(pid).wait(10)


async def test_space_pauses_the_run_and_the_footer_then_offers_resume(training):
    """The footer said "space Pause" while the run was paused, where space resumes it."""
    from textual.widgets import Footer

    def footer_keys() -> str:
        return " ".join(str(key.render()) for key in app.query_one(Footer).query("FooterKey"))

    app = OptwatchApp(ViewerSession.for_process(training))
    async with app.run_test(size=(120, 30)) as pilot:
        store = app.store
        await wait_for_ui(pilot, lambda: store.primary is not None and len(store.primary.steps) >= 3)
        assert "Pause" in footer_keys() and "Resume" not in footer_keys()

        def answered(command: str):
            return lambda: any(e.get("command") == command for e in store.rare.get("event", ()))

        await pilot.press("space")
        await wait_for_ui(pilot, answered("pause"))
        await wait_for_ui(pilot, lambda: "Resume" in footer_keys())
        assert "Pause" not in footer_keys() and app.query_one(RunHeader).status.startswith("paused by dashboard")
        await pilot.press("space")
        await wait_for_ui(pilot, answered("resume"))
        await wait_for_ui(pilot, lambda: "Pause" in footer_keys() and "Resume" not in footer_keys())
        steps = len(store.primary.steps)
        await wait_for_ui(pilot, lambda: len(store.primary.steps) > steps + 2)  # training again


async def test_a_training_killed_by_sigkill_is_said_so_with_the_likely_sender(training):
    """The OOM killer's SIGKILL read "crashed (exit 137)", as if the script had failed."""
    app = OptwatchApp(ViewerSession.for_process(training))
    async with app.run_test(size=(120, 30)) as pilot:
        store = app.store
        await wait_for_ui(pilot, lambda: store.primary is not None and len(store.primary.steps) >= 3)
        os.kill(training.pid, signal.SIGKILL)
        await wait_for_ui(pilot, lambda: app.exit_code is not None)
        await pilot.pause(0.1)
        assert app.query_one(RunHeader).status == "killed by SIGKILL (exit 137)"
        assert any("OOM killer" in str(n.message) for n in app._notifications), list(app._notifications)
        # Nothing left to steer: the footer offers no steering keys, and the palette's commands are not sent.
        from textual.widgets import Footer

        keys = " ".join(str(key.render()) for key in app.query_one(Footer).query("FooterKey"))
        assert "Quit" in keys and not {"Pause", "AMP", "Command", "Profile"} & set(keys.split()), keys
        app.send_command("pause")
        await pilot.pause(0.1)
        assert any("the run has ended: pause was not sent" in str(n.message) for n in app._notifications)
        # The keys themselves say why they do nothing (they did nothing at all), and no tab offers p.
        await pilot.press("p", "space")
        await pilot.pause(0.1)
        said = [str(n.message) for n in app._notifications]
        assert "the run has ended: nothing left to profile" in said, said
        assert "the run has ended: it can no longer be steered" in said, said
        await pilot.press("h")
        await pilot.pause(0.2)
        assert app.query_one(HotspotsView).state_text == "no profile in this run"


async def test_in_a_replay_p_says_it_cannot_profile_and_nothing_offers_it():
    """docs/profiler.md: in a replay ``p`` "only says that a replay cannot be profiled". It said nothing (the
    footer's check had turned the key off), and the Hot spots tab still ended its line with "p profiles again"."""
    store = Store()
    store.ingest([{"v": 1, "kind": "step", "rank": 0, "seq": 0, "time": 0.0, "step": 20, "loss": 1.0}])
    window = {"v": 1, "kind": "hotspots", "rank": 0, "seq": 1, "time": 1.0, "status": "done", "steps": [10, 14]}
    op = {"name": "aten::addmm", "self_cpu_s": 0.01, "calls": 5, "pct": 100.0, "module": "fc", "flags": []}
    store.ingest([{**window, "wall_s": 0.5, "sort_by": "self_cpu_s", "ops": [op], "digest": "addmm 100%"}])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("h")
        await pilot.pause(0.2)
        view = app.query_one(HotspotsView)
        assert view.state_text == "steps 10-14 · 100.0 ms/step · sorted by self CPU time (t)"
        await pilot.press("p", "a", "colon")
        await pilot.pause(0.1)
        said = [str(n.message) for n in app._notifications]
        assert said == ["a replay cannot be profiled", "a replay cannot be steered", "a replay cannot be steered"]
        assert view.rows[0][0] == "aten::addmm" and app.screen is app.screen_stack[0]  # (no command prompt)


async def test_a_run_that_blows_up_after_an_lr_command_says_so_first_with_the_way_back(tmp_path):
    """`lr=20!` on a run at 0.05: the findings bar led with its compute-bound verdict, the exploding alert
    below it and cut off, and nothing named the change or the way back. The alert comes first, names the
    command, and the rate before it (the script's own --lr)."""
    from conftest import optwatch, read_jsonl
    from optwatch.app.widgets.findings_bar import FindingsBar

    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "lr=20!@30", str(SCRIPTS / "plain_train.py"),
        "--steps", "60", "--lr", "0.05",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_jsonl(record)
    [first] = [a for a in records if a["kind"] == "alert"][:1]
    assert first["type"] == "exploding" and first["step"] in (30, 31, 32), first
    after = first["step"] - 30
    assert first["message"].endswith(
        f"; {after} step{'' if after == 1 else 's'} after lr=20! at step 30 (`lr=0.05` goes back to the rate before it)"
    ), first["message"]
    assert first["suggestions"][0].startswith("lr=20! at step 30 came just before: `lr=0.05`")
    store = Store()
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        bar = app.query_one(FindingsBar)
        await wait_for_ui(pilot, lambda: bar.lines)
        # The newest error first (the NaN a few steps later, blamed too), then the verdict, with no speed-up
        # tip under it (a faster way to NaN is no advice), then the rest.
        assert "after lr=20! at step 30" in bar.lines[0] and bar.lines[0].startswith("nonfinite"), bar.lines
        assert "-bound" in bar.lines[1] or "balanced" in bar.lines[1], bar.lines
        assert not any(line.startswith("try: ") for line in bar.lines), bar.lines


async def test_at_80x24_the_findings_take_a_line_each_and_leave_the_overview_its_cost_row():
    """Wrapped at 80 columns, a verdict and its suggestion took four lines and pushed the Overview's last
    rows (what optwatch costs the run) off the screen."""
    steps = [
        {
            "v": 1, "kind": "step", "rank": 0, "seq": i, "time": 0.01 * i, "step": i, "loss": 2.0 - 0.01 * i,
            "lr": 0.05, "grad_norm": 1.5, "precision": "float32", "step_time_s": 0.01, "data_wait_s": 0.0001,
            "samples": 32, "optwatch_s": 0.0001, "optwatch_bg_s": 0.0, "detailed": True, "detail_every": 1,
        }
        for i in range(40)
    ]  # fmt: skip
    verdict = {
        "v": 1, "kind": "verdict", "rank": 0, "seq": 40, "time": 0.4, "step": 39, "bottleneck": "host",
        "message": "the machine's 2 cores are busy (100% in all) and this process gets 36% of them: "
        "its threads wait for cores other programs take",
        "suggestions": ["Fewer threads wait less for cores others take: torch.set_num_threads(1) (or stop the "
                        "other programs)"],
    }  # fmt: skip
    store = Store()
    store.ingest([*steps, verdict])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        findings = app.query_one("#findings")
        height = findings.size.height
        screen = screen_lines(app)
    assert findings.lines[0].startswith("host-bound: the machine's 2 cores") and findings.lines[1].startswith("try:")
    assert height == 2  # one line each, cut
    assert any("host-bound: the machine's" in line and line.rstrip().endswith("…") for line in screen.values())
    assert any(line.lstrip().startswith("optwatch ") and "/step" in line for line in screen.values()), screen


async def test_the_findings_bar_gives_the_verdict_of_the_rank_the_overview_shows():
    """Two ranks: rank 1's newer "input-bound" stood in the findings bar over rank 0's figures, while the
    System tab gave rank 0's verdict. Both give rank 0's now."""
    base = {"v": 1, "time": 0.0}
    store = Store()
    store.ingest(
        [
            {**base, "kind": "step", "rank": 0, "seq": 0, "step": 0, "loss": 1.0},
            {**base, "kind": "step", "rank": 1, "seq": 0, "step": 0, "loss": 1.1},
            {**base, "kind": "verdict", "rank": 0, "seq": 1, "bottleneck": "host", "window": [2, 40],
             "message": "the steps wait (for the other ranks at the gradients' all-reduce)", "suggestions": []},
            {**base, "kind": "verdict", "rank": 1, "seq": 1, "bottleneck": "input", "window": [2, 40],
             "message": "81% of step time waits for the next batch", "suggestions": []},
        ]
    )  # fmt: skip
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        lines = app.query_one("#findings").lines
        await pilot.press("s")
        await pilot.pause(0.2)
        system = " ".join(screen_lines(app).values())
    assert lines == ["host-bound: the steps wait (for the other ranks at the gradients' all-reduce)"], lines
    assert "the steps wait" in system and "waits for the next batch" not in system, system
