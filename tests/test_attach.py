"""Attach to running jobs: DDP across ranks, TCP with a token, history, reconnection."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    EXAMPLES,
    ROOT,
    SCRIPTS,
    live_jobs,
    optwatch,
    read_jsonl,
    steps_of,
    wait_for,
    wait_for_steps,
    wait_for_ui,
)
from optwatch.store import Store


def start(*command: str) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_ddp_job_is_listed_attached_across_ranks_and_names_the_straggler(tmp_path):
    job = start(
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "optwatch", "run", str(EXAMPLES / "ddp.py"), "--steps", "300", "--slow-rank", "1",
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        assert listed["ranks"] == 2 and listed["script"].endswith("ddp.py")
        assert {"run_id", "pid", "script", "ranks", "endpoints"} <= set(listed)
        wait_for_steps(listed, 20)
        # A viewer that is killed with -9 mid-run changes nothing for the job.
        doomed = start(sys.executable, "-m", "optwatch", "attach", listed["run_id"], "--headless")
        time.sleep(3)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        record = tmp_path / "attach.jsonl"
        attached = optwatch(
            "attach", listed["run_id"][:8], "--headless", "--record", str(record), "--duration", "6", timeout=60
        )
        assert attached.returncode == 0, attached.stderr
        records = read_jsonl(record)
        for rank in (0, 1):
            steps = steps_of(records, rank)
            assert steps and steps[0]["step"] == 0, f"rank {rank}: history from the start of the run"
            assert [s["step"] for s in steps] == list(range(len(steps))), "no gaps, no repeats"
        stragglers = [r for r in records if r["kind"] == "alert" and r["type"] == "straggler"]
        assert stragglers and {r["rank"] for r in stragglers} == {1}, stragglers
        assert "rank 1 reaches backward last" in stragglers[0]["message"]
    finally:
        out, err = job.communicate(timeout=120)
    assert job.returncode == 0, err[-2000:]
    assert live_jobs() == []


def test_tcp_endpoint_needs_the_token_and_files_are_private(tmp_path, runtime_dir):
    job = start(
        sys.executable, "-m", "optwatch", "run", "--headless", "--listen", "127.0.0.1:0",
        str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.02",
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 3)
        endpoint = listed["endpoints"]["tcp"].removeprefix("tcp://")
        token = listed["token"]
        assert token and len(token) >= 24
        assert token in optwatch("ls").stdout
        [printed] = json.loads(optwatch("ls", "--json").stdout)  # the command's own JSON
        assert printed["run_id"] == listed["run_id"] and printed["token"] == token

        wrong = optwatch("attach", endpoint, "--token", "not-the-token", "--headless", "--duration", "1")
        assert wrong.returncode == 2 and wrong.stderr.splitlines()[-1] == (
            f"optwatch: the job at {endpoint} refused the token given with --token: a wrong token (`optwatch ls` on "
            "the job's machine shows the right one)"
        )
        assert "step" not in wrong.stdout
        missing = optwatch("attach", endpoint, "--headless", "--duration", "1")
        assert missing.returncode == 2 and "needs the job's token" in missing.stderr

        record = tmp_path / "tcp.jsonl"
        right = optwatch("attach", endpoint, "--token", token, "--headless", "--duration", "4", "--record", str(record))
        assert right.returncode == 0, right.stderr
        steps = [s["step"] for s in steps_of(read_jsonl(record))]
        assert len(steps) >= 3 and steps == list(range(len(steps)))  # history from step 0, then live

        run_dir = Path(listed["run_dir"])
        for path in [runtime_dir, run_dir, *run_dir.iterdir()]:
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        assert stat.S_IMODE((run_dir / "token").stat().st_mode) == 0o600
    finally:
        job.send_signal(signal.SIGINT)
        job.communicate(timeout=60)


TOKEN_WARNING = (
    "optwatch: warning: a token given with --token is visible to other users of this machine (`ps`); "
    "set OPTWATCH_TOKEN or use --token-file instead"
)


def test_the_token_comes_from_a_file_or_the_environment_and_on_the_command_line_with_a_warning(tmp_path, monkeypatch):
    """A token on the command line is in every local user's `ps`: attach and ctl read it from OPTWATCH_TOKEN or
    --token-file, and warn when it is given with --token."""
    job = start(
        sys.executable, "-m", "optwatch", "run", "--headless", "--listen", "127.0.0.1:0",
        str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.02",
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 3)
        endpoint, token = listed["endpoints"]["tcp"].removeprefix("tcp://"), listed["token"]
        watch = ("attach", endpoint, "--headless", "--duration", "1")
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)

        from_file = optwatch(*watch, "--token-file", str(token_file))
        assert from_file.returncode == 0, from_file.stderr
        assert "warning" not in from_file.stderr and "optwatch: final" not in from_file.stderr  # the run goes on
        # (The address attached to, which attaches again from the viewer's machine: the run's id would not.)
        assert from_file.stderr.splitlines()[-1].endswith(f"; the run goes on (optwatch attach {endpoint} "
                                                          "to watch it again)")  # fmt: skip
        on_the_line = optwatch(*watch, "--token", token)
        assert on_the_line.returncode == 0 and on_the_line.stderr.splitlines()[0] == TOKEN_WARNING
        both = optwatch(*watch, "--token", token, "--token-file", str(token_file))
        assert both.returncode == 2 and "not allowed with argument" in both.stderr
        unreadable = optwatch(*watch, "--token-file", str(tmp_path / "nothing"))
        assert unreadable.stderr.splitlines() == [
            f"optwatch: cannot read --token-file {tmp_path / 'nothing'}: No such file or directory"
        ]
        token_file.write_text("\n")
        empty = optwatch("ctl", endpoint, "lr=0.01", "--token-file", str(token_file))
        assert empty.returncode == 2 and empty.stderr.splitlines() == [f"optwatch: --token-file {token_file} is empty"]

        monkeypatch.setenv("OPTWATCH_TOKEN", token)
        from_env = optwatch("ctl", endpoint, "lr=0.01")
        assert from_env.returncode == 0 and from_env.stdout.startswith("lr=0.01: accepted, in effect from step ")
        assert from_env.stderr == ""
        monkeypatch.setenv("OPTWATCH_TOKEN", "not-the-token")
        wrong = optwatch(*watch)
        assert wrong.returncode == 2 and wrong.stderr.splitlines() == [
            f"optwatch: the job at {endpoint} refused the token from $OPTWATCH_TOKEN: a wrong token (`optwatch ls` "
            "on the job's machine shows the right one)"
        ]
    finally:
        job.send_signal(signal.SIGINT)
        job.communicate(timeout=60)


@pytest.mark.parametrize(("listen", "warned"), [("0.0.0.0:0", True), ("localhost:0", False)])
def test_listening_beyond_this_machine_is_warned_about_and_works(listen, warned):
    result = optwatch("run", "--headless", "--listen", listen, str(SCRIPTS / "plain_train.py"), "--steps", "3")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    if warned:
        assert warnings == [
            f"optwatch: warning: --listen {listen} is reachable from the network, guarded by the token alone "
            "(the traffic is encrypted, but anyone there can try); listen on 127.0.0.1 and forward the ports over "
            "SSH instead (ssh -L PORT:localhost:PORT -L PORT+1:localhost:PORT+1 HOST)"
        ]
    else:
        assert warnings == []
    assert "step 2 loss" in result.stdout
    # Where to attach, said once at the start: the endpoint, and the token's file (never the token itself).
    [said] = [line for line in result.stderr.splitlines() if line.startswith("optwatch: listening on ")]
    endpoint = said.split()[3]
    assert re.fullmatch(r"(0\.0\.0\.0|localhost|127\.0\.0\.1):\d+", endpoint), said
    assert f"to attach: optwatch attach {endpoint} --token-file " in said


def test_a_listen_host_that_does_not_resolve_is_refused_before_any_warning():
    result = optwatch("run", "--headless", "--listen", "no-such-host.invalid:0", str(SCRIPTS / "plain_train.py"))
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "optwatch: --listen no-such-host.invalid:0: unknown host 'no-such-host.invalid' (give an address of this "
        "machine, e.g. 127.0.0.1)"
    ]


def test_a_port_where_nothing_answers_is_said_so_not_refused(monkeypatch):
    port = free_port_triple()
    monkeypatch.setenv("OPTWATCH_TOKEN", "some-token")
    result = optwatch("ctl", f"127.0.0.1:{port}", "lr=0.01")
    assert result.returncode == 1 and result.stderr.splitlines() == [
        f"optwatch: no answer from the job at 127.0.0.1:{port} within 10 s; is the job still running, and is this "
        "its port? (`optwatch ls` on its machine)"
    ]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False),
     ("192.168.1.20", False), ("*", False)],
)  # fmt: skip
def test_which_listen_addresses_stay_on_this_machine(host, loopback):
    from optwatch.cli import is_loopback

    assert is_loopback(host) is loopback


def test_every_new_token_can_be_typed_after_token():
    """A token starting with "-" made `optwatch attach HOST:PORT --token <it>` fail as a missing value (one
    URL-safe token in 64 did)."""
    from optwatch.cli import build_parser
    from optwatch.wire.runtime import new_token

    tokens = [new_token() for _ in range(2000)]
    assert len(set(tokens)) == 2000 and all(len(t) >= 32 and not t.startswith("-") for t in tokens)
    for token in tokens[:50]:
        assert build_parser().parse_args(["attach", "127.0.0.1:1", "--token", token]).token == token


def test_a_viewer_that_leaves_while_the_hub_is_silent_does_not_say_the_run_goes_on():
    """The training killed without a word (SIGKILL) and its hub gone: "the run goes on" was false; the viewer
    cannot tell a dead run from a dead hub, so it says what it knows."""
    import time as clock

    from optwatch.headless import _left_line
    from optwatch.store import Store

    store = Store()
    hello = {"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "run_id": "r1", "script": "s.py"}
    store.ingest([hello, {"v": 1, "kind": "step", "rank": 0, "seq": 1, "time": 1.0, "step": 7, "loss": 1.0}])
    assert _left_line(store).endswith("; the run goes on (optwatch attach r1 to watch it again)")
    store.hub_gone_since = clock.monotonic() - 12
    assert _left_line(store) == (
        "optwatch: stopped watching at step 7; the job's hub has not answered for 12 s (optwatch attach r1 to "
        "watch it again)"
    )


def test_a_viewer_that_leaves_says_the_run_goes_on_not_that_it_ended():
    job = start(sys.executable, "-m", "optwatch", "run", "--headless", str(SCRIPTS / "plain_train.py"),
                "--steps", "100000", "--sleep", "0.02")  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 5)
        viewer = start(sys.executable, "-m", "optwatch", "attach", listed["run_id"], "--headless")
        time.sleep(3)
        viewer.send_signal(signal.SIGINT)
        _, said = viewer.communicate(timeout=30)
        assert viewer.returncode == 0, said
        assert "final" not in said
        assert re.fullmatch(
            rf"optwatch: stopped watching at step \d+; the run goes on \(optwatch attach {listed['run_id']} to "
            r"watch it again\)",
            said.splitlines()[-1],
        ), said
        assert job.poll() is None
    finally:
        job.send_signal(signal.SIGINT)
        job.communicate(timeout=60)


def test_attach_without_jobs_or_with_an_unknown_run_says_so():
    none = optwatch("attach", "--headless")
    assert none.returncode == 2 and "no running optwatch jobs" in none.stderr
    unknown = optwatch("attach", "nosuchrun", "--headless")
    assert unknown.returncode == 2 and "no running job matches 'nosuchrun'" in unknown.stderr


def test_an_empty_run_is_a_usage_error_not_the_only_job(tmp_path):
    """`optwatch ctl "" stop` (a variable that was not set) matched every run id as a prefix, and with one job
    running it stopped that job."""
    job = start(sys.executable, "-m", "optwatch", "run", "--headless", str(SCRIPTS / "plain_train.py"), "--steps",
                "400", "--sleep", "0.05")  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        for command in (("ctl", "", "stop"), ("ctl", " ", "stop"), ("attach", "", "--headless", "--duration", "1")):
            result = optwatch(*command)
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr.splitlines() == [
                "optwatch: RUN is empty: give a run id or a unique prefix of one (see `optwatch ls`)"
            ], command
        assert job.poll() is None and [j["run_id"] for j in live_jobs()] == [listed["run_id"]]
    finally:
        job.send_signal(signal.SIGINT)
        job.communicate(timeout=60)


def test_a_viewer_picks_the_job_up_again_after_a_restart(runtime_dir):
    """An elastic restart brings the job back on the same endpoint; the viewer carries on by itself."""
    from optwatch.session import ViewerSession
    from optwatch.wire import runtime
    from optwatch.wire.subscriber import Feed

    run_dir = runtime.make_run_dir("elastic")
    env = dict(os.environ, OPTWATCH_RUN_DIR=str(run_dir), OPTWATCH_RUN_ID="elastic")
    launch = [sys.executable, "-m", "optwatch.probe.launch", str(SCRIPTS / "plain_train.py"), "--sleep", "0.02"]
    session = ViewerSession(Feed(f"ipc://{run_dir}/pub.sock", f"ipc://{run_dir}/ctl.sock"))
    try:
        for attempt, steps in enumerate((30, 20)):
            job = subprocess.Popen([*launch, "--steps", str(steps)], env=env, stdout=subprocess.DEVNULL)

            def ended(attempt=attempt):
                session.pump(0.1)
                state = session.store.primary
                return state is not None and state.end is not None and state.end.get("steps") == (30, 20)[attempt]

            wait_for(ended, timeout_s=60, interval_s=0)
            assert job.wait(30) == 0
            if attempt == 0:
                session.store.rank(0).end = None  # the job comes back: wait for its second end
        steps = [r["step"] for r in session.store.primary.steps]
        assert steps == list(range(30)) + list(range(20))
    finally:
        session.close()


async def test_ranks_view_shows_each_rank_and_marks_the_straggler():
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.ranks_table import COLUMNS, RanksTable

    store = Store()
    records = []
    for rank, to_backward in ((0, 0.01), (1, 0.09)):
        records += [
            {"v": 1, "kind": "step", "rank": rank, "seq": i, "time": 0.0, "step": i, "loss": 1.0 + rank,
             "step_time_s": 0.1, "to_backward_s": to_backward, "data_wait_s": to_backward * 0.9}
            for i in range(30)
        ]  # fmt: skip
    records.append(
        {"v": 1, "kind": "alert", "rank": 1, "origin": 0, "seq": 99, "time": 0.0, "type": "straggler", "step": 29,
         "message": "rank 1 reaches backward last"}
    )  # fmt: skip
    records.append(
        {"v": 1, "kind": "system", "rank": 1, "seq": 98, "time": 0.0, "cpu_percent": 50.0, "rss_bytes": 2**30,
         "gpus": [{"index": 0, "current": False, "util_percent": 99},
                  {"index": 1, "current": True, "util_percent": 37}]}
    )  # fmt: skip
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("r")
        await pilot.pause(0.3)
        rows = {rank: dict(zip(COLUMNS, row)) for rank, row in app.query_one(RanksTable).rows_shown.items()}
    assert rows[0]["Step"] == "29" and rows[1]["Step"] == "29"
    assert rows[0]["To backward"] == "10 ms" and rows[1]["To backward"] == "90 ms"
    assert rows[1][""] == "◀ straggler" and rows[0][""] == ""
    assert rows[1]["GPU"] == "37%" and rows[0]["GPU"] == "–"  # rank 1's own GPU, from NVML
    assert store.loss_across_ranks()[1][-1] == 1.5


def test_run_with_nproc_per_node_watches_every_rank(tmp_path):
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--nproc-per-node", "2", "--record", str(record), str(EXAMPLES / "ddp.py"), "--steps", "30"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = read_jsonl(record)
    for rank in (0, 1):
        assert [s["step"] for s in steps_of(records, rank)] == list(range(30))
    assert "2 ranks" in result.stderr


def test_a_rank_that_dies_without_a_word_is_named_in_an_alert(tmp_path):
    """Rank 1 of two is SIGKILLed before step 60 (the OOM killer's way) and torchrun stops rank 0: torchrun's
    report names it among its tracebacks, while optwatch's own lines and record said only "2 ranks"."""
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--nproc-per-node", "2", "--record", str(record),
                      str(SCRIPTS / "rank_dies.py"), "--dies", "1", "--at", "60")  # fmt: skip
    assert result.returncode != 0
    lost = {r["rank"]: r for r in read_jsonl(record) if r["kind"] == "alert" and r["type"] == "rank_lost"}
    # (Rank 0 too, when torchrun's SIGTERM ends it before the failed collective does: it is gone without a word.)
    assert 1 in lost and set(lost) <= {0, 1} and lost[1]["severity"] == "error"
    assert 40 <= lost[1]["step"] <= 59  # the last step it sent (its last quarter second went with it)
    assert f"ALERT rank_lost @ step {lost[1]['step']} rank 1: rank 1's process" in result.stderr


@pytest.mark.slow
def test_a_hub_killed_mid_run_leaves_every_rank_training_and_the_viewer_says_so(tmp_path):
    record = tmp_path / "r.jsonl"
    job = start(
        sys.executable, "-m", "optwatch", "run", "--headless", "--nproc-per-node", "2", "--record", str(record),
        str(EXAMPLES / "ddp.py"), "--steps", "200", "--step-sleep", "0.03",
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 20)
        os.kill(listed["hub_pid"], signal.SIGKILL)
        killed_at = time.time()
    finally:
        out, err = job.communicate(timeout=180)
    assert job.returncode == 0, err[-2000:]
    assert "the job's hub is gone; the training goes on" in err and "the job's hub answers again" in err
    records = read_jsonl(record)
    for rank in (0, 1):
        steps = steps_of(records, rank)
        assert steps[-1]["step"] == 199, f"rank {rank} trained to the end"
        assert [s for s in steps if s["time"] > killed_at + 1], f"rank {rank}: steps seen after the kill"
    ends = [r for r in records if r["kind"] == "end"]
    assert {r["rank"] for r in ends} == {0, 1} and {r.get("exit_code") for r in ends} <= {0, None}


def free_port_triple() -> int:
    """A port P with P+1 and P+2 free too (request, stream, rank push)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 65530:
            continue
        try:
            sockets = []
            for offset in (1, 2):
                extra = socket.socket()
                sockets.append(extra)
                extra.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for extra in sockets:
                extra.close()
    raise RuntimeError("no free port triple")


@pytest.mark.slow
def test_ranks_on_other_nodes_reach_the_hub_over_tcp_with_the_token(tmp_path):
    """The multi-node path, on one machine: rank 1 pushes to rank 0 over TCP (OPTWATCH_HUB), not a local socket."""
    port = free_port_triple()
    env = dict(os.environ, OPTWATCH_HUB=f"127.0.0.1:{port}", OPTWATCH_TOKEN="a-shared-token-for-this-test")
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "optwatch", "run", "--listen", f"127.0.0.1:{port}", str(EXAMPLES / "ddp.py"), "--steps", "40",
         "--step-sleep", "0.05"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    record = tmp_path / "r.jsonl"
    try:
        [listed] = wait_for(live_jobs)
        assert listed["endpoints"]["tcp"] == f"tcp://127.0.0.1:{port}"
        attached = optwatch("attach", f"127.0.0.1:{port}", "--token", "a-shared-token-for-this-test",
                            "--headless", "--record", str(record), timeout=120)  # fmt: skip
        assert attached.returncode == 0, attached.stderr
    finally:
        job.communicate(timeout=120)
    assert job.returncode == 0
    records = read_jsonl(record)
    for rank in (0, 1):
        assert [s["step"] for s in steps_of(records, rank)] == list(range(40))


WATCHED = """
import time, torch, optwatch
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
optwatch.watch(model, optimizer)
for step in range(100000):
    optimizer.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); optimizer.step()
    print(f"step {step}", flush=True)
    time.sleep(0.02)
"""


async def test_the_log_tab_says_when_the_jobs_output_is_not_captured(tmp_path):
    """A plain `python` script that calls optwatch.watch writes its output to its own terminal: the Log tab
    says so rather than stay empty as if the script printed nothing."""
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.log_pane import NOT_CAPTURED, LogPane
    from optwatch.cli import attached_session, connect

    script = tmp_path / "watched.py"
    script.write_text(WATCHED)
    job = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 3)
        feed, info = connect(listed["run_id"], None)
        app = OptwatchApp(attached_session(feed, info), mode="attach")
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("l")
            pane = app.query_one("#full-log", LogPane)
            await wait_for_ui(pilot, lambda: pane.lines)
            assert pane.lines[0].text.startswith(NOT_CAPTURED[:40])
            await pilot.press("q")
    finally:
        job.kill()
        job.wait()


async def test_a_job_whose_processes_are_gone_is_not_said_to_train_on():
    """torchrun ended the job after a rank was SIGKILLed: no end record came, the hub went with rank 0, and the
    header said "hub gone for 55 s (training goes on)" for good. The ranks on this machine are checked."""
    import socket
    import time as clock

    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.run_header import RunHeader
    from optwatch.store import Store

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store = Store()
    hello = {"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "run_id": "r1", "script": "s.py",
             "pid": gone.pid, "host": socket.gethostname()}  # fmt: skip
    store.ingest([hello, {"v": 1, "kind": "step", "rank": 0, "seq": 1, "time": 1.0, "step": 7, "loss": 1.0}])
    store.hub_gone_since = clock.monotonic() - 5
    app = OptwatchApp(store=store, mode="attach")
    async with app.run_test(size=(100, 30)) as pilot:
        header = app.query_one(RunHeader)
        await wait_for_ui(pilot, lambda: header.status.startswith("stopped without an end record"))
        hello["pid"] = os.getpid()  # (a rank alive: the hub alone is gone)
        store.ingest([{**hello, "seq": 2}])
        await wait_for_ui(pilot, lambda: header.status.startswith("hub gone for"))


def test_a_torchrun_launch_that_listens_says_where_to_attach():
    """`torchrun -m optwatch run --listen ...`: only `optwatch run` itself said where its TCP endpoint and token
    file are; a launch's rank 0 said nothing, and the port had to be found through `optwatch ls`."""
    job = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
         "-m", "optwatch", "run", "--listen", "127.0.0.1:0", str(SCRIPTS / "short.py"), "--steps", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr[-2000:]
    said = [line for line in job.stderr.splitlines() if "optwatch: listening on 127.0.0.1:" in line]
    assert len(said) == 1 and "to attach: optwatch attach 127.0.0.1:" in said[0] and "--token-file " in said[0]


CRASHES = """
import os, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(200):
    if rank == 1 and step == 6:
        raise RuntimeError("rank 1 read a bad batch")
    optimizer.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward(); optimizer.step()
    time.sleep(0.01)
"""


async def test_a_rank_that_raises_is_named_with_its_error_when_the_job_ends(tmp_path):
    """Rank 1 raised, torchrun ended rank 0: an attached dashboard said "finished (exit 1)", with no word of
    which rank failed or why. The end records carry the error; the header names the first rank to fail."""
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.run_header import RunHeader
    from optwatch.store import Store

    script = tmp_path / "crashes.py"
    script.write_text(CRASHES)
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--nproc-per-node", "2", "--record", str(record), str(script))
    assert result.returncode != 0 and "RuntimeError: rank 1 read a bad batch" in result.stderr
    records = read_jsonl(record)
    ends = {r["rank"]: r for r in records if r["kind"] == "end"}
    assert ends[1]["error"] == "RuntimeError: rank 1 read a bad batch" and ends[1]["exit_code"] == 1
    store = Store()
    store.ingest(records)
    app = OptwatchApp(store=store, mode="attach")  # (as a viewer attached to the job has them)
    async with app.run_test(size=(120, 30)) as pilot:
        header = app.query_one(RunHeader)
        await wait_for_ui(pilot, lambda: header.status.startswith("failed"))
        assert header.status == "failed: rank 1 RuntimeError: rank 1 read a bad batch", header.status
