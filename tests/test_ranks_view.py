"""The Ranks tab at 256 ranks: the spread in a few lines, the worst ranks named, any rank on demand, and a
table that stays a screenful. (At two ranks it is the table alone: tests/test_snapshots.py draws it.)"""

from __future__ import annotations

from conftest import screen_lines, wait_for_ui
from optwatch import protocol
from optwatch.store import Store

RANKS = 256
STEPS = 30
SLOWEST, WAITS, STRAGGLER, LOSSY, HUNG = 173, 42, 99, 7, 200


def job_of_256_ranks() -> Store:
    """Every rank: 100 ms steps, 1 ms of data wait, 10 ms to backward, loss 1.0 + rank/1000; except rank 173
    (250 ms steps), rank 42 (60 ms of data wait), rank 99 (90 ms to backward, the hub's straggler alert),
    rank 7 (loss 5), and rank 200, which stopped reporting after step 10."""
    records = []
    for rank in range(RANKS):
        for step in range(11 if rank == HUNG else STEPS):
            records.append(
                protocol.make_record(
                    protocol.STEP, rank, seq=step, step=step, samples=64,
                    step_time_s=0.25 if rank == SLOWEST else 0.1,
                    data_wait_s=0.06 if rank == WAITS else 0.001,
                    to_backward_s=0.09 if rank == STRAGGLER else 0.01,
                    loss=5.0 if rank == LOSSY else 1.0 + rank / 1000,
                )
            )  # fmt: skip
    records.append(
        protocol.make_record(
            protocol.ALERT, STRAGGLER, origin=protocol.HUB_ORIGIN, seq=0, type="straggler", step=STEPS - 1,
            message=f"rank {STRAGGLER} reaches backward last",
        )
    )  # fmt: skip
    records.append(protocol.make_record(protocol.HELLO, WAITS, seq=STEPS, host="node5", pid=4242, world_size=RANKS))
    store = Store()
    store.ingest(records)
    return store


def text(app) -> str:
    return "\n".join(screen_lines(app).values())


async def test_256_ranks_read_as_their_spread_with_the_worst_named_and_any_rank_on_demand():
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.rank_detail import RankDetail
    from optwatch.app.widgets.ranks_summary import RanksSummary
    from optwatch.app.widgets.ranks_table import MARKS, WORST_ROWS, RanksTable

    app = OptwatchApp.for_store(job_of_256_ranks())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("r")
        table = app.query_one(RanksTable)
        await wait_for_ui(pilot, lambda: table.row_count > 0)
        summary = app.query_one(RanksSummary)
        assert summary.border_title == "256 ranks, newest step 29"
        step_time, to_backward, data_wait, loss, trouble = summary.lines
        assert step_time.split() == "step time median 100 ms 100 ms..250 ms slowest 173: 250 ms".split()
        assert to_backward.endswith(f"latest {STRAGGLER}: 90 ms")
        assert data_wait.endswith(f"most {WAITS}: 60%")  # 60 ms of data wait in a 100 ms step
        assert f"highest {LOSSY}: 5 · 255: 1.255" in loss
        assert f"straggler {STRAGGLER}" in trouble and f"behind {HUNG}: 19 steps" in trouble
        assert "slowest 173" in " ".join(text(app).split())  # on screen, not only in the widget
        # A screenful of rows, the slowest first; under DDP-like equal step times the straggler next.
        assert table.row_count == WORST_ROWS
        assert list(table.rows_shown)[:2] == [SLOWEST, STRAGGLER]
        assert table.rows_shown[STRAGGLER][MARKS] == "◀ straggler"

        # Drill down: the rank with the most data wait, by its row.
        await pilot.press("t", "t")  # step time -> to backward -> data wait
        await wait_for_ui(pilot, lambda: list(table.rows_shown)[0] == WAITS)
        assert app.focused is table  # the tab's keys reach the table without a click
        table.move_cursor(row=0)
        await pilot.press("enter")
        detail = app.query_one(RankDetail)
        await wait_for_ui(pilot, lambda: detail.rank == WAITS)
        assert detail.display
        assert detail.lines[0].startswith("step 29 (newest of any rank 29) · host node5 · pid 4242")
        assert "data wait 60% (median 1%)" in detail.lines[2]
        assert "loss 1.042 (median" in detail.lines[3]

        # Any rank by its number, even one the table does not list: it joins the table.
        await pilot.press("#", *str(HUNG), "enter")
        await wait_for_ui(pilot, lambda: detail.rank == HUNG)
        assert detail.lines[0].startswith("step 10 (newest of any rank 29)")
        assert HUNG in table.rows_shown and table.row_count == WORST_ROWS + 1
        assert table.rank_at_cursor() == HUNG
        await pilot.press("escape")
        await wait_for_ui(pilot, lambda: not detail.display)


async def test_a_few_ranks_show_every_rank_in_rank_order_without_the_summary():
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.rank_detail import RankDetail
    from optwatch.app.widgets.ranks_summary import RanksSummary
    from optwatch.app.widgets.ranks_table import RanksTable

    store = Store()
    store.ingest([
        protocol.make_record(protocol.STEP, rank, seq=step, step=step, step_time_s=0.1, loss=2.0 - rank)
        for rank in (3, 0, 2, 1) for step in range(5)
    ])  # fmt: skip
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        table = app.query_one(RanksTable)
        await wait_for_ui(pilot, lambda: table.row_count == 4)
        assert list(table.rows_shown) == [0, 1, 2, 3]
        assert not app.query_one(RanksSummary).display and not app.query_one(RankDetail).display
        assert app.focused is table  # the tab's keys reach the table without a click
        table.move_cursor(row=2)
        await pilot.press("enter")
        await wait_for_ui(pilot, lambda: app.query_one(RankDetail).rank == 2)
        assert "loss 0 (median 0.5)" in app.query_one(RankDetail).lines[3]


async def test_a_rank_that_still_straggles_keeps_its_mark_long_after_its_alert():
    """The alert comes once an episode (at step 9 here): the table's mark went with it 200 steps later, and
    a viewer attached after that saw no straggler while rank 1 still reached backward at 51 ms against 21 ms.
    The mark follows the steps shown, and leaves when the rank catches up."""
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.ranks_table import MARKS, RanksTable

    def steps(first: int, count: int, slow: bool) -> list[dict]:
        return [
            protocol.make_record(protocol.STEP, rank, seq=step, step=step, samples=8, step_time_s=0.055,
                                 data_wait_s=0.001, to_backward_s=0.051 if rank == 1 and slow else 0.021, loss=1.0)
            for step in range(first, first + count)
            for rank in (0, 1)
        ]  # fmt: skip

    alert = protocol.make_record(protocol.ALERT, 1, origin=protocol.HUB_ORIGIN, seq=0, type="straggler", step=9,
                                 message="rank 1 reaches backward last")  # fmt: skip
    store = Store()
    store.ingest([*steps(0, 10, True), alert, *steps(10, 390, True)])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("r")
        table = app.query_one(RanksTable)
        await wait_for_ui(pilot, lambda: table.row_count == 2)
        assert table.rows_shown[1][MARKS] == "◀ straggler" and table.rows_shown[0][MARKS] != "◀ straggler"
        store.ingest(steps(400, 30, False))  # rank 1 caught up
        app.render_views(force_charts=True)
        await wait_for_ui(pilot, lambda: table.rows_shown[1][MARKS] != "◀ straggler")
