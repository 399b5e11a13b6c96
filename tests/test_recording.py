"""Record files (`--record`): private whatever was there, never through a link, and a failing disk never
reaches the viewer, let alone the run."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from conftest import SCRIPTS, live_jobs, optwatch, read_jsonl, start_training, steps_of, wait_for_ui
from optwatch import protocol
from optwatch.store import RecordWriter

FULL = "No space left on device"


def test_recording_onto_an_existing_file_makes_it_private(tmp_path):
    record = tmp_path / "r.jsonl"
    record.write_text("an older recording\n")
    os.chmod(record, 0o644)
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "plain_train.py"), "--steps", "3")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert [s["step"] for s in steps_of(read_jsonl(record))] == [0, 1, 2]


def test_a_record_path_that_is_a_symlink_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "somebody-elses.txt"
    target.write_text("keep me\n")
    os.chmod(target, 0o644)
    link = tmp_path / "r.jsonl"
    link.symlink_to(target)
    result = optwatch("run", "--headless", "--record", str(link), str(SCRIPTS / "plain_train.py"), "--steps", "3")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"optwatch: cannot record to {link}: it is a symbolic link (to {target}); give the file itself"
    ]
    assert target.read_text() == "keep me\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert live_jobs() == []  # refused before any training started


@pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user (os.chown)")
def test_a_record_file_of_another_user_is_refused_untouched(tmp_path):
    record = tmp_path / "theirs.jsonl"
    record.write_text("their data\n")
    os.chmod(record, 0o666)
    os.chown(record, 12345, 12345)
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "plain_train.py"), "--steps", "3")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"optwatch: cannot record to {record}: it belongs to uid 12345; give a file of your own"
    ]
    assert record.read_text() == "their data\n" and stat.S_IMODE(record.stat().st_mode) == 0o666


def test_a_failed_write_stops_the_recording_and_never_raises():
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    mode = os.stat("/dev/full").st_mode
    writer = RecordWriter("/dev/full")
    step = protocol.make_record(protocol.STEP, 0, step=0, loss=1.0)
    writer.write([step])
    assert writer.failure == f"recording to /dev/full stopped: {FULL}; the run goes on"
    writer.write([step])  # nothing more is tried, nothing raised
    writer.close()
    assert writer.written == 0
    assert os.stat("/dev/full").st_mode == mode  # a device is the user's plumbing: its mode is left alone


@pytest.fixture
def small_disk(tmp_path):
    """A real file system with 256 KiB of room, mounted for the test (needs root, or CAP_SYS_ADMIN): about half
    of what the record of the run below needs (a 300-step run's record, ~270 KiB, may fit or not)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here to make a small file system")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a 256 KiB tmpfs is not permitted here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_a_batch_larger_than_the_room_left_keeps_every_record_that_went_out_whole(small_disk):
    """A fast run hands the recording hundreds of steps at once: when the disk fills in the middle of such a
    batch, the records written whole before that point stay, and the file replays up to the last of them."""
    path = small_disk / "r.jsonl"
    writer = RecordWriter(path)
    steps = [protocol.make_record(protocol.STEP, 0, step=i, loss=float(i), note="x" * 1000) for i in range(400)]
    writer.write(steps)  # ~400 KiB, on 256 KiB
    assert writer.failure == f"recording to {path} stopped: {FULL}; the run goes on"
    kept = [r["step"] for r in read_jsonl(path)]
    assert 100 < len(kept) < 400 and kept == list(range(len(kept)))
    assert writer.written == len(kept)
    assert path.read_bytes().endswith(b"\n")


def test_a_full_disk_stops_the_recording_once_and_the_run_goes_on(small_disk):
    record = small_disk / "r.jsonl"
    script = str(SCRIPTS / "plain_train.py")
    result = optwatch("run", "--headless", "--summary-every", "0.2", "--record", str(record), script, "--steps", "600")
    assert result.returncode == 0, result.stderr
    assert "step 599 loss" in result.stdout
    told = [line for line in result.stderr.splitlines() if "recording" in line]
    assert told == [f"optwatch: recording to {record} stopped: {FULL}; the run goes on"]
    assert any(line.startswith("optwatch: final step 599 ") for line in result.stderr.splitlines())
    # What was written up to the failure is whole records: it replays.
    steps = [s["step"] for s in steps_of(read_jsonl(record))]
    assert 0 < len(steps) < 600 and steps == list(range(len(steps)))
    replay = optwatch("replay", "--headless", str(record))
    assert replay.returncode == 0 and f"step {steps[-1]} " in replay.stdout


async def test_the_dashboard_says_once_that_recording_stopped():
    from optwatch.app.app import OptwatchApp
    from optwatch.session import ViewerSession

    process = start_training(str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.02")
    try:
        app = OptwatchApp(ViewerSession.for_process(process, writer=RecordWriter("/dev/full")))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for_ui(pilot, lambda: app.store.primary is not None and len(app.store.primary.steps) >= 10)
            assert [n.message for n in app._notifications] == [
                f"recording to /dev/full stopped: {FULL}; the run goes on"
            ]
            assert process.poll() is None
    finally:
        process.stop(grace_s=2)
        process.cleanup()
