"""What the training must never feel, and what other users must never see."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, SCRIPTS, live_jobs, wait_for
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
        assert stat.S_IMODE(runtime_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
        for path in run_dir.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        assert {"pub.sock", "ctl.sock", "info.json", "stdout.log"} <= {p.name for p in run_dir.iterdir()}
    finally:
        assert viewer.wait(60) == 0


def test_import_boundaries():
    """`import optwatch` stays light; the dashboard never pulls in torch; the probe never textual."""
    checks = {
        "import optwatch, optwatch.cli, optwatch.protocol, optwatch.store": ("textual", "torch"),
        "import optwatch.app.app": ("torch",),
        "import optwatch.probe.probe": ("textual",),
    }
    for statement, forbidden in checks.items():
        code = f"import sys; {statement}; print([m for m in {forbidden!r} if m in sys.modules])"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert result.stdout.strip() == "[]", (statement, result.stdout)


def test_a_foreign_runtime_dir_is_refused(tmp_path, monkeypatch):
    from optwatch.wire import runtime

    if os.getuid() != 0:
        return  # only root can make a directory owned by someone else here
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 12345, 12345)
    monkeypatch.setenv("OPTWATCH_RUNTIME_DIR", str(foreign))
    try:
        runtime.make_run_dir("x")
    except runtime.RuntimeDirError as exc:
        assert "belongs to uid 12345" in str(exc)
    else:
        raise AssertionError("a directory owned by another user was accepted")
