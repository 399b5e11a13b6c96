"""Profiler windows: planned from the command line or requested, summarised into `hotspots` records."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
import time

import pytest
import torch

from conftest import EXAMPLES, SCRIPTS, new_probe, optwatch, read_jsonl
from optwatch.diagnose.hotspots import friendly_name, summarise
from optwatch.headless import hotspots_line
from optwatch.probe.probe import Probe
from optwatch.probe.profiler import profiler_of
from optwatch.probe.traces import TraceStore


@pytest.fixture(autouse=True)
def trace_dir(tmp_path, monkeypatch):
    """Traces of these tests go to a temporary directory, not ./optwatch-traces of the checkout."""
    path = tmp_path / "traces"
    monkeypatch.setenv("OPTWATCH_TRACE_DIR", str(path))
    return path


def start_probe(**options) -> tuple[Probe, list[dict]]:
    """A probe in this process, and every record its plugins hand to the channel."""
    probe = new_probe("prof-test", **options)
    published: list[dict] = []
    submit = probe.channel.submit_records

    def spy(records):
        published.extend(records)
        submit(records)

    probe.channel.submit_records = spy  # type: ignore[method-assign]
    return probe.start(), published


def hotspots(published: list[dict], status: str = "done") -> list[dict]:
    return [r for r in published if r["kind"] == "hotspots" and r.get("status") == status]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))


def train(model, optimizer, steps: int, sleep_s: float = 0.0, item: bool = False) -> None:
    x, y = torch.randn(64, 32, device=next(model.parameters()).device), None
    y = torch.randn(64, 1, device=x.device)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if item:
            loss.item()
        if sleep_s:
            time.sleep(sleep_s)


def test_cli_window_on_the_cifar_example_finds_the_convolutions_and_writes_a_trace(tmp_path, trace_dir):
    record = tmp_path / "r.jsonl"
    cifar = (str(EXAMPLES / "cifar.py"), "--steps", "16", "--batch-size", "32")
    result = optwatch("run", "--headless", "--record", str(record), "--profile-at", "10:5", *cifar)
    assert result.returncode == 0, result.stderr
    records = [r for r in read_jsonl(record) if r["kind"] == "hotspots"]
    assert [r["status"] for r in records] == ["profiling", "done"], records
    done = records[-1]
    assert done["steps"] == [10, 14] and done["reason"] == "cli" and done["sort_by"] == "self_cpu_s"
    ops = done["ops"]
    assert any("convolution" in op["name"] for op in ops[:3]), [op["name"] for op in ops[:5]]
    assert [op["self_cpu_s"] for op in ops] == sorted((op["self_cpu_s"] for op in ops), reverse=True)
    assert 0 < sum(op["pct"] for op in ops) <= 100.01 and all(op["self_device_s"] is None for op in ops)
    # Forward and backward convolutions are placed in the model's convolution modules.
    conv_modules = {"stem.0"} | {f"layer{i}.{name}" for i in (1, 2, 3) for name in ("conv1", "conv2", "shortcut.0")}
    for op in ops:
        if op["name"] in ("aten::convolution_backward", "aten::mkldnn_convolution"):
            assert op["module"] in conv_modules, op
            assert op["calls"] == 5 * 10 and op["shapes"] and op["shapes"][0][0][0] == 32
    dataloader = next(op for op in ops if op["name"].startswith("enumerate(DataLoader)"))
    assert dataloader["flags"] == ["dataloader"] and dataloader["calls"] == 5
    culprits = {c["flag"]: c for c in done["culprits"]}
    assert culprits["dataloader"]["calls"] == 5 and culprits["optimizer"]["calls"] == 5
    assert "convolution" in done["digest"]
    assert done["modules"][0]["name"] in conv_modules
    # The trace: gzipped Chrome/Perfetto JSON, private, with the module scopes in it.
    trace = done["trace"]
    assert trace.startswith(str(trace_dir)) and trace.endswith("rank0-steps10-14.pt.trace.json.gz")
    with gzip.open(trace, "rt") as handle:
        events = json.load(handle)["traceEvents"]
    assert any(event.get("name") == "module: layer1.conv1" for event in events)
    assert stat.S_IMODE(os.stat(trace).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(trace)).st_mode) == 0o700
    assert f"optwatch: hot spots, steps 10-14: {done['digest']} (trace {trace})" in result.stderr
    assert "USDT" not in result.stderr  # kineto's own chatter stays out of the script's stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--profile-at", "ten:5", "expected START:COUNT such as 10:5, got 'ten:5'"),
        ("--profile-at", "10:0", "COUNT must be from 1 to 50 steps, got 0"),
        ("--profile-at", "-3:5", "START is a step number (the first step is 0), got -3"),
        (
            "--profile-every",
            "20",
            "every 20 steps is too often for 3-step windows (plus a warm-up step): "
            "optwatch profiles at most 10% of the steps, so N must be at least 40",
        ),
        ("--profile-every", "500:x", "expected N or N:COUNT such as 500:3, got '500:x'"),
    ],
)
def test_bad_profiler_flags_are_refused_clearly(flag, value, message):
    result = optwatch("run", "--headless", f"{flag}={value}", str(SCRIPTS / "plain_train.py"))
    assert result.returncode == 2
    assert f"argument {flag}: {message}" in result.stderr


def test_idle_profiler_costs_nothing_and_writes_nothing(trace_dir):
    from torch.nn.modules import module

    from optwatch.probe.telemetry import TelemetryPlugin

    probe, published = start_probe()

    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    original_step = optimizer.step

    def step(*args, **kwargs):
        hooks = module._global_forward_pre_hooks.values()
        others = [h for h in hooks if not isinstance(getattr(h, "__self__", None), TelemetryPlugin)]
        seen.append((torch.autograd.profiler._is_profiler_enabled, len(others)))  # (the phase timing's is there)
        return original_step(*args, **kwargs)

    optimizer.step = step
    train(model, optimizer, 20)
    probe.close()
    assert seen == [(False, 0)] * 20
    assert hotspots(published, "profiling") == [] and hotspots(published) == []
    assert not trace_dir.exists()


def test_request_profiles_the_next_steps_with_modules_forward_and_backward():
    probe, published = start_probe()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, optimizer, 3)
    reply = profiler_of(probe).request_window(4)
    assert reply == {"ok": True, "steps": [5, 8], "message": "profiling about steps 5-8"}
    train(model, optimizer, 10, item=True)
    probe.close()
    [profiling] = hotspots(published, "profiling")
    [done] = hotspots(published)
    assert profiling["steps"] == done["steps"] == [5, 8] and done["reason"] == "request"
    ops = {op["name"]: op for op in done["ops"]}
    # A Sequential's layers are named by their index and class: a bare "0" said nothing of what it is.
    linear = ("0 (Linear)", "2 (Linear)")
    assert ops["aten::addmm"]["calls"] == 2 * 4 and ops["aten::addmm"]["module"] in linear
    # The shapes beside the module are that module's calls' (a row reads as one fact).
    assert (
        ops["aten::addmm"]["shapes"][0][:2]
        == dict(zip(linear, ([[64], [64, 32]], [[1], [64, 64]])))[ops["aten::addmm"]["module"]]
    )
    assert ops["aten::mm"]["module"] in linear  # backward matmuls, placed through the autograd graph
    relu_ops = [op for name, op in ops.items() if name in ("aten::relu", "aten::clamp_min", "aten::threshold_backward")]
    assert all(op["module"] == "1 (ReLU)" for op in relu_ops)
    # Both linear layers ran addmm: the module named is one of them, and the other is counted.
    assert ops["aten::addmm"]["modules_more"] == 1 and all(op["modules_more"] == 0 for op in relu_ops)
    assert "optimizer" in ops["Optimizer.step#SGD.step"]["flags"]
    culprits = {culprit["flag"]: culprit for culprit in done["culprits"]}
    assert culprits["optimizer"]["calls"] == 4
    # optwatch's own work at the step boundary (the gradient norm) is labelled as such.
    assert culprits["optwatch"]["calls"] >= 3
    assert all("optwatch" in op["flags"] for op in done["ops"] if op["module"] == "optwatch")
    # On the CPU, .item() waits for nothing: no sync flag, no sync culprit.
    assert "sync" not in culprits and all("sync" not in op["flags"] for op in done["ops"])
    assert os.path.exists(done["trace"])


def test_a_window_says_what_share_no_op_holds_and_which_module_takes_most():
    """Steps that spend most of their time outside torch's ops (a checkpoint save: here a sleep the loop times
    itself) read 'optimizer step 22%, matmul 21%' with 96% of the window in no op, and the modules' shares
    were in the record only. The digest (the headless line, the tab) now says both."""
    probe, published = start_probe()
    torch.manual_seed(0)
    # Layer 0 does 128 times layer 2's multiplications: it takes most of the ops' time.
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs = torch.randn(256, 512)
    slept = []

    def steps(count: int) -> None:
        for _ in range(count):
            optimizer.zero_grad()
            model(inputs).pow(2).mean().backward()
            optimizer.step()
            started = time.perf_counter()
            time.sleep(0.05)
            slept.append(time.perf_counter() - started)

    steps(3)
    profiler_of(probe).request_window(3)
    steps(8)
    probe.close()
    [done] = hotspots(published)
    first, last = done["steps"]
    # Each step of the window held one of the loop's sleeps (a step runs from one optimizer step's end to
    # the next's), in which no op ran.
    assert (last - first + 1) * min(slept) * 0.95 <= done["outside_ops_s"] <= done["wall_s"], done
    share = done["outside_ops_pct"]
    assert share == pytest.approx(100 * done["outside_ops_s"] / done["wall_s"], abs=0.01) and share > 50
    assert done["digest"].startswith(f"{share:.0f}% of the window is in no torch op: Python or I/O between ops")
    # (The model's modules: the scopes beside them, optwatch's own and the optimizer's, rank among them, and a
    # busy machine slows optwatch's lines most.)
    model_modules = ("Sequential", "0 (Linear)", "1 (ReLU)", "2 (Linear)")
    [first_layer, *_] = [m for m in done["modules"] if m["name"] in model_modules]
    assert first_layer["name"] == "0 (Linear)", done["modules"]
    heaviest = f"0 (Linear) {first_layer['pct']:.0f}%"
    assert f"; module: {heaviest}" in done["digest"] or f"; modules: {heaviest}, " in done["digest"], done["digest"]
    assert hotspots_line(done).startswith(f"optwatch: hot spots, steps {first}-{last}: {done['digest']}")


def test_requests_are_checked_and_one_window_runs_at_a_time():
    probe, published = start_probe(profile_at=[[2, 3]])
    plugin = profiler_of(probe)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for bad in (0, 51, "5", True):
        reply = plugin.request_window(bad)
        assert reply["ok"] is False and "steps must be a whole number from 1 to 50" in reply["error"]
    train(model, optimizer, 3)  # steps 0-2: step 1 warms up, 2 is recorded
    assert plugin.request_window(2) == {"ok": False, "error": "already profiling steps 2-4"}
    train(model, optimizer, 3)
    assert plugin.request_window(2)["ok"] is True
    assert plugin.request_window(2) == {"ok": False, "error": "a profiler window is already requested"}
    # The requested window waits for the first one's summary (slow on a busy machine), then runs.
    for _ in range(1000):
        train(model, optimizer, 1, sleep_s=0.01)
        if len(hotspots(published)) == 2:
            break
    probe.close()
    assert plugin.request_window(2) == {"ok": False, "error": "the run is ending"}
    windows = [r["steps"] for r in hotspots(published)]
    assert windows[0] == [2, 4] and len(windows) == 2 and windows[1][0] > 4


def test_run_ending_inside_a_window_publishes_what_it_recorded():
    probe, published = start_probe(profile_at=[[4, 10]])
    model = tiny_model()
    train(model, torch.optim.SGD(model.parameters(), lr=0.01), 7)
    probe.close()
    [done] = hotspots(published)
    assert done["steps"] == [4, 6] and done["partial"] is True and done["ops"]


def test_periodic_windows_repeat():
    probe, published = start_probe(profile_every=[8, 2])
    model = tiny_model()
    # Slow enough steps that a summary is usually done before the next window is due; a window
    # that falls due while the previous one is still being summarised starts later.
    train(model, torch.optim.SGD(model.parameters(), lr=0.01), 34, sleep_s=0.03)
    probe.close()
    done = hotspots(published)
    windows = [r["steps"] for r in done]
    assert len(windows) >= 2 and windows[0] == [8, 9]
    assert all(b[0] - a[0] >= 8 for a, b in zip(windows, windows[1:]))
    # Two steps each, but for a late window that the run's end cut short (published as partial).
    assert all(last - first == 1 for (first, last), r in zip(windows, done) if not r.get("partial"))
    assert not any(r.get("partial") for r in done[:-1])


def test_only_the_last_traces_are_kept(tmp_path):
    store = TraceStore(tmp_path / "root", "run-1", rank=0, keep=2)
    paths = []
    for first in (0, 10, 20):
        raw = store.raw_path(first, first + 1)
        raw.write_text(json.dumps({"traceEvents": []}))
        paths.append(store.pack(raw, first, first + 1))
    assert sorted(p.name for p in (tmp_path / "root" / "run-1").iterdir()) == sorted(p.name for p in paths[1:])
    with gzip.open(paths[-1], "rt") as handle:
        assert json.load(handle) == {"traceEvents": []}
    assert stat.S_IMODE(paths[-1].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "root" / "run-1").stat().st_mode) == 0o700


def test_helper_failure_falls_back_to_summarising_in_process(monkeypatch, caplog):
    from optwatch.probe import profiler

    monkeypatch.setattr(profiler.sys, "executable", "/no/such/python")
    probe, published = start_probe(profile_at=[[1, 2]])
    model = tiny_model()
    train(model, torch.optim.SGD(model.parameters(), lr=0.01), 5)
    probe.close()
    [done] = hotspots(published)
    assert done["steps"] == [1, 2] and done["ops"] and os.path.exists(done["trace"])
    assert "summarising in the training process" in caplog.text


def cuda_like_trace() -> dict:
    """A window as torch exports it on CUDA: a pageable input copy, a matmul, and an .item() that syncs."""

    def host(name, ts, dur, cat="cpu_op", **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur, "args": args}

    def device(name, ts, dur, external, cat="kernel"):
        args = {"External id": external, "device": 0, "stream": 7}
        return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": dur, "args": args}

    return {
        "traceEvents": [
            host("aten::copy_", 0, 50, **{"External id": 1, "Input Dims": [[512, 256], [512, 256], []]}),
            host("cudaMemcpyAsync", 5, 40, cat="cuda_runtime", **{"External id": 1}),
            host("module: 0", 60, 100, cat="user_annotation", **{"External id": 2}),
            host("aten::addmm", 61, 90, **{"External id": 3, "Sequence number": 7}),
            host("cudaLaunchKernel", 70, 10, cat="cuda_runtime", **{"External id": 3}),
            host("aten::item", 200, 300, **{"External id": 4}),
            host("aten::_local_scalar_dense", 201, 298, **{"External id": 5}),
            host("cudaStreamSynchronize", 210, 280, cat="cuda_runtime", **{"External id": 5}),
            device("Memcpy HtoD (Pageable -> Device)", 10, 100, 1, cat="gpu_memcpy"),
            device("sm90_xmma_gemm", 120, 400, 3),
            device("Memcpy DtoH (Device -> Pageable)", 520, 5, 5, cat="gpu_memcpy"),
        ]
    }


def test_summary_of_a_cuda_trace_flags_syncs_and_pageable_copies():
    summary = summarise(cuda_like_trace(), wall_s=0.000600, device_used=True)
    assert summary["sort_by"] == "self_device_s"  # the device was busy for most of the window
    ops = {op["name"]: op for op in summary["ops"]}
    assert [op["name"] for op in summary["ops"]][:2] == ["aten::addmm", "aten::copy_"]
    assert ops["aten::addmm"]["self_device_s"] == 0.0004 and ops["aten::addmm"]["module"] == "0"
    assert ops["aten::addmm"]["self_cpu_s"] == pytest.approx(0.000080)  # 90 us minus the 10 us launch
    assert ops["aten::copy_"]["flags"] == ["pageable-h2d"] and ops["aten::copy_"]["shapes"][0][0] == [512, 256]
    for name in ("aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize"):
        assert "sync" in ops[name]["flags"], name
    culprits = {culprit["flag"]: culprit for culprit in summary["culprits"]}
    assert culprits["sync"] == {"flag": "sync", "s": 0.00028, "calls": 1, "pct_of_wall": 46.67}
    assert culprits["pageable-h2d"]["s"] == 0.0001 and summary["device_total_s"] == 0.000505
    # Host ops or the device cover 0-525 us of the 600 (the module scope's own 60-61 us lies under the copy's
    # kernel): 75 us in no op.
    assert (summary["outside_ops_s"], summary["outside_ops_pct"]) == (0.000075, 12.5)
    assert summary["modules"] == [{"name": "0", "pct": 79.21, "self_s": 0.0004}]
    assert summary["digest"] == "matmul 79%, data copy 20%; module: 0 79%; 12% of the window in no torch op"


def test_time_in_no_op_is_counted_once_across_threads_and_leads_the_digest_when_it_is_most():
    """Two threads' ops that overlap cover the wall once; a module scope's own time (Python between its ops)
    is in no op. When no op holds most of the window, the digest says so first: a window whose step held a
    checkpoint save read 'optimizer step 22%, matmul 21%' with 96% of its time in torch.save's Python."""

    def host(name, tid, ts, dur, cat="cpu_op"):
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": {}}

    trace = {
        "traceEvents": [
            host("aten::mm", 1, 0, 100),
            host("aten::mm", 2, 50, 100),  # overlaps the first thread's 50-100 us
            host("module: 0 (Linear)", 1, 200, 100, cat="user_annotation"),
            host("aten::addmm", 1, 220, 40),
        ]
    }
    summary = summarise(trace, wall_s=0.000400, device_used=False)
    # In ops: 0-150 us and 220-260 us, 190 of 400; the rest, 210 us, in none.
    assert (summary["outside_ops_s"], summary["outside_ops_pct"]) == (0.00021, 52.5)
    assert summary["digest"] == (
        "52% of the window is in no torch op: Python or I/O between ops (a save, logging, data loading), "
        "see the step times. In ops (48%): matmul 100%; module: 0 (Linear) 17%"
    )
    assert summarise(trace, wall_s=None, device_used=False)["outside_ops_pct"] is None


def test_headless_lines_for_hotspots_records():
    base = {"v": 1, "kind": "hotspots", "rank": 0, "steps": [10, 14]}
    assert hotspots_line({**base, "status": "profiling"}) == "optwatch: profiling steps 10-14…"
    done = {**base, "status": "done", "digest": "convolution backward 41%", "trace": "/t/x.json.gz"}
    assert hotspots_line(done) == "optwatch: hot spots, steps 10-14: convolution backward 41% (trace /t/x.json.gz)"
    failed = {**base, "status": "failed", "error": "boom"}
    assert hotspots_line(failed) == "optwatch: profiling steps 10-14 failed: boom"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_item_every_step_on_cuda_is_flagged_as_a_sync(tmp_path):
    record = tmp_path / "r.jsonl"
    script = SCRIPTS / "item_every_step.py"
    result = optwatch("run", "--headless", "--record", str(record), "--profile-at", "5:3", str(script), "--steps", "12")
    assert result.returncode == 0, result.stderr
    [done] = [r for r in read_jsonl(record) if r["kind"] == "hotspots" and r["status"] == "done"]
    assert done["device_total_s"] is not None and done["device_total_s"] > 0
    synced = {op["name"] for op in done["ops"] if "sync" in op["flags"]}
    assert synced & {"aten::item", "aten::_local_scalar_dense", "cudaStreamSynchronize"}, done["ops"]
    culprits = {c["flag"]: c for c in done["culprits"]}
    assert culprits["sync"]["calls"] >= 3
    assert any(op["self_device_s"] for op in done["ops"])
    # The pageable input copies are a culprit too (the script copies inputs and targets from unpinned
    # memory each step). Ranked by host time (this loop is host-bound), the copy op itself may fall out
    # of the top ops; where it is listed, it carries the flag.
    assert culprits["pageable-h2d"]["calls"] >= 6, done["culprits"]
    copies = [op for op in done["ops"] if op["name"] == "aten::copy_" and op["self_device_s"]]
    assert all("pageable-h2d" in op["flags"] for op in copies), copies


def test_the_summary_helper_stays_light():
    """The helper process imports neither torch nor textual, so it starts in a blink."""
    code = "import sys, optwatch.probe.traces; print([m for m in ('torch', 'textual') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_scripts_own_profiler_ending_optwatchs_window_leaves_the_run_as_it_is(tmp_path):
    """A script that profiles steps 4-5 itself while optwatch's window (steps 4-7) records: the script's
    profiler ends the one profiling session a process has, and exporting what was left of optwatch's
    crashed the process (SIGSEGV). optwatch now gives its window up with the reason, and the script runs
    and profiles as it does alone."""
    script = str(SCRIPTS / "own_profiler.py")
    bare = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), "--control", "profile=4@2", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == bare.stdout and "addmm calls: 4" in bare.stdout
    [failed] = [r for r in read_jsonl(record) if r["kind"] == "hotspots" and r["status"] != "profiling"]
    assert failed["status"] == "failed" and "the script's own torch.profiler" in failed["error"]


def test_the_shapes_beside_an_ops_module_are_that_modules_calls():
    """A row named the module where an op spent most (one wide layer) beside the input shapes that took most
    over all modules (six narrow layers of one shape, which add up to more): a ResNet's BatchNorm of 32
    channels read as if it saw [128, 64, 8, 8]. The shapes are the module's own calls'. (A trace written as
    torch writes it, with the times by hand: a real window's op times on a busy machine put a narrow layer
    over the wide one four times its size.)"""
    events, ts = [], 0
    for index, (width, dur) in enumerate([(1024, 400), *((256, 100),) * 6]):  # the wide layer, then six narrow
        scope = {"External id": 2 * index + 1}
        events.append({"ph": "X", "cat": "user_annotation", "name": f"module: {index} (Linear)", "pid": 1,
                       "tid": 1, "ts": ts, "dur": dur + 10, "args": scope})  # fmt: skip
        dims = {"External id": 2 * index + 2, "Input Dims": [[256], [128, width], [width, 256], [], []]}
        events.append({"ph": "X", "cat": "cpu_op", "name": "aten::addmm", "pid": 1, "tid": 1, "ts": ts + 5,
                       "dur": dur, "args": dims})  # fmt: skip
        ts += dur + 20
    summary = summarise({"traceEvents": events}, wall_s=ts / 1e6, device_used=False)
    [addmm] = [op for op in summary["ops"] if op["name"] == "aten::addmm"]
    assert addmm["self_cpu_s"] == pytest.approx(0.001)  # 400 us + 6 x 100 us: the narrow ones take more
    assert addmm["module"] == "0 (Linear)", addmm  # the wide layer: each narrow one spends a quarter of it
    assert addmm["shapes"][0][:2] == [[256], [128, 1024]], addmm["shapes"]  # its inputs, not the narrow ones'


def test_a_profile_someone_asked_for_is_left_out_of_the_checks_budget():
    """Its window and summary charged 0.38 s to optwatch's own time in one step, and the budget spaced the
    checks to every 128th step: the gradient norm was not measured again for some 130 steps. The governor
    is now told of the window's steps without their time, so they cannot move the spacing. (The spacing
    itself depends on the machine's other load, so the test reads what the governor is told.)"""
    probe, published = start_probe()
    told: list[tuple[int, float, float | None]] = []
    plan = probe.governor.plan

    def spy(step, own_s, step_time, detailed=True):
        told.append((step, own_s, step_time))
        return plan(step, own_s, step_time, detailed)

    probe.governor.plan = spy  # type: ignore[method-assign]
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, optimizer, 30, sleep_s=0.002)
    assert profiler_of(probe).request_window(5)["ok"]
    train(model, optimizer, 30, sleep_s=0.002)
    worker = profiler_of(probe)._worker
    if worker is not None:
        worker.join(30)  # (the summary, on its thread)
    train(model, optimizer, 5, sleep_s=0.002)
    probe.close()
    done = hotspots(published)
    assert done, "the profile was taken"
    first, last = done[-1]["steps"]
    in_window = [(step, own_s, step_time) for step, own_s, step_time in told if first <= step <= last]
    assert len(in_window) == last - first + 1, told
    assert all(step_time is None and own_s == 0.0 for _, own_s, step_time in in_window), in_window
    counted = [step for step, _, step_time in told if step_time is not None]
    assert counted[:20] == list(range(20)) and counted[-3:] == [62, 63, 64], counted  # the rest still counts


def test_the_optimizers_scopes_read_as_plain_names():
    """The digest read 'Optimizer.zero grad#SGD.zero grad 4%' beside 'optimizer step 19%'."""
    assert friendly_name("Optimizer.step#SGD.step") == "optimizer step"
    assert friendly_name("Optimizer.zero_grad#SGD.zero_grad") == "optimizer zero grad"
    assert friendly_name("aten::convolution_backward") == "convolution backward"
