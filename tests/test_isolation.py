"""What the training must never feel, and what other users must never see."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SCRIPTS, live_jobs, optwatch, wait_for
from optwatch.wire.runtime import pid_alive


def test_killing_the_viewer_does_not_touch_the_training(runtime_dir):
    viewer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optwatch",
            "run",
            "--headless",
            str(SCRIPTS / "plain_train.py"),
            "--steps",
            "60",
            "--sleep",
            "0.05",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    [job] = wait_for(live_jobs)
    time.sleep(0.5)
    viewer.send_signal(signal.SIGKILL)
    viewer.wait()
    # The training goes on to its end, with its output intact, and no dead job is listed afterwards.
    wait_for(lambda: not pid_alive(job["pid"]), timeout_s=60)
    stdout = (Path(job["run_dir"]) / "stdout.log").read_text()
    assert "step 59 loss" in stdout
    assert "Traceback" not in (Path(job["run_dir"]) / "stderr.log").read_text()
    assert live_jobs() == []
    assert not Path(job["run_dir"]).exists()


def test_run_files_and_sockets_are_private(runtime_dir):
    viewer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optwatch",
            "run",
            "--headless",
            str(SCRIPTS / "plain_train.py"),
            "--steps",
            "40",
            "--sleep",
            "0.05",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        [job] = wait_for(live_jobs)
        run_dir = Path(job["run_dir"])
        # (The job is listed once its hub is up; the training's output log comes a moment later.)
        wait_for(lambda: {"pub.sock", "ctl.sock", "info.json", "stdout.log"} <= {p.name for p in run_dir.iterdir()})
        assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        for path in run_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    finally:
        assert viewer.wait(60) == 0


def test_import_boundaries():
    """`import optwatch` stays light; the dashboard never pulls in torch; the probe never textual."""
    checks = {
        "import optwatch, optwatch.cli, optwatch.protocol, optwatch.store": ("textual", "torch"),
        "import optwatch, optwatch.integrations": ("torch", "lightning", "transformers"),
        "import optwatch.app.app": ("torch",),
        "import optwatch.probe.probe": ("textual",),
        "import optwatch.hub.server": ("textual", "torch"),
    }
    for statement, forbidden in checks.items():
        code = f"import sys; {statement}; print([m for m in {forbidden!r} if m in sys.modules])"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "[]", (statement, result.stdout)


OTHER_UID = 12345

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="only root can give a file to another user (os.chown)")


def plant_job(run_dir: Path, owner: int | None = None, info_mode: int = 0o600) -> None:
    """What another user could leave where a viewer looks for jobs: a run directory whose info names a live
    process (this one) and sockets in that directory, old enough that `ls` would clean it if it were ours."""
    run_dir.mkdir(mode=0o700)
    info = {
        "run_id": run_dir.name,
        "pid": os.getpid(),
        "script": "train.py",
        "run_dir": str(run_dir),
        "start_time": time.time(),
        "endpoints": {"pub": f"ipc://{run_dir}/pub.sock", "ctl": f"ipc://{run_dir}/ctl.sock"},
    }
    (run_dir / "info.json").write_text(json.dumps(info))
    os.chmod(run_dir / "info.json", info_mode)
    for path in (run_dir / "info.json", run_dir):
        if owner is not None:
            os.chown(path, owner, owner)
        os.utime(path, (time.time() - 3600, time.time() - 3600), follow_symlinks=False)


def tree(path: Path) -> list[str]:
    return sorted(str(p) for p in path.rglob("*"))


def refusals(runtime: Path, monkeypatch) -> dict[str, subprocess.CompletedProcess[str]]:
    monkeypatch.setenv("OPTWATCH_RUNTIME_DIR", str(runtime))
    return {
        "ls": optwatch("ls"),
        "attach": optwatch("attach", "--headless", "--duration", "1"),
        "ctl": optwatch("ctl", "planted", "stop"),
        "run": optwatch("run", "--headless", str(SCRIPTS / "plain_train.py"), "--steps", "1"),
    }


@needs_root
def test_a_runtime_dir_of_another_user_is_refused_in_one_line_and_left_alone(tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    plant_job(foreign / "planted")
    os.chown(foreign, OTHER_UID, OTHER_UID)
    before = tree(foreign)
    for command, result in refusals(foreign, monkeypatch).items():
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"optwatch: refusing {foreign}: it belongs to uid {OTHER_UID}, not to you (uid 0); "
            "set OPTWATCH_RUNTIME_DIR to a directory of your own"
        ], command
        assert result.stdout == "", command
    assert tree(foreign) == before
    assert foreign.stat().st_uid == OTHER_UID and stat.S_IMODE(foreign.stat().st_mode) == 0o700


def test_a_runtime_dir_that_is_a_symlink_is_refused_in_one_line_and_left_alone(tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    plant_job(target / "planted")
    link = tmp_path / "rt"
    link.symlink_to(target)
    before = tree(target)
    for command, result in refusals(link, monkeypatch).items():
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"optwatch: refusing {link}: it is a symbolic link (to {target}); "
            "set OPTWATCH_RUNTIME_DIR to a directory of your own"
        ], command
    assert tree(target) == before and link.is_symlink()


def test_the_default_runtime_dir_is_checked_like_a_configured_one(monkeypatch, tmp_path):
    """/tmp/optwatch-<uid> is where another user can get first; it is refused the same way."""
    from optwatch.wire import runtime

    monkeypatch.delenv("OPTWATCH_RUNTIME_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert runtime.runtime_root() == Path(f"/tmp/optwatch-{os.getuid()}")
    monkeypatch.setattr(runtime, "runtime_root", lambda: tmp_path / "rt")
    (tmp_path / "rt").symlink_to(tmp_path)
    with pytest.raises(runtime.RuntimeDirError, match="is a symbolic link"):
        runtime.list_jobs()
    with pytest.raises(runtime.RuntimeDirError, match="is a symbolic link"):
        runtime.make_run_dir("x")


def test_an_open_runtime_dir_of_ours_is_closed(runtime_dir):
    from optwatch.wire import runtime

    runtime_dir.mkdir(mode=0o700)
    os.chmod(runtime_dir, 0o755)
    assert runtime.list_jobs() == []
    assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700


@needs_root
def test_run_dirs_and_info_files_not_plainly_ours_are_skipped_and_kept(runtime_dir, tmp_path):
    runtime_dir.mkdir(mode=0o700)
    plant_job(runtime_dir / "planted", owner=None)
    os.chown(runtime_dir / "planted" / "info.json", OTHER_UID, OTHER_UID)
    plant_job(runtime_dir / "theirs", owner=OTHER_UID)
    plant_job(runtime_dir / "readable", info_mode=0o644)
    plant_job(runtime_dir / "opendir")
    os.chmod(runtime_dir / "opendir", 0o755)
    plant_job(tmp_path / "outside")
    (runtime_dir / "linked").symlink_to(tmp_path / "outside")
    plant_job(runtime_dir / "infolink")
    (runtime_dir / "infolink" / "info.json").rename(tmp_path / "info.json")
    (runtime_dir / "infolink" / "info.json").symlink_to(tmp_path / "info.json")
    before = tree(runtime_dir) + tree(tmp_path)

    assert live_jobs() == []
    assert optwatch("ls").stdout == "no running optwatch jobs\n"
    attach = optwatch("attach", "--headless", "--duration", "1")
    assert attach.returncode == 2 and "no running optwatch jobs" in attach.stderr
    for name in ("planted", "theirs", "readable", "opendir", "linked", "infolink"):
        ctl = optwatch("ctl", name, "stop")
        assert ctl.returncode == 2 and f"no running job matches {name!r}" in ctl.stderr, name
    assert tree(runtime_dir) + tree(tmp_path) == before


def test_a_run_file_written_by_two_threads_at_once_is_always_whole_and_private(tmp_path):
    """A process may write one of its run's files from two threads at once (a hub serving its run from a
    thread, as the tests' does, beside another writer): each write lands whole, none fails, the file stays
    the owner's alone."""
    import threading

    from optwatch.wire.runtime import write_private_file

    path = tmp_path / "info.json"
    failures: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for count in range(300):
                write_private_file(path, json.dumps({"writer": name, "count": count, "pad": "x" * 4000}))
        except BaseException as exc:  # noqa: BLE001 (any failure is the test's)
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert json.loads(path.read_text())["count"] == 299
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["info.json"]
