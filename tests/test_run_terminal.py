"""`optwatch run` with its dashboard, in a real terminal (a pty): what the terminal shows once it closes, and
the exit code."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

from conftest import ROOT, SCRIPTS, live_jobs, wait_for, wait_for_steps


def in_a_terminal(*args: str) -> tuple[subprocess.Popen, int]:
    controller, terminal = pty.openpty()
    os.set_blocking(controller, False)
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    process = subprocess.Popen(
        [sys.executable, "-m", "optwatch", *args],
        cwd=ROOT,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    return process, controller


def read_until_exit(process: subprocess.Popen, controller: int, timeout_s: float = 60.0) -> str:
    """Everything the terminal showed until the process exited, with the escape sequences taken out."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                seen += os.read(controller, 65536)
            except OSError:  # the terminal's other end closed
                break
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    return re.sub(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>])", b"", seen).decode(
        errors="replace"
    )


def quit_with_y(process: subprocess.Popen, controller: int) -> str:
    """Once the run has made a few steps: `q`, then `y` (stop the training); what the terminal showed."""
    try:
        [job] = wait_for(live_jobs)
        wait_for_steps(job, 5)
        time.sleep(1.0)  # the dashboard is up and reading keys
        os.write(controller, b"q")
        time.sleep(1.0)
        os.write(controller, b"y")
        return read_until_exit(process, controller)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)


def test_quitting_with_y_stops_the_run_says_so_and_exits_as_the_script_did():
    process, controller = in_a_terminal("run", str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.02")
    shown = quit_with_y(process, controller)
    assert process.returncode == 130, shown[-2000:]  # a Ctrl-C's, as `python script.py` gives it
    assert re.search(r"optwatch: the run was stopped at step \d+, exit 130", shown), shown[-2000:]


def test_sigterm_to_the_dashboards_optwatch_run_lets_the_script_save_and_ends_with_it(tmp_path):
    """A scheduler's preemption (SIGTERM to `optwatch run`) ended the dashboard at once: the training, in a
    session of its own, ran on unwatched, and its own SIGTERM handler never saved a checkpoint."""
    import signal

    saved = tmp_path / "saved"
    process, controller = in_a_terminal("run", str(SCRIPTS / "signal_handlers.py"), "--saved", str(saved))
    try:
        [job] = wait_for(live_jobs)
        wait_for_steps(job, 5)
        time.sleep(1.0)  # the dashboard is up
        process.send_signal(signal.SIGTERM)
        shown = read_until_exit(process, controller, timeout_s=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    assert process.returncode == 0, shown[-2000:]  # the script's own exit, after its handler
    assert saved.read_text() == "SIGTERM"
    assert not live_jobs()


def test_quitting_leaves_what_the_script_started_on_its_way_out_to_finish(tmp_path):
    """After `q`, `y` the script's process group was killed, though it had ended on the Ctrl-C: the upload its
    handler started in a child process died with it (under python it finishes)."""
    uploaded = tmp_path / "uploaded"
    process, controller = in_a_terminal("run", str(SCRIPTS / "uploads_at_exit.py"), "--uploaded", str(uploaded))
    shown = quit_with_y(process, controller)
    assert process.returncode == 130, shown[-2000:]
    assert wait_for(uploaded.exists, timeout_s=10)


def test_a_script_that_fails_under_the_dashboard_leaves_its_traceback_on_the_terminal(tmp_path):
    """After the dashboard closed on a crashed run, the terminal showed nothing of the traceback (it was only in
    the Log tab), where `python script.py` leaves it on the terminal."""
    script = tmp_path / "fails.py"
    script.write_text(
        "import time, torch\nmodel = torch.nn.Linear(4, 1)\nopt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(40):\n    opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()\n"
        "    time.sleep(0.05)\nraise ValueError('the data ran out at step 40')\n"
    )
    process, controller = in_a_terminal("run", str(script))
    try:
        [job] = wait_for(live_jobs)
        wait_for(lambda: not live_jobs() or None, timeout_s=60)  # the run failed and its hub went
        time.sleep(1.0)
        os.write(controller, b"q")  # (the run is over: q quits at once)
        shown = read_until_exit(process, controller)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    assert process.returncode == 1, shown[-2000:]
    after = shown[shown.rfind("optwatch: the script failed (exit 1)") :]
    assert "Traceback (most recent call last):" in after and "ValueError: the data ran out at step 40" in after, shown[
        -3000:
    ]
