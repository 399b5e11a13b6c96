"""Each figure about a run has one definition (optwatch.summary), and every view shows that one."""

from __future__ import annotations

import pytest

from conftest import screen_lines, wait_for_ui
from optwatch.app.app import OptwatchApp
from optwatch.app.widgets.controls_panel import ControlsPanel
from optwatch.app.widgets.stats_panel import StatsPanel
from optwatch.headless import summary_line
from optwatch.store import Store


def step(i: int, step_time: float, *, samples: int = 128, own: float = 0.001, bg: float = 0.0005, **extra) -> dict:
    return {
        "v": 1, "kind": "step", "rank": 0, "seq": i + 1, "time": float(i), "step": i, "loss": 1.0 / (i + 1),
        "grad_norm": 2.0, "lr": 0.01, "step_time_s": step_time, "samples": samples, "data_wait_s": 0.1 * step_time,
        "samples_per_s": samples / step_time, "optwatch_s": own, "optwatch_bg_s": bg, "detail_every": 1, **extra,
    }  # fmt: skip


def test_slower_steps_of_a_fixed_batch_are_fewer_samples_a_second_before_and_after_a_change():
    """The Controls tab once showed step time +40% beside samples/s +68% for a fixed batch of 128 (medians of
    different things, evaluation batches counted): both now come from one window, and agree."""
    from optwatch.diagnose.impact import compare

    steps = [step(i, 1.29 if i < 50 else 1.80) for i in range(100)]
    before, after = compare(steps, 50)
    assert (before.step_time_s, after.step_time_s) == (1.29, 1.80)
    assert after.samples_per_s / before.samples_per_s == pytest.approx(1.29 / 1.80)
    assert before.samples_per_s == pytest.approx(128 / 1.29)


async def test_the_median_steps_throughput_agrees_with_its_step_time_and_the_whole_run_is_said_apart():
    """An evaluation every 10 steps (2 s, in the step after it): the line said "210 ms/step | 480 samples/s"
    for a batch of 128 (samples over the window's time beside the median step), which agreed with neither
    the step time nor the run's own end-of-run figure. Now the step's rate goes with the step time, and the
    final line gives the whole run's (samples over all its time, evaluations included) beside it."""
    store = Store()
    records = [step(i, 2.0 + 0.2 if i % 10 == 5 else 0.2) for i in range(100)]
    store.ingest(records)
    summary = store.summary()
    assert summary.recent.step_time_s == pytest.approx(0.2)
    assert summary.recent.samples_per_s == pytest.approx(128 / 0.2)
    assert summary.run_samples_per_s == pytest.approx(100 * 128 / (90 * 0.2 + 10 * 2.2))  # by hand: 320
    line = summary_line(store, final=True)
    assert "| 640 samples/s (320 over the whole run) |" in line
    assert "over the whole run" not in summary_line(store)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        rows = app.query_one(StatsPanel).rows
    assert (rows["Throughput"], rows["  whole run"]) == ("640 samples/s", "320 samples/s")


def test_optwatchs_cost_now_at_the_start_and_over_the_run_come_from_its_records():
    """Every check runs on the first 100 steps (dearer), then it is spaced: the three figures differ."""
    store = Store()
    records = [step(i, 0.01, own=0.002 if i < 100 else 0.0001, bg=0.0) for i in range(300)]
    store.ingest(records)
    cost = store.summary().cost
    assert cost.start == pytest.approx(0.2)
    assert cost.run == pytest.approx((100 * 0.002 + 200 * 0.0001) / 3.0)
    assert cost.recent == pytest.approx(0.01)


async def test_the_headless_line_and_the_overview_show_the_same_figures():
    store = Store()
    store.ingest([step(i, 0.2 + 0.01 * (i % 3)) for i in range(150)])
    line = summary_line(store)
    summary = store.summary()
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        rows = app.query_one(StatsPanel).rows
    assert " 210 ms/step " in line and rows["Step time"] == "210 ms p50"
    assert f"{summary.recent.samples_per_s:.0f} samples/s" in line and rows["Throughput"].startswith(
        f"{summary.recent.samples_per_s:.0f} samples/s"
    )
    share = 100 * summary.cost.recent
    assert f"optwatch {share:.1f}%" in line and rows["optwatch"].endswith(f"{share:.1f}%")
    assert f"first steps {100 * summary.cost.start:.1f}%" in line and rows["  first/run"].startswith(
        f"{100 * summary.cost.start:.1f}%"
    )


async def test_a_resumed_run_counts_its_first_steps_from_its_own_first_step():
    """A process resumed at step 5000 (its hello says so): optwatch's cost over "its first steps" is over
    steps 5000-5099, and the headless line and the Overview show the first and whole-run figures only once
    the process is as far into its run as a run from step 0 must be (they showed from its first step)."""
    hello = {"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "pid": 1, "world_size": 1, "first_step": 5000}
    early, late = Store(), Store()
    early.ingest([hello, *(step(5000 + i, 0.01, own=0.002, bg=0.0) for i in range(15))])
    late.ingest([hello, *(step(5000 + i, 0.01, own=0.002 if i < 100 else 0.0001, bg=0.0) for i in range(300))])
    assert late.summary().cost.start == pytest.approx(0.2)  # steps 5000-5099 only
    assert "first steps" not in summary_line(early) and "first steps 20.0%, run 7.3%" in summary_line(late)
    for store, shown in ((early, None), (late, "20.0% / 7.3%")):
        app = OptwatchApp.for_store(store)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause(0.2)
            assert app.query_one(StatsPanel).rows.get("  first/run") == shown


async def test_the_controls_tab_compares_with_the_same_window():
    store = Store()
    records = [step(i, 0.5 if i < 40 else 0.25) for i in range(80)]
    records.append(
        {"v": 1, "kind": "event", "rank": 0, "seq": 200, "time": 40.0, "command": "amp=on", "status": "accepted",
         "reason": "autocast bfloat16 on cpu", "effective_step": 40, "id": "c1", "source": "dashboard"}
    )  # fmt: skip
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("c")
        await pilot.pause(0.2)
        rows = app.query_one(ControlsPanel).impact_rows
    assert rows["Step time p50"] == ("500 ms", "250 ms", "-50%")
    assert rows["Samples/s"] == ("256", "512", "+100%")


async def test_the_controls_tab_compares_the_change_a_person_picks_not_a_pause_after_it():
    """AMP on, then a pause and a resume: the table compared "resume" (which changes nothing), and the AMP
    change could no longer be reached; the Detail column was cut off, and the From column with it; the arrows
    did nothing until the table was given the focus."""
    from textual.widgets import DataTable

    def event(n: int, command: str, at: int, reason: str = "") -> dict:
        fields = {"command": command, "status": "accepted", "reason": reason, "effective_step": at, "id": f"c{n}"}
        return {"v": 1, "kind": "event", "rank": 0, "seq": 200 + n, "time": float(at), "source": "dashboard", **fields}

    store = Store()
    records = [step(i, 0.5 if i < 40 else 0.25 if i < 60 else 0.2) for i in range(80)]
    long_reason = (
        "group 0: 0.01 -> 0.005; held: rates the script assigns are scaled to match, until the next lr command"
    )
    records += [event(1, "lr*=0.5", 20, long_reason), event(2, "amp=on", 40, "autocast bfloat16 on cpu")]
    records += [event(3, "pause", 60), event(4, "resume", 61), event(5, "profile=5", 62)]
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("c")
        await pilot.pause(0.2)
        panel = app.query_one(ControlsPanel)
        assert panel.compared["command"] == "amp=on"  # the latest change, not the resume after it
        table = panel.query_one("#events-table", DataTable)
        assert table.has_focus  # the arrows work as the tab comes up
        await pilot.press("down", "down", "down", "down")  # profile, resume, pause, amp, lr: to lr*=0.5
        await pilot.pause(0.2)
        assert panel.compared["command"] == "lr*=0.5"
        assert panel.impact_rows["Step time p50"][0] == "500 ms"  # (steps 0-19: before the lr change)
        detail = str(panel.query_one("#event-detail").render())
        columns = [str(column.label) for column in table.columns.values()]
    assert detail == "lr*=0.5: " + long_reason  # whole, under the table
    assert columns == ["Step", "Command", "Status", "From", "Detail"]  # (the long one last)


async def test_the_controls_tab_follows_each_new_change_until_a_person_picks_one():
    """The Controls tab opened, AMP and cudnn.benchmark on, then AMP off, a pause and ``lr*=0.5``: the panel
    still compared ``cudnn_benchmark=on``, the row the table's own cursor had landed on, taken for a choice
    with the arrow keys that nobody made. Its "before" also reached back over the previous command's step
    (steps under ``amp=on``), and it read "1 steps after"."""
    from textual.widgets import DataTable

    def event(n: int, command: str, at: int) -> dict:
        fields = {"command": command, "status": "accepted", "reason": "", "effective_step": at, "id": f"c{n}"}
        return {"v": 1, "kind": "event", "rank": 0, "seq": 200 + n, "time": float(at), "source": "dashboard", **fields}

    store = Store()
    store.ingest([step(i, 0.5 if i < 20 else 0.4) for i in range(24)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("c")
        await pilot.pause(0.2)
        store.ingest([event(1, "amp=on", 20), event(2, "cudnn_benchmark=on", 22)])  # (keys a and b, at once)
        app.render_views()
        panel = app.query_one(ControlsPanel)
        await wait_for_ui(pilot, lambda: panel.compared is not None)
        assert panel.compared["command"] == "cudnn_benchmark=on"
        store.ingest([step(i, 0.3 if i < 27 else 0.2) for i in range(24, 28)])
        store.ingest([event(3, "amp=off", 24), event(4, "pause", 25), event(5, "resume", 25), event(6, "lr*=0.5", 27)])
        await pilot.pause(0.2)
        app.render_views()
        await wait_for_ui(pilot, lambda: panel.compared["command"] == "lr*=0.5")
        await pilot.pause(0.2)
        screen = "\n".join(screen_lines(app).values())
        # The before: steps 24-26, under amp=off alone (3 steps of 300 ms); the after: step 27 alone.
        assert panel.impact_rows["Step time p50"] == ("300 ms", "200 ms", "-33%")
        assert "lr*=0.5 @ step 27: before vs after (the latest change" in screen
        assert "3 steps before" in screen and "1 step after" in screen
        await pilot.press("down", "down", "down")  # lr, resume, pause, amp=off: a person's pick holds
        await pilot.pause(0.2)
        assert panel.query_one("#events-table", DataTable).cursor_row == 3
        store.ingest([step(28, 0.2), event(7, "lr*=0.5", 28)])
        app.render_views()
        await pilot.pause(0.2)
        # amp=off: its before the steps since cudnn's (22-23), its after up to the first lr change (24-26)
        assert panel.compared["command"] == "amp=off"
        assert panel.impact_rows["Step time p50"] == ("400 ms", "300 ms", "-25%")


async def test_at_80x24_the_overview_shows_the_learning_rate_and_the_evaluations_metric():
    """The panel shows a dozen rows there: speed and optwatch's cost came first, and the learning rate, the
    precision and the evaluation's accuracy were cut off."""
    store = Store()
    extra = {"precision": "bfloat16 autocast", "detail_every": 2, "clip_max_norm": 1.0}
    records = [step(i, 0.05, **extra) for i in range(150)]
    metric = {"v": 1, "kind": "metric", "rank": 0, "seq": 999, "time": 150.0, "step": 149}
    records.append({**metric, "values": {"eval_acc": 0.446}})
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        panel = app.query_one(StatsPanel)
        seen = panel.parent.region.bottom - panel.region.y  # its rows on screen, the rest cut off
        rows = list(panel.rows)
    assert panel.rows["eval_acc"] == "0.446 @149" and panel.rows["Precision"] == "bfloat16 autocast"
    assert max(rows.index(row) for row in ("LR", "Precision", "eval_acc", "Step time")) < seen, (rows, seen)


async def test_each_optimizers_loss_has_its_own_line_and_figure():
    """A GAN's two optimizers: the discriminator's loss is the step's, the generator's has a line of its own."""
    from optwatch.app.widgets.series_chart import SeriesChart

    store = Store()
    store.ingest([step(i, 0.1, losses={"optD": 1.0 + 0.01 * i, "optG": 2.0 - 0.01 * i}) for i in range(40)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        app.render_views(force_charts=True)
        series = {label: ys for label, _, ys, _ in app.query_one("#loss-chart", SeriesChart).series}
        rows = app.query_one(StatsPanel).rows
    assert series["optG"] == pytest.approx([2.0 - 0.01 * i for i in range(40)])
    assert rows[" optD"] == "1.39" and rows[" optG"] == "1.61"
    assert "optD 1.39 | optG 1.61" in summary_line(store)


@pytest.mark.parametrize(
    "step_time, said",
    [(0.000412, "0.412 ms/step"), (0.0073, "7.3 ms/step"), (2.5, "2.5 s/step"), (0.9996, "1 s/step"),
     (1234.5, "1234 s/step")],
)  # fmt: skip
def test_the_headless_line_gives_short_and_long_steps_three_digits(step_time, said):
    """A PPO update of 0.4 ms read "0.000 s/step"."""
    store = Store()
    store.ingest([step(i, step_time, own=step_time / 100, bg=0.0) for i in range(30)])
    assert f" {said} " in summary_line(store)


@pytest.mark.parametrize("step_time, said", [(0.0002, "0.2 ms p50"), (0.0073, "7.3 ms p50"), (2.5, "2.5 s p50")])
async def test_the_overview_gives_short_and_long_steps_three_digits_too(step_time, said):
    """A 0.2 ms step read "Step time 0 ms p50" in the Overview."""
    store = Store()
    store.ingest([step(i, step_time, own=step_time / 100, bg=0.0) for i in range(30)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        assert app.query_one(StatsPanel).rows["Step time"] == said


def test_the_headless_line_says_a_nan_loss_instead_of_a_dash():
    """A run whose loss went NaN read "loss - (ema 1.449)": as if nothing were known, beside a stale EMA."""
    store = Store()
    store.ingest([step(i, 0.01) for i in range(20)] + [step(20, 0.01, loss=float("nan"))])
    assert " loss NaN (ema of the finite ones " in summary_line(store)


async def test_a_nan_gradient_norm_is_said_and_the_charts_say_since_when():
    """A run whose gradient norm went NaN read "grad -" in the headless line, and its chart's line just
    stopped, as if nothing had been measured; the loss chart's EMA went on, flat, over the NaN steps."""
    store = Store()
    steps = [step(i, 0.01) for i in range(30)]
    steps += [step(i, 0.01, loss=float("nan"), grad_norm=float("nan")) for i in range(30, 40)]
    store.ingest(steps)
    assert " loss NaN (ema of the finite ones " in summary_line(store) and " grad NaN " in summary_line(store)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.pause(0.3)
        assert app.query_one(StatsPanel).rows["Grad norm"] == "NaN"
        assert app.query_one("#grad-chart").title == "Grad norm · NaN since step 30 · last 1,000 steps"
        assert app.query_one("#loss-chart").title == "Loss · NaN since step 30 · last 1,000 steps"


async def test_the_gradient_chart_says_on_how_many_steps_the_norm_was_measured():
    """Past its first steps optwatch measures the norm on detail steps only (unless the script clips): the
    chart joins those points, so a spike between them is not on it. Its title says how many there are."""
    store = Store()
    store.ingest([step(i, 0.01, **({} if i < 10 or i % 8 == 0 else {"grad_norm": None})) for i in range(50)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.pause(0.3)
        assert app.query_one("#grad-chart").title == "Grad norm · measured on 15 of the last 50 steps"


def test_the_cost_now_spreads_optwatchs_threads_over_the_time_they_worked_for():
    """On 0.15 ms steps the channel's CPU time (7.5 ms for the last second of records) came with one step
    record, and over the last 20 steps (3 ms) the final line said "optwatch 184.4%". The figure for now covers
    2 s of steps at least: (2 s of steps' own 5 us each + 7.5 ms) over their time."""
    from optwatch.summary import CostTotals, summarise

    steps = [step(i, 0.00015, own=0.000005, bg=0.0) for i in range(20000)]
    steps[-1]["optwatch_bg_s"] = 0.0075
    totals = CostTotals()
    for record in steps:
        totals.add(record)
    cost = summarise(steps, None, totals).cost
    covering = 13334  # the fewest of the latest steps whose 0.15 ms add up to 2 s
    assert cost.recent == pytest.approx((covering * 0.000005 + 0.0075) / (covering * 0.00015), rel=1e-3)
    assert cost.recent < 0.1


def test_a_slice_another_program_took_while_optwatchs_lines_ran_is_not_optwatchs_cost():
    """On a busy machine the scheduler took the training thread's core for 4 ms while optwatch's lines ran
    (timed on the wall clock: 4.05 ms of a 4.2 ms step), among 0.2 ms steps of 10 us of optwatch's own: the
    live figure read 'optwatch 29%'. The step says its wait for a core (``core_wait_s``), which is shared out
    over the step by time: by hand, (4.05 ms x 0.2 / 4.2 + 59 x 10 us) over 4.2 ms + 59 x 0.2 ms."""
    store = Store()
    steps = [step(i, 0.0002, own=0.00001, bg=0.0, core_wait_s=0.0) for i in range(60)]
    steps[30].update(step_time_s=0.0042, optwatch_s=0.00405, core_wait_s=0.004)
    store.ingest(steps)
    share = store.summary().cost.recent
    assert share == pytest.approx((0.00405 * 0.2 / 4.2 + 59 * 0.00001) / (0.0042 + 59 * 0.0002), rel=1e-3)
    assert "optwatch 4.9%" in summary_line(store)


def test_the_whole_runs_throughput_is_not_said_when_half_its_steps_do_not_say_their_samples():
    """Without an optimizer, accumulating two micro-batches, every other step had no samples: over the time of
    the steps that had, the whole run read 36915 samples/s where the script counted 27959."""
    from optwatch.summary import CostTotals, summarise

    steps = [step(i, 0.002, samples=50) for i in range(200)]
    for record in steps[::2]:
        record["samples"] = record["samples_per_s"] = None
    totals = CostTotals()
    for record in steps:
        totals.add(record)
    assert summarise(steps, None, totals).run_samples_per_s is None
    complete = [step(i, 0.002 if i % 10 else 0.02, samples=50) for i in range(200)]  # an evaluation in 1 in 10
    totals = CostTotals()
    for record in complete:
        totals.add(record)
    assert summarise(complete, None, totals).run_samples_per_s == pytest.approx(200 * 50 / (180 * 0.002 + 20 * 0.02))


def test_the_headless_line_says_how_many_recent_steps_the_clipped_share_is_of():
    """The line's "clipped at 0.3 in 40% of steps" read as the whole run's share (61.5% there): it is the last 20
    steps'. And a run that clipped none of its last steps said nothing of its clip."""
    store = Store()
    norms = [0.5 if i % 5 < 2 else 0.1 for i in range(40)]  # over the clip at 2 steps in 5
    store.ingest([step(i, 0.01, grad_norm=norm, clip_max_norm=0.3) for i, norm in enumerate(norms)])
    assert "(clipped at 0.3 in 40% of the last 20 steps)" in summary_line(store)
    calm = Store()
    calm.ingest([step(i, 0.01, grad_norm=0.1, clip_max_norm=0.3) for i in range(40)])
    assert "(clipped at 0.3 in 0% of the last 20 steps)" in summary_line(calm)


async def test_the_overview_says_the_clipped_share_and_its_window_whole():
    """The Overview's "Clipped" row read "at 1, 40% of the l…" in its narrow column: the window was cut off.
    The share and its window, and the clip's norm on a row of its own, are shown whole."""
    store = Store()
    norms = [0.5 if i % 5 < 2 else 0.1 for i in range(40)]  # over the clip at 2 steps in 5
    store.ingest([step(i, 0.01, grad_norm=norm, clip_max_norm=0.3) for i, norm in enumerate(norms)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(140, 45)) as pilot:
        await pilot.pause(0.2)
        rows = app.query_one(StatsPanel).rows
        shown = app.export_screenshot().replace("&#160;", " ")
    assert (rows["Clipped"], rows["  at norm"]) == ("40% of last 20", "0.3")
    assert "40% of last 20<" in shown and "…" not in shown.split("Clipped", 1)[1].split("LR", 1)[0]


async def test_y_puts_the_loss_chart_on_a_log_scale_and_back():
    """A loss that falls from 1 to 0.005 (by hand: 1 / (step + 1)) lies on the chart's floor from step 20 on,
    linear; ``y`` draws it on a log scale, with decades on its axis, and ``y`` again goes back."""
    from conftest import screen_lines, wait_for_ui
    from optwatch.app.widgets.series_chart import SeriesChart

    store = Store()
    store.ingest([step(i, 0.05) for i in range(200)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        chart = app.query_one("#loss-chart", SeriesChart)
        await wait_for_ui(pilot, lambda: chart.series)
        linear = "\n".join(screen_lines(app).values())
        await pilot.press("y")
        await wait_for_ui(pilot, lambda: "log scale" in chart.title)
        logarithmic = "\n".join(screen_lines(app).values())
        assert chart.log_y and chart.title == "Loss · last 1,000 steps · log scale"
        await pilot.press("y")
        await wait_for_ui(pilot, lambda: chart.title == "Loss · last 1,000 steps")
        assert not chart.log_y
    assert all(f"1e{k}┤" in logarithmic for k in (-2, -1, 0)) and "1e-2" not in linear


def test_the_headless_summary_says_what_the_script_logged_as_the_overview_does():
    """An evaluation's accuracy, logged by the script (``ow.log``) or its framework's callback, reached the
    record and the Overview but no headless line: someone following a run over ssh never saw it."""
    store = Store()
    store.ingest([step(i, 0.05) for i in range(150)])
    metric = {"v": 1, "kind": "metric", "rank": 0, "seq": 999, "time": 150.0, "step": 149}
    store.ingest([{**metric, "values": {"eval_acc": 0.446, "eval_loss": 1.2345678}}])
    assert " | eval_acc 0.446 @149 | eval_loss 1.235 @149" in summary_line(store)


def metric_record(step_number: int, seq: int, **values: float) -> dict:
    return {
        "v": 1,
        "kind": "metric",
        "rank": 0,
        "seq": seq,
        "time": float(step_number),
        "step": step_number,
        "values": values,
    }


async def test_the_evaluation_loss_outlives_the_trainers_closing_bookkeeping():
    """The Hugging Face Trainer's closing log (its runtime and throughput, as OptwatchCallback publishes it
    after the last evaluation) was the latest metric record, and its first three values were all the headless
    final line and the Overview showed: ``train_runtime 26.87 @79 | train_samples_per_second ...``, never the
    evaluation's loss. Each name keeps its own latest value and step; the loss goes first."""
    store = Store()
    store.ingest([step(i, 0.3) for i in range(80)])
    bookkeeping = {"eval_runtime": 0.41, "eval_samples_per_second": 2439.0, "eval_steps_per_second": 19.5}
    store.ingest([metric_record(39, 900, eval_loss=1.0312, **bookkeeping)])
    store.ingest([metric_record(79, 901, eval_loss=0.8123, **bookkeeping)])
    closing = {"train_runtime": 26.87, "train_samples_per_second": 380.2, "train_steps_per_second": 2.97}
    store.ingest([metric_record(79, 902, **closing, total_flos=1.2e12, train_loss=0.9471)])
    line = summary_line(store, final=True)
    # (the bookkeeping where room is left: the first logged of it, the evaluation's own runtime)
    assert " | eval_loss 0.8123 @79 | train_loss 0.9471 @79 | eval_runtime 0.41 @79 | " in line
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(StatsPanel)
        await wait_for_ui(pilot, lambda: "eval_loss" in panel.rows)
        assert panel.rows["eval_loss"] == "0.8123 @79" and panel.rows["train_loss"] == "0.9471 @79"


async def test_lightnings_step_and_epoch_losses_are_two_rows_beside_the_validation_loss():
    """Lightning's callback_metrics: ``train_loss_step``, ``train_loss_epoch``, then ``val_loss``. The Overview
    keyed its rows by the name's first 10 characters, so both training losses wrote one ``train_loss`` row
    (the epoch's over the step's), and the validation loss, fourth, was never shown."""
    store = Store()
    store.ingest([step(i, 0.3) for i in range(64)])
    store.ingest([metric_record(31, 900, train_loss_step=0.71, train_loss_epoch=0.83, val_loss=0.77)])
    store.ingest([metric_record(63, 901, train_loss_step=0.52, train_loss_epoch=0.61, val_loss=0.58)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        panel = app.query_one(StatsPanel)
        await wait_for_ui(pilot, lambda: "val_loss" in panel.rows)
        rows = dict(panel.rows)
    assert rows["val_loss"] == "0.58 @63"
    shown = {label: value for label, value in rows.items() if label.startswith("train")}
    assert sorted(shown.values()) == ["0.52 @63", "0.61 @63"] and len(shown) == 2
    assert all(len(label) <= 11 for label in shown)


async def test_the_overviews_clipped_share_after_nan_norms_is_of_the_finite_ones():
    """Norms of 2 over a clip of 1 for steps 0-4, NaN for 5-11: the row read "100% of last 5" (steps 7-11,
    all NaN); by hand, 5 of the 5 finite norms were cut."""
    store = Store()
    norms = [2.0] * 5 + [float("nan")] * 7
    store.ingest([step(i, 0.1, grad_norm=norm, clip_max_norm=1.0) for i, norm in enumerate(norms)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        panel = app.query_one(StatsPanel)
        await wait_for_ui(pilot, lambda: "Clipped" in panel.rows)
        assert panel.rows["Clipped"] == "100% of 5 finite"


def test_steps_fast_and_slow_in_turn_are_as_many_samples_a_second_as_they_train():
    """DataLoader workers that prefetch: steps of 1 ms and 34 ms in turn, 16 samples each. The median of each
    step's rate said 8,800 samples/s, the fast steps'; by hand 32 samples in 35 ms: 914 a second."""
    store = Store()
    store.ingest([step(i, 0.001 if i % 2 else 0.034, samples=16) for i in range(40)])
    assert store.summary().recent.samples_per_s == pytest.approx(32 / 0.035)


async def test_the_overview_gives_the_verdicts_first_suggestion_under_it():
    """What to change was on the System tab only: the Overview's findings bar said "input-bound: ..." and
    nothing of what to do about it."""
    from optwatch.app.widgets.findings_bar import FindingsBar

    store = Store()
    tips = ["Load batches in parallel: DataLoader(num_workers=N)", "A larger prefetch_factor"]
    verdict = {"v": 1, "kind": "verdict", "rank": 0, "seq": 500, "time": 40.0, "bottleneck": "input",
               "message": "61% of step time waits for the next batch", "window": [2, 39],
               "suggestions": tips}  # fmt: skip
    store.ingest([*(step(i, 0.05) for i in range(40)), verdict])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        bar = app.query_one(FindingsBar)
        await wait_for_ui(pilot, lambda: bar.lines)
        assert bar.lines == [
            "input-bound: 61% of step time waits for the next batch",
            "try: Load batches in parallel: DataLoader(num_workers=N)",
        ]


def test_compare_gives_the_median_steps_rate_beside_the_median_step_time():
    """On a busy machine a third of the steps took 400 ms where the rest took 100: compare's "samples/s p50"
    read the whole run's 413 beside a 103 ms median step of 128 samples. By hand: 128 / 0.1 s = 1280."""
    from optwatch.comparison import compare_runs

    stores = []
    for _ in range(2):
        store = Store()
        store.ingest([step(i, 0.4 if i % 3 == 0 else 0.1) for i in range(60)])
        stores.append(("run", store))
    rows = {row.label: row.values for row in compare_runs(stores).rows}
    assert rows["step time p50"] == ["100.0 ms", "100.0 ms"]
    assert rows["samples/s p50"] == ["1280", "1280"], rows


async def test_a_chart_title_wider_than_the_chart_is_cut_not_left_out():
    """plotext draws no title wider than the chart: with a baseline's run id, the whole run's loss chart at 100
    columns had a blank title line."""
    from conftest import screen_lines
    from optwatch.app.widgets.series_chart import SeriesChart

    store = Store()
    store.ingest([step(i, 0.05) for i in range(50)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        chart = app.query_one("#loss-chart", SeriesChart)
        await wait_for_ui(pilot, lambda: chart.series)
        chart.title = "Loss · whole run (steps 0–199) · baseline cifar-20261207-080105-fdd0 and then some more"
        chart.refresh()
        await pilot.pause(0.3)
        text = "\n".join(screen_lines(app).values())
    assert "Loss · whole run (steps 0–199) · baseline" in text


def test_a_metric_named_after_each_step_keeps_the_store_bounded_and_the_first_names():
    """A script that logs ``loss_at_{step}`` makes a new name each step: the latest value of every name was
    kept, without a bound. The first thousand names stay, and their values go on being updated."""
    store = Store()
    store.ingest(
        [metric_record(i, 1000 + i, val_loss=1.0 / (i + 1), **{f"loss_at_{i}": float(i)}) for i in range(5000)]
    )
    assert len(store.metrics) == 1000
    assert store.metrics["val_loss"] == (pytest.approx(1.0 / 5000), 4999)
    assert "loss_at_998" in store.metrics and "loss_at_999" not in store.metrics
