"""The dashboard in a browser: `optwatch attach --web` behind a token, driven by a real headless Chromium."""

from __future__ import annotations

import asyncio
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, SCRIPTS, start_training, steps_of, wait_for

# The page draws the terminal on a canvas: to read the screen as text the test keeps a reference to the
# page's xterm.js terminal (textual-serve's script makes one per page and holds it privately).
TERMINAL = re.compile(r"this\.terminal=new (\w+)\.Terminal\(")
SCREEN_JS = """() => {
    const terminal = window.optwatchTerminal;
    if (!terminal) return "";
    const buffer = terminal.buffer.active, lines = [];
    for (let row = 0; row < terminal.rows; row++)
        lines.push(buffer.getLine(buffer.viewportY + row).translateToString(true));
    return lines.join("\\n");
}"""


def chromium_path() -> str | None:
    """Debian's chromium (scripts/setup.sh installs it), else a browser Playwright installed itself."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            bundled = playwright.chromium.executable_path
    except Exception:
        return None
    return bundled if os.path.exists(bundled) else None


@pytest.fixture
def chromium():
    """Where the browser is (the test is skipped without one), and Playwright's sync API to drive it."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (scripts/setup.sh)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium here: scripts/setup.sh installs Debian's (apt-get install chromium)")
    return playwright_api, executable


def serve(run_id: str) -> tuple[subprocess.Popen, str]:
    """`optwatch attach --web RUN --port 0`, and the URL it prints."""
    server = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "attach", "--web", run_id, "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([server.stdout], [], [], 60)
    line = server.stdout.readline() if ready else ""
    found = re.search(r"is at (http://127\.0\.0\.1:\d+/\?token=[0-9a-f]+)$", line.strip())
    if not found:
        server.kill()
        raise AssertionError(f"no URL from `optwatch attach --web`: {line!r} {server.communicate()[1][-2000:]}")
    return server, found.group(1)


def status_of(url: str, headers: dict | None = None) -> tuple[int, str, object]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode(), refused.headers


def websocket_status(url: str, headers: dict | None = None) -> int:
    """The HTTP status a websocket handshake to ``url`` gets (101 when the socket opens)."""
    import aiohttp

    async def handshake() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, headers=headers or {}) as socket:
                    await socket.close()
                    return 101
            except aiohttp.WSServerHandshakeError as refused:
                return refused.status

    return asyncio.run(handshake())


def open_tab(url: str) -> None:
    """What a browser tab does, without the browser: open the page's websocket and hold it until it closes."""
    import aiohttp

    base, token = url.split("/?token=")

    async def hold() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws{base[4:]}/ws?token={token}&width=80&height=24") as socket:
                async for _ in socket:
                    pass

    threading.Thread(target=asyncio.run, args=(hold(),), daemon=True).start()


def open_dashboard(browser, url: str):
    """A new browser tab on ``url``, its terminal readable by ``screen(page)``."""
    page = browser.new_page(viewport={"width": 1000, "height": 600})
    hooked = []

    def hook_terminal(route) -> None:
        response = route.fetch()
        script, count = TERMINAL.subn(r"this.terminal=window.optwatchTerminal=new \1.Terminal(", response.text())
        hooked.append(count)
        route.fulfill(response=response, body=script)

    page.route("**/static/js/textual.js", hook_terminal)
    page.goto(url)
    assert hooked == [1], "textual-serve's textual.js has changed: update TERMINAL in this test"
    return page


def screen(page) -> str:
    return page.evaluate(SCREEN_JS)


def dashboards_of(server: subprocess.Popen) -> list[psutil.Process]:
    """The `optwatch attach` dashboards the web server runs, one per open page."""
    return [p for p in psutil.Process(server.pid).children(recursive=True) if "attach" in p.cmdline()]


def script_losses(run_dir: Path) -> dict[int, float]:
    """What the training script printed: ``step N loss L`` per step."""
    text = (run_dir / "stdout.log").read_text()
    return {int(step): float(loss) for step, loss in re.findall(r"^step (\d+) loss (\S+)$", text, re.M)}


def job_records(endpoints: dict, until) -> list[dict]:
    """The job's records from its hub (a viewer's feed, as `optwatch attach` gets them) until ``until(records)``."""
    from optwatch.wire.subscriber import Feed

    feed = Feed(endpoints["pub"], endpoints["ctl"])
    seen: list[dict] = []
    try:
        wait_for(lambda: seen.extend(feed.poll(0.2)) or until(seen), timeout_s=30, interval_s=0)
    finally:
        feed.close()
    return seen


@pytest.fixture
def job():
    process = start_training(str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.1")
    yield process
    process.stop(grace_s=2)
    process.cleanup()


def test_the_dashboard_in_a_browser_is_the_terminal_one_behind_a_token(job, chromium, capsys):
    server, url = serve(job.run_id)
    base, token = url.split("/?token=")
    wrong = token[:-1] + ("1" if token[-1] == "0" else "0")  # off by one character
    try:
        # Without the token, or with a wrong one, nothing but a refusal: page, static files and websocket.
        for refused_url in (f"{base}/", f"{base}/?token={wrong}", f"{base}/static/js/textual.js"):
            status, body, _ = status_of(refused_url)
            assert status == 403 and body.startswith("optwatch: refused"), (refused_url, status, body[:200])
        ws_url = base.replace("http://", "ws://") + "/ws?width=80&height=24"
        assert websocket_status(ws_url) == 403
        assert websocket_status(f"{ws_url}&token={wrong}") == 403

        # With it, the page, and a cookie that lets the page's own requests in; but not another site's page.
        status, body, headers = status_of(url)
        assert status == 200 and "textual-terminal" in body
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        pair = cookie.split(";")[0]
        assert status_of(f"{base}/static/js/textual.js", {"Cookie": pair})[0] == 200
        assert websocket_status(ws_url, {"Cookie": pair, "Origin": "http://evil.example"}) == 403

        # Anywhere but on this machine's loopback, only when asked, and with the risk spelled out.
        from optwatch.cli import main

        assert main(["attach", "--web", job.run_id, "--web-host", "0.0.0.0", "--port", "0", "--duration", "0.2"]) == 0
        said = capsys.readouterr()
        assert "plain HTTP: the token crosses the network in clear" in said.err and "ssh -L" in said.err
        assert re.search(r"is at http://[^/]+:\d+/\?token=[0-9a-f]{48}$", said.out.splitlines()[0])

        # (Playwright's sync API runs an event loop of its own: every asyncio.run above comes first.)
        playwright_api, executable = chromium
        with playwright_api.sync_playwright() as playwright:
            # --no-sandbox: Chromium refuses to start as root (as in CI) with its sandbox on.
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
            page = open_dashboard(browser, url)
            other = open_dashboard(browser, url)  # a second tab watches too, with a dashboard process of its own
            shown = wait_for(lambda: re.search(r"Step +(\d+)[^\n]*\n Loss +(\d+\.\d+)", screen(page)), 30)
            step, loss = int(shown.group(1)), float(shown.group(2))
            printed = script_losses(Path(job.run_dir))
            recent = [printed[s] for s in range(step - 3, step + 1) if s in printed]
            assert any(math.isclose(loss, value, rel_tol=1e-3) for value in recent), (step, loss, recent)

            wait_for(lambda: "Loss" in screen(other), timeout_s=30)
            assert len(dashboards_of(server)) == 2
            other.close()

            page.locator(".xterm-helper-textarea").focus()
            page.keyboard.press("g")
            wait_for(lambda: "RMS gradient per layer" in screen(page), timeout_s=15)

            page.keyboard.press(":")
            wait_for(lambda: "Command (applied at the next step boundary)" in screen(page), timeout_s=15)
            page.keyboard.type("lr=0.01")
            wait_for(lambda: re.search(r"▊ +lr=0\.01 ", screen(page)), timeout_s=15)
            page.keyboard.press("Enter")

            # The job itself says so: its probe's event for the command, and its steps' learning rate after it.
            def sent(r: dict) -> bool:
                return r["kind"] == "event" and r.get("command") == "lr=0.01"

            endpoints = {"pub": job.pub_endpoint, "ctl": job.ctl_endpoint}
            [event] = [r for r in job_records(endpoints, lambda seen: any(map(sent, seen))) if sent(r)]
            assert event["status"] == "accepted" and event["source"] == "dashboard", event
            effective = event["effective_step"]
            later = job_records(endpoints, lambda seen: any(s["step"] > effective for s in steps_of(seen)))
            assert {s["lr"] for s in steps_of(later) if s["step"] >= effective} == {0.01}

            # Even a server killed with -9 takes the open page's dashboard with it, and nothing else: the job
            # trains on. (Ctrl+C, the gentle way, is in the test below.)
            dashboards = wait_for(lambda: len(dashboards_of(server)) == 1 and dashboards_of(server), timeout_s=10)
            server.kill()
            server.wait()
            gone, alive = psutil.wait_procs(dashboards, timeout=10)
            assert not alive
            browser.close()
        before = max(script_losses(Path(job.run_dir)))
        wait_for(lambda: max(script_losses(Path(job.run_dir))) > before + 5, timeout_s=15)
        assert job.poll() is None
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()


def test_web_flags_are_checked(capsys):
    from optwatch.cli import main

    for argv, said in (
        (["attach", "some-run", "--port", "9000"], "--port goes with --web"),
        (["attach", "some-run", "--web-host", "0.0.0.0"], "--web-host goes with --web"),
        (["attach", "--web", "some-run", "--headless"], "--web serves the dashboard: it takes no --headless"),
        (["run", "--web", "--record", "r.jsonl", str(SCRIPTS / "plain_train.py")], "it takes no --record"),
        (["attach", "--web", "no-such-run"], "no running job matches 'no-such-run'"),
    ):
        assert main(argv) == 2
        assert said in capsys.readouterr().err
    # A port past 65535: refused with the flags, before any job starts (it was a traceback, the job left running).
    with pytest.raises(SystemExit) as refused:
        main(["run", "--web", "--port", "99999", str(SCRIPTS / "plain_train.py")])
    assert refused.value.code == 2 and "argument --port: a port is 0 to 65535, got '99999'" in capsys.readouterr().err


def test_run_web_serves_the_job_it_starts_and_leaves_it_running_when_stopped():
    from optwatch.cli import main
    from optwatch.wire import runtime

    server = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--web", "--port", "0", str(SCRIPTS / "plain_train.py"),
         "--steps", "100000", "--sleep", "0.1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([server.stdout], [], [], 60)
        announced = server.stdout.readline() if ready else ""
        [job] = runtime.list_jobs()
        assert f"the dashboard of {job.run_id} is at http://127.0.0.1:" in announced, announced
        url = announced.split(" is at ")[1].strip()
        status, page, _ = status_of(url)
        assert status == 200 and f"optwatch {job.run_id}" in page
        open_tab(url)
        dashboards = wait_for(lambda: dashboards_of(server), timeout_s=30)
        before = steps_of(job_records(job.endpoints, steps_of))[-1]["step"]
        server.send_signal(signal.SIGINT)  # Ctrl+C: the server and the open tab's dashboard stop, the training goes on
        out, _ = server.communicate(timeout=30)
        assert server.returncode == 0
        assert f"left {job.run_id} running" in out
        assert not psutil.wait_procs(dashboards, timeout=10)[1]
        job_records(job.endpoints, lambda seen: any(s["step"] > before + 3 for s in steps_of(seen)))
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
        for left in runtime.list_jobs():
            main(["ctl", left.run_id, "stop"])
        wait_for(lambda: not runtime.list_jobs(), timeout_s=30)


def test_a_page_opened_after_the_run_ended_replays_its_record(job, tmp_path):
    """`optwatch run --web`: a page opened (or reloaded) once the run had ended stayed on the splash screen for
    good: its dashboard, `optwatch attach RUN`, found no running job. It replays the run's record instead."""
    from optwatch.web.tab import dashboard_command

    assert dashboard_command(job.run_id) == ["attach", job.run_id]  # live: attached
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "optwatch", "run", "--headless", str(SCRIPTS / "short.py"),
                           "--steps", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    [ended] = [path.name for path in tmp_path.iterdir() if path.name.startswith("short-")]
    command = dashboard_command(ended)
    assert command == ["replay", ended]
    replayed = subprocess.run([sys.executable, "-m", "optwatch", *command, "--headless"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert replayed.returncode == 0 and replayed.stdout.startswith("optwatch: final step 2 (3 steps)"), replayed
