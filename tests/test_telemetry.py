"""Step phases on real loops in this process, and the verdict of real runs under `optwatch run`."""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
import torch

from conftest import SCRIPTS, new_probe, optwatch, read_jsonl, records_of, steps_of, train
from optwatch.probe.probe import Probe

PHASES = ("data_wait_s", "forward_s", "backward_s", "optimizer_s", "other_s")


@pytest.fixture
def probe():
    probe = new_probe("telemetry-test").start()
    yield probe
    probe.close()


def recorded(probe: Probe, kind: str = "step") -> list[dict]:
    return records_of(probe, kind)


class SleepyModel(torch.nn.Module):
    def __init__(self, forward_sleep: float, backward_sleep: float = 0.0):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.forward_sleep = forward_sleep
        self.backward_sleep = backward_sleep

    def forward(self, x):
        time.sleep(self.forward_sleep)
        out = self.linear(x)
        if self.backward_sleep and out.requires_grad:
            out.register_hook(lambda grad: time.sleep(self.backward_sleep))
        return out


class SleepyData(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        time.sleep(0.005)
        return torch.randn(4), torch.randn(1)


def test_a_sleep_in_each_phase_shows_in_that_phase_and_the_phases_add_up(probe):
    model = SleepyModel(forward_sleep=0.03, backward_sleep=0.02)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: time.sleep(0.015))
    loader = torch.utils.data.DataLoader(SleepyData(), batch_size=2)  # 2 x 5 ms of data wait
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(0.01)  # the loop's own work: "other"
        if probe.step == 6:
            break
    steps = recorded(probe)[1:]  # step 0 pays for finding the model
    assert len(steps) == 5
    for step in steps:
        assert step["forward_s"] >= 0.03 and step["backward_s"] >= 0.02 and step["optimizer_s"] >= 0.015
        assert step["data_wait_s"] >= 0.01 and step["other_s"] >= 0.01
        # Each sleep lands in its phase, not in its neighbours (margins are generous for a loaded CPU).
        assert step["forward_s"] > max(step["backward_s"], step["optimizer_s"], step["data_wait_s"])
        # (optwatch's own time is taken out of "other": telemetry.md)
        assert sum(step[p] for p in PHASES) + step["optwatch_s"] == pytest.approx(step["step_time_s"], rel=1e-9)


def test_what_follows_the_optimizer_step_is_not_forward_time_and_accumulation_adds_up(probe):
    """The forward is timed from its batch's arrival, so an evaluation after the step (or anything the loop
    does before taking its next batch) is "other"; each micro-batch's forward counts."""
    model = SleepyModel(forward_sleep=0.02)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    batches = iter(torch.utils.data.DataLoader(data, batch_size=4))
    for _ in range(5):
        optimizer.zero_grad()
        for _ in range(2):  # two micro-batches: two forwards, two backwards, one step
            x, y = next(batches)
            torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        with torch.no_grad():
            model(x)  # a quick evaluation: not training forward time
    steps = recorded(probe)[1:]
    for step in steps:
        assert 0.04 <= step["forward_s"] < 0.06 + 0.5 * step["other_s"]
        assert step["other_s"] >= 0.02


def test_the_forward_runs_to_backward_and_holds_the_models_own_hooks(probe):
    """Without a hook of optwatch's on any module, the forward is what runs from the step's start (or its
    batch) to backward(): the model's own hooks on both sides are in it."""
    model = SleepyModel(forward_sleep=0.0)
    model.register_forward_pre_hook(lambda module, args: time.sleep(0.02))
    model.register_forward_hook(lambda module, args, output: time.sleep(0.03))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, optimizer, torch.randn(8, 4), torch.randn(8, 1), steps=4)
    steps = recorded(probe)
    assert steps[0]["forward_s"] is None  # the first step starts at its backward()
    assert [s["forward_s"] > 0.05 for s in steps[1:]] == [True] * 3
    assert [s["other_s"] < 0.02 for s in steps[1:]] == [True] * 3


def test_the_training_loaders_settings_are_kept_not_the_evaluation_loaders(probe):
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    for _ in torch.utils.data.DataLoader(data, batch_size=4, pin_memory=False):
        pass
    with torch.no_grad():
        for _ in torch.utils.data.DataLoader(data, batch_size=8):
            pass
    assert probe.loader["batch_size"] == 4 and probe.loader["num_workers"] == 0


def test_without_an_optimizer_there_is_no_optimizer_phase(probe):
    weight = torch.randn(3, requires_grad=True)
    for _ in range(3):
        (weight**2).sum().backward()
        weight.grad = None
    steps = recorded(probe)
    for step in steps:
        assert step["optimizer_s"] is None and step["backward_s"] >= 0 and step["other_s"] >= 0
    assert all(step["forward_s"] is not None for step in steps[1:])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_phases_come_from_events_without_a_sync(probe):
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 1)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(256, 512, device="cuda"), torch.randn(256, 1, device="cuda")
    train(model, optimizer, x, y, steps=3)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train(model, optimizer, x, y, steps=20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    steps = recorded(probe)[2:]
    for step in steps:
        assert all(isinstance(step[p], float) for p in PHASES)
        assert step["forward_s"] > 0 and step["backward_s"] > 0 and step["optimizer_s"] > 0
        assert step["host_phases_s"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_steps_between_detail_steps_are_not_timed_and_the_verdict_reads_the_timed_ones():
    """A small model's millisecond step: over its 1% budget, optwatch times the phases on the device at
    detail steps only; the others say so (None), and the bottleneck verdict still gets its shares."""
    from optwatch.diagnose.bottleneck import summarise

    probe = new_probe("telemetry-test", grad_full_cadence_steps=10).start()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 1, device="cuda")
    train(model, optimizer, x, y, steps=300)
    steps = recorded(probe)[20:]
    timed = [s for s in steps if s["detailed"]]
    untimed = [s for s in steps if not s["detailed"]]
    assert timed and untimed
    for step in timed:
        assert all(isinstance(step[p], float) for p in PHASES) and step["host_phases_s"] > 0
    for step in untimed:
        assert step["forward_s"] is None and step["backward_s"] is None and "host_phases_s" not in step
        assert isinstance(step["step_time_s"], float) and isinstance(step["loss"], float)
    window = summarise(steps, [], "cuda:0")
    assert window.shares["forward_s"] > 0 and window.device_busy_share > 0 and window.launch_ratio > 0


# --- real runs under the CLI ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_data_run(tmp_path_factory):
    record = tmp_path_factory.mktemp("slow") / "r.jsonl"
    script = str(SCRIPTS / "slow_data.py")
    result = optwatch(
        "run", "--headless", "--record", str(record), script, "--steps", "40", "--workers", "2", "--sleep", "0.025"
    )
    return result, read_jsonl(record)


@pytest.mark.xdist_group("slow_data_run")  # one worker builds the module's slow_data_run
def test_a_dataset_that_sleeps_is_input_bound(slow_data_run):
    result, records = slow_data_run
    assert result.returncode == 0, result.stderr
    [final] = [r for r in records if r["kind"] == "verdict" and r["final"]]
    assert final["bottleneck"] == "input", final
    assert final["evidence"]["data_wait_share"] > 0.5
    assert final["evidence"]["num_workers"] == 2 and final["evidence"]["workers"] == 2
    assert final["window"][0] >= 2 and final["window"][1] == 39
    assert "optwatch: final verdict input-bound (steps" in result.stderr
    assert "optwatch:   try: " in result.stderr
    assert "Traceback" not in result.stderr
    # No warning from optwatch's own code (torch may warn about its own environment, e.g. without numpy).
    assert not [line for line in result.stderr.splitlines() if "Warning" in line and "/optwatch/" in line]
    # The final verdict comes before the rank's end record, so every viewer has it.
    kinds = [r["kind"] for r in records if r["kind"] in ("verdict", "end")]
    assert kinds[-2:] == ["verdict", "end"]


@pytest.mark.xdist_group("slow_data_run")  # one worker builds the module's slow_data_run
def test_system_records_carry_the_workers_and_the_gpu_state(slow_data_run):
    _, records = slow_data_run
    systems = [r for r in records if r["kind"] == "system"]
    assert len(systems) >= 3
    assert any(len(s["workers"]) == 2 for s in systems)
    for system in systems:
        assert system["cpu_count"] >= 1 and system["rss_bytes"] > 0
        # (The training thread's count, once it has read it: before its first step ends, unknown.)
        threads = system["torch_threads"]
        assert threads >= 1 if system.get("step", 0) > 0 else threads is None or threads >= 1
        if not torch.cuda.is_available():
            assert system["gpu_status"].startswith("no NVIDIA GPU") and system["gpus"] == []
            assert "mem_allocated_bytes" not in system


@pytest.mark.xdist_group("slow_data_run")  # one worker builds the module's slow_data_run
def test_phases_of_a_real_run_add_up(slow_data_run):
    _, records = slow_data_run
    steps = steps_of(records)[2:]
    for step in steps:
        # (optwatch's own time is taken out of "other": telemetry.md. Its hooks' time and a phase's span share
        # the microseconds between their clock reads: the machine taking the core there shows in both.)
        assert sum(step[p] for p in PHASES) + step["optwatch_s"] == pytest.approx(step["step_time_s"], abs=1e-3)
    # Two workers prefetch, so every other batch is ready at once; over the run, the wait dominates.
    waiting = sum(s["data_wait_s"] for s in steps)
    assert waiting > 5 * sum(s["forward_s"] + s["backward_s"] + s["optimizer_s"] for s in steps)


def test_a_heavy_cnn_on_in_memory_tensors_is_compute_bound(tmp_path):
    """Where its thread has the core, the model's math is the bottleneck; where other programs (a loaded test
    machine's) take it, that is said instead, as the script's own thread's CPU time shows it."""
    record, times = tmp_path / "r.jsonl", tmp_path / "times.json"
    result = optwatch(
        "run", "--headless", "--record", str(record), str(SCRIPTS / "heavy_cnn.py"), "--steps", "12",
        "--times", str(times), env={**os.environ, "OMP_NUM_THREADS": "1"},  # (one thread: its CPU is the process's)
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [final] = [r for r in read_jsonl(record) if r["kind"] == "verdict" and r["final"]]
    evidence = final["evidence"]
    assert evidence["data_wait_share"] < 0.05
    steps = json.loads(times.read_text())
    had = sum(cpu for cpu, _ in steps) / sum(wall for _, wall in steps)
    if final["bottleneck"] == "host" and had < 0.6:
        assert "take the CPU it computes on" in final["message"], (had, final)
        return
    assert final["bottleneck"] == "compute", (had, final)
    assert evidence["forward_share"] + evidence["backward_share"] + evidence["optimizer_share"] > 0.8
    assert "optwatch: final verdict compute-bound" in result.stderr


@pytest.mark.xdist_group("slow_data_run")  # one worker builds the module's slow_data_run
async def test_the_system_tab_shows_a_real_runs_verdict_and_telemetry(slow_data_run):
    from optwatch.app.app import OptwatchApp
    from optwatch.app.widgets.gpu_panel import GpuPanel
    from optwatch.app.widgets.phase_chart import PhaseChart
    from optwatch.app.widgets.verdict_panel import VerdictPanel
    from optwatch.app.widgets.workers_panel import WorkersPanel
    from optwatch.store import Store

    store = Store()
    store.ingest(slow_data_run[1])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await pilot.pause(0.3)
        assert app.query_one("TabbedContent").active == "system"
        verdict_lines = app.query_one(VerdictPanel).lines
        chart = app.query_one(PhaseChart)
        workers = app.query_one(WorkersPanel).lines
        gpu = app.query_one(GpuPanel).lines
        findings = app.query_one("#findings").lines
    assert verdict_lines[0].startswith(" INPUT-BOUND ")
    assert "data " in verdict_lines[1] and verdict_lines[2].startswith("  → ")
    assert chart.shares["data"] > 0.5 and len(chart.columns) == 40
    assert workers[0] == "num_workers=2 pin_memory=off"
    if not torch.cuda.is_available():
        assert gpu[0] == "no NVIDIA GPU"
    assert findings[0].startswith("input-bound: ")


class HookCounter(torch.nn.Module):
    """A model that notes, at each call, the forward hooks set on every module call (global) and its own."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        self.hooks_seen: list[int] = []

    def forward(self, x):
        from torch.nn.modules import module

        global_hooks = len(module._global_forward_pre_hooks) + len(module._global_forward_hooks)
        self.hooks_seen.append((global_hooks, len(self._forward_pre_hooks) + len(self._forward_hooks)))
        return self.layers(x)


def test_steps_between_detail_steps_are_not_timed_and_no_step_carries_a_hook():
    """A tiny model's sub-millisecond CPU step: over its 1% budget, only detail steps are timed; the steps
    between say their phases are unknown, and the verdict reads the timed ones. No module call inside the
    model passes through a hook of optwatch's (with any hook, every module call takes torch's slower path),
    and none is ever the model's own outside its call: it would travel with the model into torch.save files
    and deep copies, which the loop makes at every step here."""
    import copy
    import io

    from optwatch.diagnose.bottleneck import summarise

    probe = new_probe("telemetry-test", grad_full_cadence_steps=10).start()
    model = HookCounter()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        assert not model._forward_hooks and not model._forward_pre_hooks
        torch.save(model, io.BytesIO())
        copy.deepcopy(model)
    steps = recorded(probe)
    assert [s["step"] for s in steps] == list(range(300)) == list(range(len(model.hooks_seen)))
    timed = [s for s in steps[1:] if s["detailed"]]
    untimed = [s for s in steps if not s["detailed"]]
    assert len(untimed) > 150 and len(timed) > 10
    for step in timed:
        assert all(isinstance(step[p], float) for p in PHASES) and step["forward_s"] > 0
    for step in untimed:
        assert step["forward_s"] is None and step["backward_s"] is None and step["optimizer_s"] is None
        assert isinstance(step["step_time_s"], float) and isinstance(step["loss"], float)
    # Inside the model no global hook; its own is the forward's end on a detail step, during the call alone.
    assert {seen for seen, step in zip(model.hooks_seen, steps) if not step["detailed"]} == {(0, 0)}
    assert {seen for seen, step in zip(model.hooks_seen, steps) if step["detailed"]} <= {(0, 0), (0, 1)}
    window = summarise(steps[20:], [], "cpu")
    assert window.shares["forward_s"] > 0 and window.shares["backward_s"] > 0


def test_a_pause_and_work_after_the_last_step_are_not_read_as_steps_that_wait(tmp_path):
    """Paused 8 s and resumed, a compute-bound loop was called host-bound for a while ("the process used 12%
    of a core: the steps wait"), and a save of seconds after its last step made its final verdict host-bound: the
    verdict's CPU figure took idle samples whose time no step has. Those of a pause, and those after the
    window's last step, are left out."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "pause=5@120", str(SCRIPTS / "heavy_cnn.py"),
        "--steps", "280", "--tail-s", "5", "--times", str(tmp_path / "times.json"),
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # (one core: 100% busy)
    )  # fmt: skip
    # (Paused past step 100, where a window starts over, with 160 steps of some 40 ms after it: longer than
    # the 5 s between verdicts, so that one comes with the steps after the resume in its window. Paused at
    # 40, the 60 steps after it could all fall between two verdicts, the next one's window starting at 100.)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(record)
    held = [r for r in records if r["kind"] == "system" and r.get("held")]
    assert len(held) >= 6, "the pause's samples say so"  # (every 0.5 s for 5 s)
    verdicts = [r for r in records if r["kind"] == "verdict"]
    # Windows that hold the steps right after the resume, whose first sample reaches back into the pause.
    after = [v for v in verdicts if v["window"][0] <= 140 and v["window"][1] >= 120]
    assert after, verdicts
    assert all(v["bottleneck"] == "compute" for v in verdicts), [(v["window"], v["message"]) for v in verdicts]
    assert verdicts[-1]["final"]
    # One thread that computes all the time uses what the machine's other load leaves it of a core: each
    # verdict's figure is near the share the script's own steps had of a core in its window (whether the
    # verdict flips also depends on that load: the figure itself does not). Idle samples counted in took a
    # third of it or more.
    times = json.loads((tmp_path / "times.json").read_text())
    usual = statistics.median(wall for _, wall in times)
    for verdict in verdicts:
        first, last = verdict["window"]
        steps = [(cpu, wall) for cpu, wall in times[first : last + 1] if wall < 5 * usual]  # (not the paused one)
        share = 100 * sum(cpu for cpu, _ in steps) / sum(wall for _, wall in steps)
        assert verdict["evidence"]["cpu_percent"] > 0.8 * share, (verdict["window"], share, verdict["evidence"])


def test_time_to_backward_runs_to_the_steps_last_backward_where_ddp_syncs_under_accumulation(probe):
    """Under accumulation with DDP's no_sync the gradients' all-reduce is in the last micro-batch's backward:
    a rank slow in each of four micro-batches reached the first backward 15 ms in, under the straggler
    check's bar, while the others waited for it 60 ms a step. By hand: 4 forwards of 10 ms before the last."""
    model = SleepyModel(forward_sleep=0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 4), torch.randn(2, 1)
    for _ in range(4):
        for _ in range(4):
            (torch.nn.functional.mse_loss(model(x), y) / 4).backward()
        optimizer.step()
        optimizer.zero_grad()
    steps = recorded(probe)
    assert len(steps) == 4
    assert all(0.04 <= s["to_backward_s"] < s["step_time_s"] for s in steps[1:]), [s["to_backward_s"] for s in steps]
