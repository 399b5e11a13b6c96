"""Nothing a peer, a typo or a full disk does reaches the training: each way once found to kill or slow a run,
tried again on a real job, with the training's own output as the judge."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, SCRIPTS, live_jobs, optwatch, read_jsonl, steps_of, wait_for, wait_for_steps


def start(*args: str, env: dict | None = None, limit_files: int | None = None) -> subprocess.Popen:
    def limit() -> None:
        if limit_files:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit_files, limit_files))

    return subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or dict(os.environ),
        preexec_fn=limit,
    )


def test_a_learning_rate_that_would_overflow_is_refused_and_the_run_goes_on(tmp_path):
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record),
        "--control", "lr*=1000!@3", "--control", "lr*=1000!@5", "--control", "lr=1e39@7",
        str(SCRIPTS / "plain_train.py"), "--steps", "12",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--control lr=1e39@7 will be refused: lr must be positive and at most 1000" in result.stderr
    records = read_jsonl(record)
    assert [s["step"] for s in steps_of(records)] == list(range(12))
    events = [(e["command"], e["status"]) for e in records if e["kind"] == "event"]
    assert events == [("lr*=1000!", "accepted"), ("lr*=1000!", "rejected"), ("lr=1e39", "rejected")]
    rejected = [e for e in records if e["kind"] == "event" and e["status"] == "rejected"]
    assert "optwatch refuses rates above 1000" in rejected[0]["reason"]  # 50 x 1000
    assert {s["lr"] for s in steps_of(records)[3:]} == {50.0}
    assert [line for line in result.stdout.splitlines() if line.startswith("step 11 ")]


def test_a_flood_of_idle_connections_costs_the_hub_not_the_trainings_files(tmp_path):
    """1,100 idle TCP connections to a `--listen` port, with every process limited to 256 files: the script
    saves a checkpoint at each step all the same, and the hub drops the connections that never speak."""
    job = start(
        "--listen", "127.0.0.1:0", str(SCRIPTS / "busy_files.py"), "--steps", "80", "--sleep", "0.05",
        "--out", str(tmp_path), limit_files=256,
    )  # fmt: skip
    flood: list[socket.socket] = []
    try:
        [listed] = wait_for(live_jobs)
        host, port = listed["endpoints"]["tcp"].removeprefix("tcp://").rsplit(":", 1)
        for _ in range(1100):
            try:
                flood.append(socket.create_connection((host, int(port)), timeout=2))
            except OSError:
                break  # the hub's table is full: what it refuses is not the training's
        assert len(flood) >= 200
        out, err = job.communicate(timeout=180)
    finally:
        for connection in flood:
            connection.close()
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-2000:]
    assert "step 79 loss" in out and "Too many open files" not in err


@pytest.fixture
def tiny_filesystem():
    """A 1 MiB tmpfs (the small RAM-backed $XDG_RUNTIME_DIR optwatch's run directories default to)."""
    import tempfile

    mount = Path(tempfile.mkdtemp(prefix="owfs-"))  # short: socket paths are limited
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
    mount.rmdir()


def test_a_full_disk_under_the_run_directory_loses_output_not_the_training(tmp_path, tiny_filesystem):
    record = tmp_path / "r.jsonl"
    env = {**os.environ, "OPTWATCH_RUNTIME_DIR": str(tiny_filesystem / "rt")}
    result = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--record", str(record),
         str(SCRIPTS / "chatty.py"), "--steps", "30", "--lines-per-step", "2000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert [s["step"] for s in steps_of(read_jsonl(record))] == list(range(30))  # 6 MB of output on 1 MiB


def test_a_hub_whose_runtime_disk_filled_up_goes_on_serving_when_the_job_says_hello_again(tiny_filesystem, monkeypatch):
    """The hub rewrites the job's info when the job restarts (a new pid), pauses or resumes; on a full runtime
    tmpfs that write failed and took the hub's loop down with it, and every viewer with it (a hub thread in
    a CI run died the same way when its directory was removed under it). Now it is said in hub.log and
    the hub goes on: the new pid is taken and requests are answered."""
    from optwatch import protocol
    from optwatch.hub.server import Hub
    from optwatch.wire import runtime

    monkeypatch.setenv("OPTWATCH_RUNTIME_DIR", str(tiny_filesystem / "rt"))
    run_dir = runtime.make_run_dir("full")
    hub = Hub(run_dir, "full")
    hub.bind()
    try:
        filler = os.open(tiny_filesystem / "filler", os.O_WRONLY | os.O_CREAT)  # the rest of the 1 MiB
        try:
            while os.write(filler, b"x" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(filler)
        hub.take([protocol.make_record(protocol.HELLO, 0, pid=os.getpid() + 1)])
        assert hub.job_pid == os.getpid() + 1
        assert hub._handle(b"viewer", {"op": "status"})["ok"]
    finally:
        hub.close()


def test_a_fork_and_a_child_python_that_watches_leave_the_job_steerable(tmp_path):
    """A forked child that leaves through sys.exit, and a child Python that calls optwatch.watch() (it
    inherits the run's environment): the job keeps its sockets and its listing, and takes commands."""
    job = start(str(SCRIPTS / "forking.py"), "--steps", "400", "--sleep", "0.05", "--spawn-watcher")
    try:
        [listed] = wait_for(live_jobs, timeout_s=90)
        output = Path(listed["run_dir"], "stdout.log")
        wait_for(lambda: output.exists() and "child watcher done" in output.read_text(), timeout_s=90)
        jobs = live_jobs()
        assert listed["run_id"] in [j["run_id"] for j in jobs]  # still listed: the child did not take it over
        steer = optwatch("ctl", listed["run_id"], "lr=0.02", timeout=60)
        assert steer.returncode == 0 and "accepted, in effect from step" in steer.stdout, steer.stdout + steer.stderr
    finally:
        job.terminate()
        job.communicate(timeout=60)


def test_a_closed_output_pipe_stops_the_job_it_started(runtime_dir):
    """`optwatch run --headless ... | head -3`: as `python script.py | head -3` would, the run ends; nothing
    is left training unseen."""
    shell = subprocess.run(
        f"{sys.executable} -m optwatch run --headless {SCRIPTS / 'plain_train.py'} --steps 100000 --sleep 0.01"
        " | head -3",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = shell.stdout.splitlines()
    assert len(lines) == 3 and [line.split(" loss ")[0] for line in lines] == ["step 0", "step 1", "step 2"]
    assert "Traceback" not in shell.stderr
    # This test's training alone (known by its runtime directory): other tests' jobs may run meanwhile.
    wait_for(lambda: not trainings_started_in(runtime_dir))
    assert live_jobs() == []


def trainings_started_in(runtime_dir) -> list[psutil.Process]:
    """Running processes of ``plain_train.py`` started with this runtime directory."""
    found = []
    for process in psutil.process_iter(["environ", "cmdline", "status"]):
        environ = process.info["environ"] or {}
        if environ.get("OPTWATCH_RUNTIME_DIR") != str(runtime_dir) or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(part.endswith("plain_train.py") for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_unread_and_looping_history_requests_cost_the_hub_a_bounded_amount_and_the_training_nothing(tmp_path):
    """200 peers that ask for the history and never read the answer, and one that asks in a loop (a
    documented request): the hub holds at most six replies a peer, for 10 s, encodes the history once a second, and the
    training's step rate and memory do not move."""
    import zmq

    from optwatch import protocol

    record = tmp_path / "r.jsonl"
    job = start("--record", str(record), str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.01")
    context = zmq.Context()
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 20)  # training, not still importing torch: the rates below compare steps
        # (Read once the training said hello: until then the hub names itself as the job.)
        info = json.loads(Path(listed["run_dir"], "info.json").read_text())
        assert info["pid"] != info["hub_pid"]
        training, hub = psutil.Process(info["pid"]), psutil.Process(info["hub_pid"])
        time.sleep(3)
        training_before, hub_before = rss(training.pid), rss(hub.pid)
        flood_started = time.time()
        request = protocol.encode_request({"op": "history", "page": 0})
        idle = []
        for _ in range(200):
            peer = context.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.connect(listed["endpoints"]["ctl"])
            for _ in range(5):
                peer.send_multipart([b"", request])
            idle.append(peer)
        looping = context.socket(zmq.DEALER)
        looping.setsockopt(zmq.LINGER, 0)
        looping.connect(listed["endpoints"]["ctl"])
        answered, deadline = 0, time.monotonic() + 6
        while time.monotonic() < deadline:
            looping.send_multipart([b"", request])
            if looping.poll(1000):
                looping.recv_multipart()
                answered += 1
        flood_ended = time.time()
        time.sleep(1)
        training_after, hub_after = rss(training.pid), rss(hub.pid)
    finally:
        context.destroy(linger=0)
        job.terminate()
        job.communicate(timeout=60)
    assert answered >= 6  # served, at its rate limit
    assert training_after - training_before < 8 * 2**20, (training_before, training_after)  # 0.0 MiB here
    assert hub_after - hub_before < 200 * 2**20, (hub_before, hub_after)
    steps = steps_of(read_jsonl(record))

    def rate(start: float, end: float) -> float:
        return sum(start <= s["time"] < end for s in steps) / (end - start)

    before, during = rate(flood_started - 3, flood_started), rate(flood_started, flood_ended)
    assert during > 0.6 * before, (before, during)  # this machine's noise aside, the training did not slow


def test_oversized_and_garbled_commands_are_refused_at_the_door():
    """Commands of 60 KB are refused by reason (their text cut short in the event), 900 KB ones are not even
    read (the hub's request cap), and garbage gets an error: the job trains on."""
    import zmq

    from optwatch import protocol

    job = start(str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.01")
    context = zmq.Context()
    try:
        [listed] = wait_for(live_jobs)
        info = json.loads(Path(listed["run_dir"], "info.json").read_text())
        hub_before = rss(info["hub_pid"])
        peer = context.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(listed["endpoints"]["ctl"])
        replies = []

        def send(*requests: bytes) -> None:
            for request in requests:
                peer.send_multipart([b"", request])
            while peer.poll(3000):
                replies.append(protocol.decode_request(peer.recv_multipart()[-1]))

        def command(size: int) -> bytes:
            return protocol.encode_request({"op": "control", "command": "x" * size})

        # The over-long commands first, answered; then the oversized ones, which drop the connection unread (a
        # reply still on its way to the dropped connection would be lost), then garbage on the new one.
        send(command(60_000), command(60_000))
        send(command(900_000), command(900_000), b"\xc1garbage")
        hub_after = rss(info["hub_pid"])
        feed_check = optwatch("ctl", listed["run_id"], "lr=0.01", timeout=60)
    finally:
        context.destroy(linger=0)
        job.terminate()
        out, _ = job.communicate(timeout=60)
    refusals = [r["error"] for r in replies if not r.get("ok")]
    assert refusals[:2] == ["a command is at most 200 characters, this one has 60000"] * 2, replies
    assert len(refusals) == 3 and refusals[2].startswith("undecodable request")  # the 900 KB ones: not read
    assert hub_after - hub_before < 50 * 2**20
    assert feed_check.returncode == 0, feed_check.stdout + feed_check.stderr


def test_over_tcp_neither_the_token_nor_the_records_cross_the_wire_in_clear(tmp_path):
    """A proxy between a viewer and the job's TCP port sees every byte: CURVE encrypts them, and the token,
    from which both ends derive their keys, never travels."""
    job = start("--listen", "127.0.0.1:0", str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.02")
    seen = bytearray()
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(8)
    try:
        [listed] = wait_for(live_jobs)
        output = Path(listed["run_dir"], "stdout.log")
        wait_for(lambda: output.exists() and "step 5 " in output.read_text())
        host, port = listed["endpoints"]["tcp"].removeprefix("tcp://").rsplit(":", 1)
        port = int(port)
        # The proxy forwards its port to the job's request port; the stream port (one above) as well.
        stream_proxy = socket.socket()
        stream_proxy.bind(("127.0.0.1", proxy.getsockname()[1] + 1))
        stream_proxy.listen(8)
        for listener, target in ((proxy, port), (stream_proxy, port + 1)):
            threading.Thread(target=relay, args=(listener, (host, target), seen), daemon=True).start()
        attached = optwatch(
            "attach", f"127.0.0.1:{proxy.getsockname()[1]}", "--token", listed["token"], "--headless",
            "--duration", "4", timeout=60,
        )  # fmt: skip
    finally:
        job.terminate()
        job.communicate(timeout=60)
    assert attached.returncode == 0, attached.stderr
    assert "step " in attached.stdout  # the viewer did get the records (the script's output among them)
    assert len(seen) > 10_000
    assert listed["token"].encode() not in seen
    assert b"plain_train" not in seen and b"step" not in seen and b"loss" not in seen


def relay(listener: socket.socket, target: tuple[str, int], seen: bytearray) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(target)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(source, sink, seen), daemon=True).start()


def pump(source: socket.socket, sink: socket.socket, seen: bytearray) -> None:
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            return
        if not data:
            return
        seen.extend(data)
        try:
            sink.sendall(data)
        except OSError:
            return


def test_a_pause_with_a_lease_ends_by_itself_and_the_listing_says_who_paused(tmp_path):
    record = tmp_path / "r.jsonl"
    job = start(
        "--record", str(record), "--control", "pause=4@10", str(SCRIPTS / "plain_train.py"), "--steps", "40",
        "--sleep", "0.01",
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        listing = wait_for(lambda: "paused by schedule since" in (text := optwatch("ls").stdout) and text)
        assert "(until " in listing
        [paused] = live_jobs()
        assert paused["start_time"] == listed["start_time"]  # the listing's start is the job's, not the pause's
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err[-2000:]
    records = read_jsonl(record)
    resumed = [e for e in records if e["kind"] == "event" and e["command"] == "resume"]
    assert resumed and resumed[0]["reason"] == "the pause's lease ran out"
    step_10 = steps_of(records)[10]
    assert [s["step"] for s in steps_of(records)] == list(range(40)) and step_10["step_time_s"] < 3


def test_a_warning_from_inside_backward_names_the_scripts_line_once_as_without_optwatch(tmp_path):
    """torch warns from a backward hook with stacklevel=5, for the script's `loss.backward()` line: under
    optwatch it named "optwatch/probe/hooks.py:253" (its wrapper's frames counted), and came twice (the first
    step's `platform.processor()` ran `uname -p` in a subprocess, whose start reset the warnings registry)."""
    script = str(SCRIPTS / "warnings_in_backward.py")
    plain = subprocess.run([sys.executable, script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    watched = optwatch("run", "--headless", "--no-record", script)
    assert plain.returncode == watched.returncode == 0, watched.stderr[-2000:]

    def the_scripts(output: str) -> list[str]:
        return [line for line in output.splitlines() if not line.startswith("optwatch")]

    assert "warnings_in_backward.py:14: UserWarning: Full backward hook" in plain.stderr
    assert the_scripts(watched.stderr) == the_scripts(plain.stderr)
    assert the_scripts(watched.stdout) == the_scripts(plain.stdout)
