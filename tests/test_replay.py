"""Record files and records off the wire: what is not a record of the shape viewers read is refused, in one
line, before any viewer holds it; what a real run writes always passes."""

from __future__ import annotations

import gzip
import json
import math
import re
import threading
import time

import pytest
import zmq

from conftest import SCRIPTS, optwatch, read_jsonl, wait_for
from optwatch import protocol
from optwatch.store import read_records

HELLO = {"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 1.0, "run_id": "r", "script": "t.py", "world_size": 1}


def step(**fields) -> dict:
    return {"v": 1, "kind": "step", "rank": 0, "seq": 1, "time": 2.0, "step": 0, "loss": 1.5, **fields}


def lines(*records: dict) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


NESTED = ("[" * 100_000 + "]" * 100_000).encode()
NOT_RECORD_FILES = {
    "binary": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), 1, "not UTF-8 text (invalid start byte at byte 0)"),
    "gzip of garbage": (gzip.compress(b"\xff\xfe garbage\n"), 1, "not UTF-8 text (invalid start byte at byte 0)"),
    "utf16": (lines(HELLO, step()).decode().encode("utf-16"), 1, "not UTF-8 text (invalid start byte at byte 0)"),
    "world size null": (
        lines({**HELLO, "world_size": None}),
        1,
        "hello record: field 'world_size' must be an integer, not null",
    ),
    "kind as a list": (lines({**HELLO, "kind": ["hello"]}), 1, "record without a 'kind'"),
    "another tool's JSON lines": (b'{"epoch": 1, "loss": 0.5}\n' * 20 + lines(HELLO), 1, "protocol version None"),
}
# A record file with a bad line: the line is skipped, the rest replayed, and the first bad line named.
DAMAGED_FILES = {
    "deep": (lines(HELLO) + b'{"v": 1, "kind": "step", "step": 0, "x": ' + NESTED + b"}\n", 2, "nested too deeply"),
    "not an object": (lines(HELLO) + b"[1, 2]\n", 2, "a record line must hold a JSON object"),
    "step as text": (lines(HELLO, step(step="12")), 2, "step record: field 'step' must be an integer, not a string"),
    "no step": (lines(HELLO, {"v": 1, "kind": "step", "loss": 1.0}), 2, "step record: field 'step' is missing"),
    "loss as an object": (
        lines(HELLO, step(), step(step=1, loss={"mean": 1})),
        3,
        "step record: field 'loss' must be a number or null, not an object",
    ),
    "loss too large": (
        lines(HELLO, step(loss=10**30)),
        2,
        "step record: field 'loss' must be a number or null, not an integer out of range",
    ),
    "gpu figure as text": (
        lines(HELLO, {"v": 1, "kind": "system", "rank": 0, "step": 0, "gpus": [{"index": 0, "util_percent": "hi"}]}),
        2,
        "system record: field 'gpus[0].util_percent' must be a number or null, not a string",
    ),
    "verdict window as an object": (
        lines(HELLO, {"v": 1, "kind": "verdict", "rank": 0, "bottleneck": "input", "window": {"0": 1}}),
        2,
        "verdict record: field 'window' must be a list, not an object",
    ),
    "log line as a number": (
        lines(HELLO, {"v": 1, "kind": "log", "rank": -1, "stream": "stdout", "line": 5}),
        2,
        "log record: field 'line' must be a string, not an integer",
    ),
}


@pytest.mark.parametrize("name", NOT_RECORD_FILES)
def test_a_file_that_is_not_a_record_is_refused_in_one_line_naming_the_line(tmp_path, name):
    content, line, reason = NOT_RECORD_FILES[name]
    path = tmp_path / "run.jsonl"
    path.write_bytes(content)
    result = optwatch("replay", "--headless", str(path))
    assert result.returncode == 2
    [message] = result.stderr.splitlines()
    assert message.startswith(f"optwatch: not an optwatch record file: {path}:{line}: {reason}")
    assert result.stdout == ""


@pytest.mark.parametrize("name", ["binary", "world size null"])
def test_the_dashboard_refuses_a_file_that_is_not_a_record_before_it_starts(tmp_path, name):
    content, line, reason = NOT_RECORD_FILES[name]
    path = tmp_path / "run.jsonl"
    path.write_bytes(content)
    result = optwatch("replay", str(path), timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"optwatch: not an optwatch record file: {path}:{line}: {reason}"]


@pytest.mark.parametrize("name", DAMAGED_FILES)
def test_a_bad_line_is_skipped_and_named_and_the_rest_replayed(tmp_path, name):
    content, line, reason = DAMAGED_FILES[name]
    path = tmp_path / "run.jsonl"
    path.write_bytes(content + lines(step(step=7, loss=0.25)))
    result = optwatch("replay", "--headless", str(path))
    assert result.returncode == 0, result.stderr
    good = content.count(b"\n")  # the lines but the bad one, and step 7
    assert result.stderr.splitlines() == [
        f"optwatch: warning: {path}: skipped 1 line that is not a record (first: line {line}: {reason}): "
        f"replaying the {good} records (up to step 7)"
    ]
    assert "step 7 (8 steps) | loss 0.25 " in result.stdout


def test_a_record_file_with_bad_lines_here_and_there_replays_the_good_ones(tmp_path):
    """A real run's record with two lines spoilt in the middle: every other step replays, the first spoilt
    line is named and both are counted."""
    path = tmp_path / "run.jsonl"
    run = optwatch("run", "--headless", "--record", str(path), str(SCRIPTS / "plain_train.py"), "--steps", "30")
    assert run.returncode == 0, run.stderr
    printed = {int(x.split()[1]): float(x.split()[3]) for x in run.stdout.splitlines() if x.startswith("step ")}
    text = path.read_bytes().splitlines(keepends=True)
    spoilt = [n for n, line in enumerate(text) if b'"kind":"step"' in line and b'"step":12,' in line][0]
    text[spoilt] = text[spoilt][:40] + b"\n"  # cut in the middle of a record
    text[spoilt + 3] = b"junk\n"
    path.write_bytes(b"".join(text))
    replay = optwatch("replay", "--headless", str(path))
    assert replay.returncode == 0, replay.stderr
    [warning] = replay.stderr.splitlines()
    assert warning.startswith(
        f"optwatch: warning: {path}: skipped 2 lines that are not records (first: line {spoilt + 1}: not JSON"
    )
    assert f"step 29 (30 steps) | loss {printed[29]:.4f}" in replay.stdout


def test_a_line_that_reads_nan_stays_text_and_a_nan_loss_stays_a_number(tmp_path):
    """Non-finite numbers are written as "NaN"...; only where a number belongs do they become numbers again."""
    path = tmp_path / "run.jsonl"
    path.write_text(
        json.dumps({"v": 1, "kind": "log", "rank": -1, "stream": "stdout", "line": "NaN"})
        + "\n"
        + protocol.record_to_json_line(step(loss=math.nan, lr=math.inf))
    )
    log, recorded = read_records(path)
    assert log["line"] == "NaN"
    assert math.isnan(recorded["loss"]) and recorded["lr"] == math.inf


def test_every_record_of_a_real_run_passes_and_replays(tmp_path, monkeypatch):
    """A run with each kind of record: a profiler window, an accepted and a rejected control, a non-finite
    alert, verdicts, log lines."""
    monkeypatch.setenv("OPTWATCH_TRACE_DIR", str(tmp_path / "traces"))
    record = tmp_path / "run.jsonl"
    run = optwatch(
        "run", "--headless", "--record", str(record), "--profile-at", "3:2", "--control", "lr=0.01@10",
        "--control", "bogus@12", str(SCRIPTS / "grad_scenarios.py"), "--scenario", "inf-module", "--steps", "60",
        "--at", "30",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    kinds = {r["kind"] for r in read_jsonl(record)}  # each one validated as it is read
    assert {"hello", "step", "system", "layers", "hotspots", "event", "verdict", "alert", "log", "end"} <= kinds
    replay = optwatch("replay", "--headless", str(record))
    assert replay.returncode == 0 and "optwatch: final step 59 " in replay.stdout
    # A replay says what the run's headless lines said as it ran: each command's answer, alert, hot spot and
    # change of verdict (it said the summary and the alerts only).
    said = [
        line
        for line in run.stderr.splitlines()
        if line.startswith("optwatch: ") and re.search(r"accepted|rejected|ALERT|verdict|hot spots|try:", line)
    ]
    assert any("lr=0.01 accepted" in line for line in said) and any("bogus" in line for line in said), said
    replayed = replay.stdout.splitlines()
    assert [line for line in said if line in replayed] == said, (said, replayed)


def test_a_viewer_never_holds_a_record_of_the_wrong_shape_from_the_wire(tmp_path):
    """A peer (a job, or anything at its endpoints) sends bad records live and in its history: the feed passes
    on the good ones only, and notes why it dropped the others."""
    from optwatch.protocol import TOPIC_RECORDS
    from optwatch.wire import subscriber
    from optwatch.wire.subscriber import Feed

    history = [HELLO, step(seq=1, loss="high"), step(seq=2, step=1)]
    context = zmq.Context.instance()
    pub = context.socket(zmq.PUB)
    pub.bind(f"ipc://{tmp_path}/pub.sock")
    stop = threading.Event()

    def answer_history() -> None:
        ctl = context.socket(zmq.ROUTER)
        ctl.bind(f"ipc://{tmp_path}/ctl.sock")
        while not stop.is_set():
            if ctl.poll(50):
                identity, _, _ = ctl.recv_multipart()
                page = protocol.join_batch([protocol.encode_record(record) for record in history])
                reply = {"ok": True, "page": 0, "pages": 1, "batch": page}
                ctl.send_multipart([identity, b"", protocol.encode_request(reply)])
        ctl.close(linger=0)

    peer = threading.Thread(target=answer_history)
    peer.start()
    feed = Feed(f"ipc://{tmp_path}/pub.sock", f"ipc://{tmp_path}/ctl.sock")
    received: list[dict] = []

    def exchange() -> bool:
        pub.send_multipart([TOPIC_RECORDS, protocol.encode_batch([step(seq=3, step=2, grad_norm=[1.0])])])
        pub.send_multipart([TOPIC_RECORDS, protocol.encode_batch([step(seq=4, step=3)])])
        received.extend(feed.poll(0.1))
        return any(r.get("step") == 3 for r in received)

    try:
        started = time.monotonic()
        wait_for(exchange, timeout_s=30, interval_s=0)
        # The gap a refused record leaves is no history's to fill: the records after it do not wait for one.
        assert time.monotonic() - started < subscriber.GAP_WAIT_S
        assert [(r["kind"], r.get("step")) for r in received] == [("hello", None), ("step", 1), ("step", 3)]
        assert "step record: field 'loss' must be a number or null, not a string" in feed.errors
        assert "step record: field 'grad_norm' must be a number or null, not a list" in feed.errors
    finally:
        stop.set()
        peer.join()
        feed.close()
        pub.close(linger=0)


@pytest.mark.parametrize(
    ("record", "complaint"),
    [
        ({"v": 1, "kind": "metric", "step": 3, "values": {"acc": "high"}}, "field \"values['acc']\" must be a number"),
        (
            {"v": 1, "kind": "layers", "step": 3, "names": ["a.w", 7]},
            "field 'names[1]' must be a string, not an integer",
        ),
        ({"v": 1, "kind": "event", "command": "lr=1", "status": "accepted", "effective_step": "5"}, "effective_step"),
        ({"v": 1, "kind": "hotspots", "status": "done", "sort_by": "digest"}, "field 'sort_by' must be 'self_cpu_s'"),
        ({"v": 1, "kind": "alert", "type": "vanishing", "rank": "0"}, "field 'rank' must be an integer"),
        ({"v": 1, "kind": "end", "exit_code": [0]}, "field 'exit_code' must be an integer or null, not a list"),
        ({"v": 1, "kind": "step", "step": True}, "field 'step' must be an integer, not true/false"),
        ({"v": 1, "kind": "system", "step": 3, "workers": [{"cpu_percent": 5.0}]}, "field 'workers[0].pid' is missing"),
        ({"v": 1, "kind": "verdict", "bottleneck": "input", "suggestions": None}, "field 'suggestions' must be a list"),
        ("step", "a record must be an object, not a string"),
    ],
)
def test_validate_record_names_the_field(record, complaint):
    with pytest.raises(protocol.ProtocolError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        protocol.validate_record(record)
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_batch(protocol.encode_batch([record]) if isinstance(record, dict) else b"\x91\xa4step")


def odd_but_valid_records() -> list[dict]:
    """Records at the edges of what the protocol allows: each passes ``validate_record``."""
    tiny, huge = 5e-324, 1e308
    records = [
        {**HELLO, "world_size": 1, "device": None, "device_name": None},
        *[
            step(seq=1 + i, step=i, loss=loss, grad_norm=norm, lr=None, step_time_s=0.1, other_s=0.05,
                 forward_s=math.nan, data_wait_s=math.inf, samples_per_s=None, detail_every=1)
            for i, (loss, norm) in enumerate(
                [(huge, tiny), (-huge, 1e-320), (math.nan, math.inf), (None, None), (0, 0), (2**63 - 1, 1.0)] * 3
            )
        ],  # fmt: skip
        {"v": 1, "kind": "system", "rank": 0, "seq": 30, "step": 5, "cpu_percent": math.nan, "cpu_count": 0,
         "load_avg": [], "workers": [{"pid": 1, "cpu_percent": None}], "gpu_status": "ok",
         "gpus": [{"index": 0, "name": "[/gpu]", "util_percent": huge, "mem_total_bytes": -huge, "throttle": ["[/t]"]}],
         "mem_allocated_bytes": huge, "mem_total_bytes": 0, "mem_device": 0},  # fmt: skip
        {"v": 1, "kind": "event", "rank": 0, "seq": 31, "command": "[/b]", "status": "rejected",
         "reason": "unknown command '[/b]'", "effective_step": None, "source": "ctl"},  # fmt: skip
        {"v": 1, "kind": "event", "rank": 0, "seq": 32, "command": "lr[0]=0.1", "status": "accepted",
         "effective_step": 3},  # fmt: skip
        {"v": 1, "kind": "hotspots", "rank": 0, "seq": 33, "status": "done", "steps": [4, 3], "sort_by": "calls",
         "wall_s": huge, "digest": "[/d]", "trace": None,
         "ops": [{"name": "[/op]", "module": None, "calls": 0, "pct": math.nan, "flags": ["[/f]"], "shapes": [[None]]}],
         "culprits": [{"flag": "[/c]", "calls": 1, "s": None, "pct_of_wall": huge}]},  # fmt: skip
        {"v": 1, "kind": "verdict", "rank": 0, "seq": 34, "bottleneck": "[/v]", "window": [], "final": None,
         "message": "[/m]", "suggestions": ["[/s]"], "evidence": {"gpu_util_percent": math.nan, "cpu_percent": huge}},
        {"v": 1, "kind": "alert", "rank": 0, "seq": 35, "type": "vanishing", "step": None, "message": "[/a]"},
        {"v": 1, "kind": "layers", "rank": 0, "seq": 36, "step": 2, "names": ["[/l].w", "w", "x.y.z"],
         "numel": [0, 2**63 - 1, 1], "grad_norm": [math.nan, huge, tiny], "weight_norm": [0, -1, math.inf],
         "zero_frac": [1.0, 0.5, 2.0], "update_norm": [None, 1.0, huge], "alerting": {"[/l]": "[/why]"}},
        {"v": 1, "kind": "metric", "rank": 0, "seq": 37, "step": 2, "values": {"[/k]": None, "acc": huge}},
        {"v": 1, "kind": "log", "rank": -1, "stream": "stderr", "line": "[/log]"},
        {"v": 1, "kind": "end", "rank": 0, "seq": 38, "exit_code": None},
    ]  # fmt: skip
    for record in records:
        protocol.validate_record(record)
    return records


async def test_records_that_pass_validation_never_crash_the_dashboard():
    from optwatch.app.app import OptwatchApp
    from optwatch.headless import changed_verdicts, notable_line, summary_line, verdict_lines
    from optwatch.store import Store

    store = Store()
    records = odd_but_valid_records()
    store.ingest(records)
    for record in records:
        notable_line(record)
    summary_line(store)
    for verdict in changed_verdicts(store, {}):
        verdict_lines(verdict)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        for key in ("o", "g", "t", "t", "s", "h", "t", "r", "c", "l", "o"):
            await pilot.press(key)
            app.render_views(force_charts=True)
            await pilot.pause(0.05)
        await pilot.press("q")
    assert app.return_code in (0, None)
