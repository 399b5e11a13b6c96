"""Every run recorded by default, listed, replayed by id, compared side by side and exported, checked against
what the scripts print."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import math
import os
import stat
import subprocess
import sys
import zlib

import pytest

from conftest import SCRIPTS, optwatch, steps_of, wait_for
from optwatch import protocol, runs
from optwatch.app.app import ended_status


def printed_losses(stdout: str) -> list[float]:
    """plain_train.py prints ``step N loss X`` each step; short.py a TRUTH line."""
    losses = []
    for line in stdout.splitlines():
        if line.startswith("step ") and " loss " in line:
            losses.append(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("TRUTH "):
            losses.append(json.loads(line[6:])["loss"])
    return losses


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two recorded runs of the same script, lr 0.05 and 0.2, in a runs directory of their own."""
    root = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(root)}
    printed = {}
    for lr in ("0.05", "0.2"):
        done = optwatch("run", "--headless", str(SCRIPTS / "plain_train.py"), "--steps", "25", "--lr", lr, env=env)
        assert done.returncode == 0, done.stderr
        printed[lr] = printed_losses(done.stdout)
        assert f"the run is recorded in {root}" in done.stderr
    return root, env, printed


@pytest.mark.xdist_group("two_runs")  # one worker builds the module's two_runs
def test_a_run_is_recorded_by_default_privately_and_completely(two_runs):
    root, env, printed = two_runs
    entries = runs.list_runs(root)
    assert len(entries) == 2
    for entry, lr in zip(entries, ("0.05", "0.2")):
        record = entry.directory / runs.RECORD_NAME
        assert stat.S_IMODE(entry.directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        with gzip.open(record, "rt") as handle:  # a complete gzip file, as any tool reads it
            records = [json.loads(line) for line in handle]
        losses = [s["loss"] for s in steps_of(records, 0)]
        assert losses == printed[lr]  # bit for bit what the script printed, every step
        assert entry.summary["argv"][-1] == lr and entry.status == "finished"
        assert entry.summary["steps"] == 25 and entry.summary["last_loss"] == printed[lr][-1]


@pytest.mark.xdist_group("two_runs")  # one worker builds the module's two_runs
def test_runs_lists_them_and_replay_opens_one_by_id(two_runs):
    root, env, printed = two_runs
    listing = optwatch("runs", env=env)
    assert listing.returncode == 0
    lines = [line for line in listing.stdout.splitlines() if "plain_train" in line]
    assert len(lines) == 2 and all("finished" in line and " 25 " in line for line in lines)
    assert f"{printed['0.2'][-1]:.4g}" in lines[1]
    run_id = runs.list_runs(root)[1].run_id
    replay = optwatch("replay", run_id[:-2], "--headless", env=env)
    assert replay.returncode == 0, replay.stderr
    assert f"loss {printed['0.2'][-1]:.4f}" in replay.stdout
    unknown = optwatch("replay", "no-such-run", env=env)
    assert unknown.returncode == 2 and "no run or file 'no-such-run'" in unknown.stderr


@pytest.mark.xdist_group("two_runs")
@pytest.mark.parametrize("command", [["runs"], ["runs", "--json"], ["compare", "--headless"]])
def test_a_listing_read_only_in_part_ends_quietly(two_runs, command):
    """`optwatch runs | head -1`: the reader goes; optwatch ends without a BrokenPipeError traceback."""
    root, env, _ = two_runs
    if command[0] == "compare":
        command = [*command, *(entry.run_id for entry in runs.list_runs(root))]
    process = subprocess.Popen(
        [sys.executable, "-m", "optwatch", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    process.stdout.close()  # gone before the first line
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0 and stderr == b"", stderr.decode()[-2000:]


def test_a_run_whose_loss_went_nan_is_listed_with_nan_not_its_last_finite_loss(tmp_path):
    """`optwatch runs` showed a diverged run's last finite loss (1.3e16) as its loss."""
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    done = optwatch("run", "--headless", str(SCRIPTS / "plain_train.py"), "--steps", "12", "--lr", "1000", env=env)
    assert done.returncode == 0, done.stderr
    printed = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert printed[-1] == "step 11 loss nan"  # the script's own last loss
    [entry] = runs.list_runs(tmp_path)
    first_nonfinite = next(int(line.split()[1]) for line in printed if line.endswith((" nan", " inf")))
    assert entry.summary["loss_nonfinite_from"] == first_nonfinite
    [row] = [line for line in optwatch("runs", env=env).stdout.splitlines() if "plain_train" in line]
    assert row.split()[4] == "nan", row


def test_no_record_keeps_nothing(tmp_path):
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path / "runs")}
    done = optwatch("run", "--headless", "--no-record", str(SCRIPTS / "short.py"), "--steps", "2", env=env)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "runs").exists() and "recorded" not in done.stderr


def test_a_runs_directory_that_cannot_be_written_is_said_not_to_record(tmp_path):
    """A runs directory where nothing can be made (here a file; a read-only mount is the same): optwatch said
    "the run is recorded in ..." and nothing was; `optwatch runs` found nothing later."""
    blocked = tmp_path / "runs"
    blocked.write_text("a file, not a directory\n")
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(blocked)}
    done = optwatch("run", "--headless", str(SCRIPTS / "short.py"), "--steps", "3", env=env)
    assert done.returncode == 0, done.stderr  # the training goes on
    assert "the run is recorded in" not in done.stderr
    assert f"optwatch: warning: the run is not recorded: its hub cannot write in {blocked}" in done.stderr
    assert (
        f"optwatch: ALERT record_stopped: the run is not recorded: cannot write in {blocked}: it is a file, not a "
        "directory" in done.stderr
    )


@pytest.mark.xdist_group("two_runs")  # one worker builds the module's two_runs
async def test_compare_overlays_both_curves_and_marks_the_lr_that_differs(two_runs, monkeypatch):
    from optwatch.app.compare_app import CompareApp
    from optwatch.app.widgets.series_chart import SeriesChart
    from optwatch.comparison import compare_runs
    from optwatch.runs_cli import load

    root, env, printed = two_runs
    monkeypatch.setenv("OPTWATCH_RUNS_DIR", str(root))
    loaded = [load(entry.run_id) for entry in runs.list_runs(root)]
    comparison = compare_runs([(path.name, store) for store, path in loaded])
    app = CompareApp(comparison)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.3)
        chart = app.query_one(SeriesChart)
        assert [label for label, *_ in chart.series] == comparison.names
        for (_, steps, losses, _), lr in zip(chart.series, ("0.05", "0.2")):
            assert steps == list(range(25)) and losses == printed[lr]
        table = app.query_one("#compare-table")
        cells = [table.get_row_at(i) for i in range(table.row_count)]
        rows = {str(row[0]).strip(): [str(c) for c in row[1:]] for row in cells}
        assert rows["≠ lr (start)"] == ["0.05", "0.2"]
        assert rows["final loss"] == [f"{printed['0.05'][-1]:.4g}", f"{printed['0.2'][-1]:.4g}"]
        for column, lr in enumerate(("0.05", "0.2")):  # the dashboard's smoothed loss, by hand from the printed one
            ema, smoothed = printed[lr][0], []
            for loss in printed[lr]:
                ema += 0.1 * (loss - ema)
                smoothed.append(ema)
            assert rows["best loss (ema 0.1)"][column] == f"{min(smoothed):.4g}"
            assert rows["lowest batch loss"][column] == f"{min(printed[lr]):.4g}"
        assert rows["steps"] == ["25", "25"] and rows["precision"] == ["float32", "float32"]

        await pilot.press("w")
        await pilot.pause(0.2)
        assert chart.title.startswith("Loss by wall time")
    headless = optwatch("compare", *(e.run_id for e in runs.list_runs(root)), "--headless", env=env)
    assert headless.returncode == 0 and "≠ lr (start)" in headless.stdout and "≠ arguments" in headless.stdout
    # With no terminal (a pipe, nohup, cron), the table as text: the dashboard waited for keys for ever.
    piped = optwatch("compare", *(e.run_id for e in runs.list_runs(root)), env=env, stdin=subprocess.DEVNULL)
    assert piped.returncode == 0 and piped.stdout == headless.stdout, piped.stderr
    assert "no terminal for the dashboard" in piped.stderr
    one = optwatch("compare", runs.list_runs(root)[0].run_id, env=env)
    assert one.returncode == 2 and "compare takes two runs or more" in one.stderr, one.stderr


@pytest.mark.xdist_group("two_runs")  # one worker builds the module's two_runs
def test_export_writes_csv_and_tensorboard_scalars(two_runs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, env, printed = two_runs
    run_id = runs.list_runs(root)[0].run_id
    csv_path, tensorboard = str(tmp_path / "run.csv"), str(tmp_path / "tb")
    done = optwatch("export", run_id, "--csv", csv_path, "--tensorboard", tensorboard, env=env)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO((tmp_path / "run.csv").read_text())))
    assert [float(r["loss"]) for r in rows] == printed["0.05"] and [int(r["step"]) for r in rows] == list(range(25))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("loss")
    assert [s.step for s in scalars] == list(range(25))
    assert [s.value for s in scalars] == pytest.approx(printed["0.05"], rel=1e-6)  # float32 in event files
    nothing = optwatch("export", run_id, env=env)
    assert nothing.returncode == 2 and "--csv PATH" in nothing.stderr


@pytest.mark.xdist_group("two_runs")  # one worker builds the module's two_runs
@pytest.mark.parametrize(
    "flags, complaint",
    [
        (
            ["--csv", "{tmp}/no/such/dir/run.csv"],
            "cannot write {tmp}/no/such/dir/run.csv: directory {tmp}/no/such/dir does not exist",
        ),
        (["--csv", "{tmp}"], "cannot write {tmp}: it is a directory; give a file name"),
        (
            ["--tensorboard", "{tmp}/afile"],
            "cannot write TensorBoard files in {tmp}/afile: it is a file, not a directory",
        ),
        (["--tensorboard", "/proc/tb"], "cannot write TensorBoard files in /proc/tb: No such file or directory"),
        # The CSV's destination is fine, the TensorBoard one is not: neither is written.
        (["--csv", "{tmp}/run.csv", "--tensorboard", "{tmp}/afile"], "cannot write TensorBoard files in {tmp}/afile"),
    ],
)
def test_export_to_a_place_it_cannot_write_says_so_in_one_line_and_leaves_nothing(two_runs, tmp_path, flags, complaint):
    root, env, _ = two_runs
    (tmp_path / "afile").write_text("mine\n")
    run_id = runs.list_runs(root)[0].run_id
    done = optwatch("export", run_id, *(flag.format(tmp=tmp_path) for flag in flags), env=env)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"optwatch: {complaint.format(tmp=tmp_path)}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.xdist_group("two_runs")
def test_tensorboard_files_that_stop_halfway_say_so_in_one_line_and_are_not_left(two_runs, tmp_path):
    """A full disk halfway (here a file size limit: the same failed write): the writer's thread printed its
    traceback before the one-line message, and left its file cut short."""
    import resource
    import signal

    root, env, _ = two_runs
    run_id = runs.list_runs(root)[0].run_id

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a write past the limit fails with EFBIG instead)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    done = optwatch("export", run_id, "--tensorboard", str(tmp_path / "tb"), env=env, preexec_fn=small_files)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line == f"optwatch: cannot write TensorBoard files in {tmp_path / 'tb'}: File too large", line
    assert not list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_a_record_cut_short_replays_up_to_its_last_flush(tmp_path):
    """What a kill -9 or a full disk leaves: a gzip stream without its end, perhaps a line cut in half."""
    from optwatch.hub.recorder import RunRecorder

    recorder = RunRecorder(tmp_path / "cut", {"run_id": "cut"})
    step = {"v": 1, "kind": "step", "rank": 0, "time": 1.0}
    recorder.add([{**step, "step": s, "loss": float(s)} for s in range(50)])
    recorder.flush()
    recorder.add([{**step, "step": s, "loss": float(s)} for s in range(50, 60)])  # never flushed: lost
    path = recorder.path
    data = path.read_bytes()
    assert [r["step"] for r in runs.read_run_records(tmp_path / "cut")] == list(range(50))
    path.write_bytes(data[:-9])  # the last flushed block cut: up to the last whole line, no error
    kept = [r["step"] for r in runs.read_run_records(path)]
    assert 0 < len(kept) < 50 and kept == list(range(len(kept)))
    with pytest.raises(zlib.error):
        zlib.decompress(data[:-9], wbits=31)  # as a plain reader would fail


def recorded_run(directory, steps: int) -> list[float]:
    """A run's record as its hub writes it (``RunRecorder``), with losses that do not compress to nothing."""
    from optwatch.hub.recorder import RunRecorder

    recorder = RunRecorder(directory, {"run_id": directory.name, "script": "train.py", "start": 1.0})
    losses = [1 + (s * 7919 % 1000) / 1000 for s in range(steps)]
    hello = {"v": 1, "kind": "hello", "rank": 0, "time": 1.0, "run_id": directory.name, "world_size": 1}
    step = {"v": 1, "kind": "step", "rank": 0}
    end = {"v": 1, "kind": "end", "rank": 0, "time": 1.0 + steps, "steps": steps, "exit_code": 0}
    recorder.add([hello, *({**step, "time": 1.0 + s, "step": s, "loss": losses[s]} for s in range(steps)), end])
    recorder.close("finished", 0)
    return losses


def test_a_record_whose_gzip_checksum_fails_says_its_bytes_were_altered_not_where(tmp_path):
    """Garbled bytes can inflate (into other bytes) until the checksum at the end: the warning named that last
    byte as where the damage was. It says what the checksum tells: bytes before it were altered."""
    import zlib

    from optwatch import protocol

    lines = [protocol.record_to_json_line(protocol.make_record(protocol.STEP, 0, step=i, loss=1.0)) for i in range(50)]
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    data = bytearray(b"".join(packer.compress((line + "\n").encode()) for line in lines) + packer.flush())
    data[-8] ^= 0xFF  # the CRC-32 of the trailer
    (tmp_path / runs.RECORD_NAME).write_bytes(bytes(data))
    said: list[str] = []
    records = list(runs.read_run_records(tmp_path, said.append))
    assert [r["step"] for r in records] == list(range(50))
    assert len(said) == 1 and "its gzip checksum, at byte" in said[0] and "says bytes before it were altered" in said[0]


def test_a_record_garbled_in_the_middle_replays_up_to_the_damage_and_says_so(tmp_path, monkeypatch):
    """200 bytes garbled in the middle of the gzip stream: the records before them replay and a line says
    from which line on the record is damaged; the dashboard shows them too, with that line."""
    losses = recorded_run(tmp_path / "run", 3000)
    record = tmp_path / "run" / runs.RECORD_NAME
    data = bytearray(record.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 200] = bytes((b * 37 + 11) % 256 for b in range(200))
    record.write_bytes(bytes(data))
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    replay = optwatch("replay", "--headless", "run", env=env)
    assert replay.returncode == 0, replay.stderr
    [warning] = replay.stderr.splitlines()
    assert warning.startswith(f"optwatch: warning: {record} is damaged from line ")
    last = int(warning.split("(up to step ")[1].split()[0])
    assert f"(up to step {last} of the run's 3000)" in warning
    assert 0 < last < 2999 and "after it skipped" in warning
    assert f"step {last} ({last + 1} steps) | loss {losses[last]:.4g} " in replay.stdout

    from optwatch import cli
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.series_chart import SeriesChart

    started = []
    monkeypatch.setattr(OptwatchApp, "run", lambda app: started.append(app))
    monkeypatch.setattr(cli, "_headless_without_a_terminal", lambda args: None)  # (the app run below is headless)
    monkeypatch.setenv("OPTWATCH_RUNS_DIR", str(tmp_path))
    assert cli.main(["replay", "run"]) == 0
    [app] = started

    async def look():
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.3)
            chart = app.query_one("#loss-chart", SeriesChart)
            assert chart.series and chart.series[-1][1][-1] == last
            assert [n.message for n in app._notifications] == [warning.removeprefix("optwatch: warning: ")]

    asyncio.run(look())


def test_a_record_cut_short_says_where_it_ends_unless_its_run_is_still_being_written(tmp_path):
    """A record cut to 3 KB (a copy cut short, a kill -9 of the job): it replays up to the cut and says so, with
    the steps the run made; a live run's record, whose stream has no end yet, is not damaged."""
    losses = recorded_run(tmp_path / "run", 3000)
    record = tmp_path / "run" / runs.RECORD_NAME
    record.write_bytes(record.read_bytes()[:3000])
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    replay = optwatch("replay", "--headless", "run", env=env)
    assert replay.returncode == 0, replay.stderr
    [warning] = replay.stderr.splitlines()
    last = int(warning.split("cut at step ")[1].split()[0])
    assert warning == (
        f"optwatch: warning: {record}: it ends early, cut at step {last} of the run's 3000: "
        f"replaying the {last + 2} records"  # the hello and steps 0 to last
    )
    assert f"step {last} ({last + 1} steps) | loss {losses[last]:.4g} " in replay.stdout
    summary = json.loads((tmp_path / "run" / runs.SUMMARY_NAME).read_text())
    runs.write_summary(tmp_path / "run", {**summary, "status": "running", "hub_pid": os.getpid()})
    live = optwatch("replay", "--headless", "run", env=env)
    assert live.returncode == 0 and live.stderr == "" and f"step {last} " in live.stdout


def test_a_recompressed_record_is_not_cut_and_a_whole_gzip_cut_mid_line_is(tmp_path):
    """`zcat record.jsonl.gz | gzip -9`: smaller than run.json's size, so `optwatch runs` said it ended early at
    its last step ("at step 699 (the run made 700)"). And a closed gzip stream whose text stops in the middle of
    a line (a copy cut, then compressed again) replayed with no word that it was cut."""
    import gzip

    recorded_run(tmp_path / "again", 700)
    record = tmp_path / "again" / runs.RECORD_NAME
    record.write_bytes(gzip.compress(gzip.decompress(record.read_bytes()), compresslevel=9))
    losses = recorded_run(tmp_path / "cut", 700)
    record = tmp_path / "cut" / runs.RECORD_NAME
    text = gzip.decompress(record.read_bytes())
    record.write_bytes(gzip.compress(text[: text.index(b'"step":105') + 5]))
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    listing = optwatch("runs", env=env).stdout
    assert [line for line in listing.splitlines() if line.startswith("*")] == [
        "* cut: its record ends early, at step 104 (the run made 700)"
    ], listing
    replay = optwatch("replay", "--headless", "cut", env=env)
    assert replay.returncode == 0, replay.stderr
    assert "it ends early, cut at step 104 of the run's 700" in replay.stderr, replay.stderr
    assert f"step 104 (105 steps) | loss {losses[104]:.4g} " in replay.stdout


def test_runs_without_a_readable_run_json_or_with_a_record_cut_short_are_listed_from_their_record(tmp_path):
    """run.json lost or garbled: the run is still listed, with what its record says, marked so, and replayed by
    a prefix of its id; a record cut shorter than run.json says: listed with the steps it holds."""
    losses = {name: recorded_run(tmp_path / name, steps) for name, steps in (("lost-a", 40), ("garbled-b", 50))}
    losses["cut-c"] = recorded_run(tmp_path / "cut-c", 3000)
    (tmp_path / "lost-a" / runs.SUMMARY_NAME).unlink()
    (tmp_path / "garbled-b" / runs.SUMMARY_NAME).write_text('{"run_id": "garb')
    record = tmp_path / "cut-c" / runs.RECORD_NAME
    record.write_bytes(record.read_bytes()[:3000])
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    listing = optwatch("runs", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:] if not line.startswith("*")}
    assert rows["lost-a"][3:6] == ["40", f"{losses['lost-a'][-1]:.4g}", "finished*"]
    assert rows["garbled-b"][3:6] == ["50", f"{losses['garbled-b'][-1]:.4g}", "finished*"]
    held = int(rows["cut-c"][3])
    assert 0 < held < 3000 and rows["cut-c"][4:6] == [f"{losses['cut-c'][held - 1]:.4g}", "finished*"]
    notes = [line for line in listing.stdout.splitlines() if line.startswith("*")]
    assert sorted(notes) == [
        f"* cut-c: its record ends early, at step {held - 1} (the run made 3000)",
        "* garbled-b: run.json unreadable: figures read from its record",
        "* lost-a: run.json missing: figures read from its record",
    ]
    replay = optwatch("replay", "--headless", "lost", env=env)
    assert replay.returncode == 0, replay.stderr
    assert f"step 39 (40 steps) | loss {losses['lost-a'][-1]:.4g} " in replay.stdout
    listed = {entry["run_id"]: entry for entry in json.loads(optwatch("runs", "--json", env=env).stdout)}
    assert listed["lost-a"]["note"] == "run.json missing: figures read from its record"


def test_per_layer_records_are_thinned_as_the_run_grows(tmp_path):
    from optwatch.hub.recorder import LAYERS_KEPT_AT_FULL_RATE, RunRecorder

    recorder = RunRecorder(tmp_path / "layers", {"run_id": "layers"})
    layers = {"v": 1, "kind": "layers", "rank": 0, "time": 1.0, "names": ["w"], "numel": [1], "grad_norm": [1.0]}
    total = 20 * LAYERS_KEPT_AT_FULL_RATE
    recorder.add([{**layers, "step": s} for s in range(total)])
    recorder.close("finished", 0)
    kept = [r["step"] for r in runs.read_run_records(recorder.path) if r["kind"] == protocol.LAYERS]
    assert kept[:LAYERS_KEPT_AT_FULL_RATE] == list(range(LAYERS_KEPT_AT_FULL_RATE))
    assert len(kept) < 3 * LAYERS_KEPT_AT_FULL_RATE  # logarithmic in the run's length, not linear
    assert json.loads((tmp_path / "layers" / runs.SUMMARY_NAME).read_text())["status"] == "finished"


@pytest.mark.xdist_group("two_runs")  # one worker builds the module's two_runs
async def test_a_past_run_is_drawn_as_a_baseline_under_the_live_curve(two_runs, monkeypatch):
    from conftest import wait_for_ui
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.run_picker import RunPicker
    from optwatch.app.widgets.series_chart import SeriesChart
    from optwatch.runs_cli import load

    root, env, printed = two_runs
    monkeypatch.setenv("OPTWATCH_RUNS_DIR", str(root))
    first, second = runs.list_runs(root)
    store, _ = load(second.run_id)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        chart = app.query_one("#loss-chart", SeriesChart)
        await pilot.press("B")
        await wait_for_ui(pilot, lambda: isinstance(app.screen, RunPicker))
        assert len(app.screen.entries) == 1  # the run on screen is not offered as its own baseline
        await pilot.press("down", "enter")
        await wait_for_ui(pilot, lambda: chart.series and chart.series[0][0] == "baseline")
        assert chart.title.endswith(f" · baseline {first.run_id}")  # (in the legend it hid the curve)
        _, steps, losses, colour = chart.series[0]
        assert steps == list(range(25)) and losses == printed["0.05"] and colour == "gray"
        assert chart.series[1][2] == printed["0.2"]  # the run's own loss, drawn over it
        await pilot.press("B")
        await wait_for_ui(pilot, lambda: isinstance(app.screen, RunPicker))
        await pilot.press("enter")  # "no baseline"
        await wait_for_ui(pilot, lambda: not chart.series[0][0].startswith("baseline"))


async def test_the_baseline_picker_shows_a_run_that_ended_in_nan_as_nan_as_optwatch_runs_does(tmp_path, monkeypatch):
    from conftest import wait_for_ui
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.run_picker import RunPicker
    from optwatch.hub.recorder import RunRecorder
    from optwatch.runs_cli import load

    step = {"v": 1, "kind": "step", "rank": 0, "time": 1.0}
    diverged = RunRecorder(tmp_path / "diverged", {"run_id": "diverged", "start": 1.0})
    diverged.add([{**step, "step": s, "loss": 0.5 if s < 20 else math.nan} for s in range(30)])
    diverged.close("finished", 0)
    recorded_run(tmp_path / "mine", 10)
    monkeypatch.setenv("OPTWATCH_RUNS_DIR", str(tmp_path))
    [row] = [line for line in optwatch("runs").stdout.splitlines() if line.startswith("diverged")]
    assert row.split()[4] == "nan"
    store, _ = load("mine")
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("B")
        await wait_for_ui(pilot, lambda: isinstance(app.screen, RunPicker))
        labels = [str(option.prompt) for option in app.screen.query_one("#picker-list").options]
        [label] = [text for text in labels if "diverged" in text]
        assert "  30 steps  loss nan  finished" in label


def test_a_hub_started_again_for_a_run_writes_the_next_part_and_keeps_the_start(tmp_path):
    from optwatch.hub.recorder import RunRecorder

    step = {"v": 1, "kind": "step", "rank": 0, "time": 1.0}
    first = RunRecorder(tmp_path / "run", {"run_id": "run", "start": 100.0})
    first.add([{**step, "step": s, "loss": 1.0} for s in range(5)])
    first.flush()
    first._write_summary()  # then the hub is killed: no close, no end of stream
    again = RunRecorder(tmp_path / "run", {"run_id": "run", "start": 200.0})
    again.add([{**step, "step": s, "loss": 2.0} for s in range(5, 8)])
    again.close("finished", 0)
    assert [p.name for p in runs.record_parts(tmp_path / "run")] == ["record.jsonl.gz", "record-2.jsonl.gz"]
    assert [r["step"] for r in runs.read_run_records(tmp_path / "run")] == list(range(8))
    summary = json.loads((tmp_path / "run" / runs.SUMMARY_NAME).read_text())
    assert summary["start"] == 100.0 and summary["steps"] == 8 and summary["status"] == "finished"


@pytest.mark.parametrize(
    ("end", "exit_code", "status", "recorded_code", "error"),
    [
        ("normal", 0, "finished", 0, None),
        ("thread", 0, "finished", 0, None),  # (python's exit stays 0 after an exception in a thread)
        ("raise", 1, "failed (exit 1)", 1, "RuntimeError: the batch was bad"),
        ("exit", 3, "ended", None, None),  # sys.exit(3): its code is kept from the process's exit handlers
    ],
)
def test_a_run_started_with_python_is_recorded_as_it_ended_never_finished_unless_known(
    tmp_path, end, exit_code, status, recorded_code, error
):
    """A plain ``python`` script calling ``optwatch.watch`` was recorded "finished", exit 0, whatever its end:
    an uncaught exception (exit 1) and ``sys.exit(3)`` alike. The process's own exit status is the truth here;
    where the record cannot know it (sys.exit), it says "ended" with no exit code, never 0."""
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    script = subprocess.run(
        [sys.executable, str(SCRIPTS / "watch_ends.py"), "--end", end],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert script.returncode == exit_code and "STEPS 5" in script.stdout, script.stderr[-2000:]
    if end == "raise":  # printed as python prints it: nothing of optwatch's in the way
        assert script.stderr.rstrip().endswith("\nRuntimeError: the batch was bad"), script.stderr[-2000:]
        assert "Traceback (most recent call last):" in script.stderr
    [entry] = wait_for(lambda: [e for e in runs.list_runs(tmp_path) if e.summary.get("status") != "running"])
    assert (entry.status, entry.summary["exit_code"], entry.summary["steps"]) == (status, recorded_code, 5)
    [end_record] = [r for r in runs.read_run_records(entry.directory) if r["kind"] == protocol.END]
    assert (end_record["exit_code"], end_record.get("error")) == (recorded_code, error)
    # What the record alone says (a run.json lost), and an attached dashboard's header: never "exit None".
    assert runs.summary_from_record(entry.directory)["status"] == status
    header = {"finished": "finished (exit 0)", "ended": "ended (its exit code unknown)"}.get(status, f"failed: {error}")
    assert ended_status([end_record]) == header
