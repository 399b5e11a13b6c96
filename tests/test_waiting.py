"""A run that makes no step for a while (data still loading, an evaluation, a hang) says so, and where the
training thread is, in the script's own code: the figures of the last step stood still as if it trained on."""

from __future__ import annotations

import re
import sys

from conftest import ROOT, SCRIPTS, start_training, wait_for_ui
from optwatch.app.app import OptwatchApp
from optwatch.app.widgets.run_header import RunHeader
from optwatch.session import ViewerSession

SCRIPT = SCRIPTS / "slow_start.py"


def line_of(text: str) -> int:
    """The line of ``slow_start.py`` that holds ``text``: the truth is the script's own file."""
    [number] = [n for n, line in enumerate(SCRIPT.read_text().splitlines(), 1) if text in line]
    return number


LOADING = f"in load_data (slow_start.py:{line_of('# (where the loading waits)')})"
EVALUATING = {
    f"in evaluate (slow_start.py:{line_of(text)})"
    for text in ("model(torch.randn(256", "# (where the evaluation waits)")
}


def test_headless_says_where_the_training_is_before_its_first_step_and_in_an_evaluation_not_in_a_pause():
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--summary-every", "1", "--control", "pause=3.5@4",
         str(SCRIPT), "--load-s", "4", "--steps", "8", "--sleep", "0.3", "--evaluate-after", "6",
         "--evaluate-s", "4.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    before = [line for line in lines if line.startswith("optwatch: no step yet after")]
    # (On a loaded machine the optimizer's construction, which imports torch._dynamo, can take 3 s itself:
    # said as such, before the loading.)
    importing = [line for line in before if ": importing torch" in line]
    loading = before[len(importing) :]
    assert before[: len(importing)] == importing and loading, lines
    assert all(line.endswith(f": {LOADING}") for line in loading), lines
    # (It loads 4 s, said from 3 s in: its lines span no more, a summary may say it a second late. When the
    # loading starts is torch's import's: 0.5 s on a quiet machine, 3 s on a loaded one.)
    seconds = [int(re.search(r"after (\d+) s", line)[1]) for line in loading]
    assert 3 <= seconds[0] and seconds[-1] - seconds[0] <= 5, loading
    waits = [(n, line) for n, line in enumerate(lines) if line.startswith("optwatch: no step for")]
    assert waits, lines
    places = []
    for _, line in waits:
        said = re.fullmatch(
            r"optwatch: no step for (\d+) s since step 6 \(steps take (\d+) ms\): (in \S+ \([^)]*\))(, at .*)?",
            line,
        )
        assert said and 3 <= int(said[1]) <= 6, line  # (evaluates 4.5 s after its step 6)
        assert 280 <= int(said[2]) <= 380, line  # the script's --sleep 0.3 a step
        places.append(said[3])
    # In the evaluation; the last one may come as the loop sleeps after it, before its next step.
    after = f"in <module> (slow_start.py:{line_of('time.sleep(args.sleep)')})"
    assert set(places[:-1]) <= EVALUATING and places[-1] in {*EVALUATING, after} and places[0] in EVALUATING, waits
    # optwatch's own pause (3.5 s, longer than a wait must be to be said) is said as a pause, never as a wait.
    paused = next(n for n, line in enumerate(lines) if "pause=3.5 accepted" in line)
    resumed = next(n for n, line in enumerate(lines) if "resume accepted" in line)
    assert not [n for n, _ in waits if paused < n < resumed], lines
    assert "optwatch: final step 7 " in result.stderr


async def test_the_dashboards_header_says_where_the_training_is_while_no_step_ends():
    training = start_training(
        str(SCRIPT), "--load-s", "4", "--steps", "200", "--sleep", "0.05", "--evaluate-after", "5",
        "--evaluate-s", "5",
    )  # fmt: skip
    try:
        app = OptwatchApp(ViewerSession.for_process(training))
        async with app.run_test(size=(160, 30)) as pilot:
            header = app.query_one(RunHeader)
            await wait_for_ui(pilot, lambda: header.status.startswith("no step yet after"))
            assert header.status.endswith(f": {LOADING}"), header.status
            await wait_for_ui(pilot, lambda: header.status == "running")
            await wait_for_ui(pilot, lambda: header.status.startswith("no step for"))
            place = re.search(r"in evaluate \([^)]*\)", header.status)
            assert place and place[0] in EVALUATING, header.status
            await wait_for_ui(pilot, lambda: header.status == "running", timeout_s=15)  # steps again
            assert app.store.primary.last_step["step"] > 5
    finally:
        training.stop(grace_s=2)
        training.cleanup()


async def test_under_ddp_each_rank_is_said_where_it_waits_and_the_ranks_tab_marks_them(tmp_path):
    """One rank in its own checkpoint code, the other waiting for it in the gradients' all-reduce: the
    headless line names both places; the Ranks tab marks both ranks and the rank looked at says where."""
    import subprocess

    from conftest import read_jsonl
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.rank_detail import RankDetail
    from optwatch.app.widgets.ranks_table import MARKS, RanksTable
    from optwatch.store import Store

    script = SCRIPTS / "ddp_stall.py"
    lines_of = script.read_text().splitlines()
    [backward] = [n for n, line in enumerate(lines_of, 1) if "# (where the other ranks wait)" in line]
    [checkpoint] = [n for n, line in enumerate(lines_of, 1) if "# (where the checkpoint waits)" in line]
    record = tmp_path / "ddp.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--summary-every", "1", "--record", str(record),
         "--nproc-per-node", "2", str(script), "--steps", "12", "--stall-at", "8", "--stall-s", "6"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if line.startswith("optwatch: no step for")]
    # Rank 0 waits for rank 1 in the all-reduce; rank 1 is in its own checkpoint code (until it steps again,
    # which may come a moment before rank 0's next word: then rank 0's place alone).
    expected = f"in <module> (ddp_stall.py:{backward}), at "
    assert said and all(expected in line and " since step 8 " in line for line in said), said
    both = [line for line in said if ": rank 1 " in line]
    assert both and all(f": rank 1 in save_checkpoint (ddp_stall.py:{checkpoint}); rank 0 {expected}" in line
                        for line in both), said  # fmt: skip

    # The Ranks tab, fed the job's own records as they stood during the wait: up to the first step record
    # after it (each rank's word from the wait came before; the steps before it may come just after).
    records = read_jsonl(record)
    waited_at = max(r["step"] for r in records if r["kind"] == "waiting")
    resumed = next(n for n, r in enumerate(records) if r["kind"] == "step" and r["step"] >= waited_at)
    assert {r["rank"] for r in records[:resumed] if r["kind"] == "waiting"} == {0, 1}
    store = Store()
    store.ingest(records[:resumed])
    app = OptwatchApp(store=store, mode="attach")  # (as a viewer attached to the job has them, live)
    async with app.run_test(size=(160, 30)) as pilot:
        # The header names the stuck rank's place first (it gave rank 0's alone, waiting in the all-reduce).
        header = app.query_one(RunHeader)
        await wait_for_ui(pilot, lambda: header.status.startswith("no step for"))
        assert f": rank 1 in save_checkpoint (ddp_stall.py:{checkpoint}); rank 0 {expected}" in header.status
        await pilot.press("r")
        table = app.query_one(RanksTable)
        await wait_for_ui(pilot, lambda: table.row_count == 2)
        for rank in (0, 1):
            assert table.rows_shown[rank][MARKS].startswith("no step for "), table.rows_shown
        table.focus()
        table.move_cursor(row=1)
        await pilot.press("enter")
        detail = app.query_one(RankDetail)
        await wait_for_ui(pilot, lambda: detail.display)
        assert detail.lines[-1].endswith(f"in save_checkpoint (ddp_stall.py:{checkpoint})"), detail.lines
    # A replay has no now: the same records there mark no rank (a run killed without a word would tick on).
    replay = OptwatchApp.for_store(store)
    async with replay.run_test(size=(160, 30)) as pilot:
        await pilot.press("r")
        table = replay.query_one(RanksTable)
        await wait_for_ui(pilot, lambda: table.row_count == 2)
        assert not any(row[MARKS].startswith("no step") for row in table.rows_shown.values()), table.rows_shown


def test_an_import_before_the_first_step_is_said_as_one(tmp_path, monkeypatch):
    """Importing transformers takes seconds before the first step, and the wait read "no step yet after 3 s:
    in <module> (train.py:9), at _tokenize (tokenize.py:502)", like a hang. The library being imported is
    named: here a package installed under site-packages whose top level is still running (its frame taken
    there, with the import machinery's frames and this test's around it)."""
    from optwatch.probe.waiting import frames_of, importing
    from optwatch.summary import waiting_place

    package = tmp_path / "site-packages" / "slowlib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import sys\n\nFRAME = sys._getframe()  # (its import, running)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    import slowlib  # noqa: F401  (its import runs here)

    frame = sys.modules["slowlib"].FRAME
    stack, own = frames_of(frame)
    record = {"stack": stack, "where": own, "importing": importing(frame)}
    assert record["importing"] == "slowlib"
    place = waiting_place(record)
    assert place.startswith("importing slowlib, in test_an_import_before_the_first_step_is_said_as_one ("), place
    assert place.endswith(", at <module> (__init__.py:3)"), place  # (not the test runner's own entry module)
    sys.modules.pop("slowlib")
