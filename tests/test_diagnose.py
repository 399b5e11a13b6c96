"""The bottleneck rules and the verdict tracker, on records built by hand (pure functions, no torch)."""

from __future__ import annotations

import random

import pytest

from optwatch.app.widgets.verdict_panel import evidence_parts
from optwatch.diagnose.bottleneck import classify, summarise
from optwatch.diagnose.phases import other_seconds
from optwatch.diagnose.tracker import VerdictTracker


def make_steps(n: int = 20, step_time: float = 0.1, start: int = 2, **phases: float) -> list[dict]:
    """Steps of ``step_time`` seconds split into ``phases`` (seconds each); "other" is what is left."""
    steps = []
    for i in range(n):
        step = {"v": 1, "kind": "step", "rank": 0, "time": 100.0 + i * step_time, "step": start + i}
        step.update(step_time_s=step_time, **phases)
        step["other_s"] = other_seconds(step)
        steps.append(step)
    return steps


def make_systems(n: int = 4, **fields) -> list[dict]:
    base = {"cpu_percent": 100.0, "cpu_count": 8, "torch_threads": 8, "host_mem_used_bytes": 4e9}
    base["host_mem_total_bytes"] = 32e9
    return [{"v": 1, "kind": "system", "rank": 0, "time": 100.0 + i * 0.5, **base, **fields} for i in range(n)]


def gpu(util: float, **fields) -> dict:
    return {"index": 0, "current": True, "util_percent": util, **fields}


def verdict(steps, systems=(), device="cpu", loader=None) -> dict:
    return classify(summarise(steps, list(systems), device, loader))


CPU_COMPUTE = dict(data_wait_s=0.002, forward_s=0.03, backward_s=0.06, optimizer_s=0.005)


def test_waiting_for_data_is_input_bound_with_worker_advice():
    steps = make_steps(data_wait_s=0.06, forward_s=0.01, backward_s=0.02, optimizer_s=0.005)
    result = verdict(steps, make_systems(workers=[]), loader={"num_workers": 0})
    assert result["bottleneck"] == "input"
    assert result["message"].startswith("60% of step time waits for the next batch")
    assert result["evidence"]["data_wait_share"] == pytest.approx(0.6)
    assert "num_workers=N" in result["suggestions"][0] and "8 cores" in result["suggestions"][0]
    assert 1 <= len(result["suggestions"]) <= 2
    # (A DataLoader without workers raises ValueError for a prefetch_factor: no such advice there.)
    assert not any("prefetch_factor" in tip for tip in result["suggestions"])


def test_an_evaluation_that_takes_more_time_than_the_training_waits_for_data_is_named_first():
    """An evaluation through a DataLoader every 10 steps, two thirds of the time: the training steps wait
    for data 40% of their time, 13% of the run's, and the verdict was "input-bound: raise num_workers"
    with the evaluation unnamed. By hand: 9 steps of 50 ms and one of 50 + 900 ms: 900 / 1400 = 64%."""
    steps = make_steps(20, 0.05, data_wait_s=0.02, forward_s=0.01, backward_s=0.015, optimizer_s=0.005)
    for step in steps[9::10]:
        step["step_time_s"], step["eval_batches"] = 0.95, 8
    result = verdict(steps, make_systems(torch_threads=1), loader={"num_workers": 0})
    assert result["bottleneck"] == "host" and result["message"].startswith("evaluation takes 64% of the time")
    # A wait for data that outweighs the evaluation is still the verdict: 0.72 s of data wait in 1.5 s
    # against evaluations' 0.5 s (33%, over the threshold).
    light = make_steps(20, 0.05, data_wait_s=0.04, forward_s=0.004, backward_s=0.004, optimizer_s=0.002)
    for step in light[9::10]:
        step["step_time_s"], step["eval_batches"] = 0.30, 8
    result = verdict(light, make_systems(torch_threads=1), loader={"num_workers": 0})
    assert result["evidence"]["evaluation_share"] == pytest.approx(0.5 / 1.5, abs=1e-3)
    assert result["bottleneck"] == "input"


def test_idle_workers_on_a_machine_with_no_core_to_spare_are_not_told_to_multiply():
    """Two workers on two cores, the host at 98%: the workers were "mostly idle ... waits on I/O; raise
    num_workers", where measured without optwatch 0 workers gave 36025 samples/s, 2 gave 24516 and 4 23340.
    Then "fewer workers", where workers that sleep in I/O on a machine others keep busy ran twice as fast
    with twice as many (1: 35.8 ms a step, 2: 17.4, 4: 8.7). Their CPU figure cannot tell the two apart:
    both readings are said, with the experiment that tells them apart."""
    workers = [{"pid": 10 + i, "cpu_percent": 30.0} for i in range(2)]
    steps = make_steps(data_wait_s=0.05, forward_s=0.02, backward_s=0.02, optimizer_s=0.005)
    systems = make_systems(workers=workers, cpu_count=2, host_cpu_percent=98.0)
    result = verdict(steps, systems, "cpu", {"num_workers": 2, "pin_memory": False})
    assert result["bottleneck"] == "input"
    tip = result["suggestions"][0]
    assert tip.startswith("The 2 workers are mostly idle while the machine's 2 cores are busy (98% in all")
    assert "try num_workers=4 and compare the step time" in tip and "if they wait for a core" in tip
    assert "raise num_workers" not in " ".join(result["suggestions"])


@pytest.mark.parametrize(
    ("workers_cpu", "loader", "device", "expected"),
    [
        (10.0, {"num_workers": 4, "pin_memory": True}, "cpu", "mostly idle"),  # I/O-bound __getitem__
        (99.0, {"num_workers": 2, "pin_memory": True}, "cpu", "Raise DataLoader num_workers (2 now, 8 cores"),
        (99.0, {"num_workers": 8, "pin_memory": True}, "cpu", "CPU-bound on every core"),
    ],
)
def test_input_advice_follows_what_the_workers_do(workers_cpu, loader, device, expected):
    workers = [{"pid": 10 + i, "cpu_percent": workers_cpu} for i in range(loader["num_workers"])]
    steps = make_steps(data_wait_s=0.05, forward_s=0.02, backward_s=0.02, optimizer_s=0.005)
    result = verdict(steps, make_systems(workers=workers), device, loader)
    assert result["bottleneck"] == "input"
    assert expected in result["suggestions"][0]
    assert result["evidence"]["workers"] == loader["num_workers"]


def test_input_on_cuda_without_pinned_memory_suggests_pin_memory():
    steps = make_steps(data_wait_s=0.05, forward_s=0.02, backward_s=0.02, optimizer_s=0.005, host_phases_s=0.01)
    result = verdict(steps, make_systems(gpus=[gpu(30)]), "cuda:0", {"num_workers": 2, "pin_memory": False})
    assert "pin_memory=True" in result["suggestions"][1] and "non_blocking=True" in result["suggestions"][1]


def test_model_math_on_the_cpu_is_compute_bound():
    result = verdict(make_steps(**CPU_COMPUTE), make_systems(torch_threads=4))
    assert result["bottleneck"] == "compute"
    assert "95% of each step on the CPU" in result["message"]
    assert "torch.set_num_threads" in result["suggestions"][1]  # 4 threads on 8 cores
    # Two DDP ranks of 4 threads each use the 8 cores: more threads would oversubscribe them.
    window = summarise(make_steps(**CPU_COMPUTE), make_systems(torch_threads=4), "cpu")
    window.world_size = 2
    assert not any("set_num_threads" in tip for tip in classify(window)["suggestions"])


def test_model_phases_at_a_quarter_of_a_core_are_waiting_not_compute():
    """nanoGPT reads its batch from a memmap between forward and backward: 15 ms of a 39 ms step inside the
    forward phase, at 23% of a core. That is no busy CPU, and a GPU is no cure."""
    result = verdict(make_steps(**CPU_COMPUTE), make_systems(cpu_percent=23.0, host_cpu_percent=30.0))
    assert result["bottleneck"] == "host" and "the process used 23% of a core: the steps wait" in result["message"]
    assert "DataLoader" in result["suggestions"][0] and not any("GPU" in tip for tip in result["suggestions"])
    window = summarise(make_steps(**CPU_COMPUTE), make_systems(cpu_percent=23.0, host_cpu_percent=30.0))
    window.world_size = 2  # a DDP rank waiting for the straggler at the all-reduce
    ranked = classify(window)
    assert "wait (for the other ranks at the gradients' all-reduce" in ranked["message"]
    assert ranked["suggestions"][0].startswith("Under DDP every rank waits for the slowest")
    # On a machine whose cores other programs keep busy, the starved process waits for cores, not for
    # something in its loop: said so, with fewer threads (not a GPU, not bf16) to try.
    starved = verdict(make_steps(**CPU_COMPUTE), make_systems(cpu_percent=23.0, host_cpu_percent=98.0))
    assert starved["bottleneck"] == "host", starved["message"]
    assert starved["message"] == (
        "the machine's 8 cores are busy (98% in all) and this process gets 23% of a core for 8 torch threads: "
        "other processes (other programs, other ranks, DataLoader workers) take the CPU it computes on"
    )
    assert starved["suggestions"][0].startswith("Fewer threads wait less for cores others take")
    assert not any("GPU" in tip or "bf16" in tip for tip in starved["suggestions"])
    # Where the kernel says how long the training thread waited for a core: starved (60% of the time), said
    # with it; asleep (2%: a rank waiting at the all-reduce for a straggler, on the same busy machine), the
    # steps wait, which "find what else runs" hid.
    waits = verdict(make_steps(**CPU_COMPUTE), make_systems(cpu_percent=23.0, host_cpu_percent=98.0,
                                                            run_wait_percent=60.0))  # fmt: skip
    assert ", its training thread waiting for one 60% of the time: other processes" in waits["message"]
    asleep = summarise(
        make_steps(**CPU_COMPUTE), make_systems(cpu_percent=3.0, host_cpu_percent=98.0, run_wait_percent=2.0), "cpu"
    )
    asleep.world_size = 2
    said = classify(asleep)
    assert "wait (for the other ranks at the gradients' all-reduce" in said["message"], said["message"]
    assert said["evidence"]["run_wait_percent"] == 2.0
    # Its own DataLoader workers keeping the cores busy are no other programs (by hand: 98% of 8 cores is
    # 784% of a core; 23% the process's, 760% its 8 workers').
    workers = [{"pid": 10 + i, "cpu_percent": 95.0} for i in range(8)]
    own = verdict(make_steps(**CPU_COMPUTE), make_systems(cpu_percent=23.0, host_cpu_percent=98.0, workers=workers))
    assert "other processes" not in own["message"], own["message"]


def test_time_outside_the_phases_on_the_cpu_is_host_bound():
    steps = make_steps(data_wait_s=0.002, forward_s=0.02, backward_s=0.02, optimizer_s=0.005)
    result = verdict(steps, make_systems())
    assert result["bottleneck"] == "host"
    assert result["evidence"]["other_share"] == pytest.approx(0.53)
    # Outside the phases is where a loop that makes its own batches spends it (telemetry.md): said first.
    assert result["suggestions"][0].startswith("Batches made in the loop")
    assert "a loss computed by functions after the model returns" in result["message"]
    # A loop whose batches come from a DataLoader is told of its bookkeeping first (a checkpoint every step).
    with_loader = verdict(steps, make_systems(), loader={"num_workers": 2, "pin_memory": False})
    assert with_loader["suggestions"][0].startswith("Move per-step logging, metrics and checkpointing")


def test_no_dominant_cause_is_balanced():
    steps = make_steps(data_wait_s=0.02, forward_s=0.02, backward_s=0.03, optimizer_s=0.005)
    result = verdict(steps, make_systems())
    assert result["bottleneck"] == "balanced"
    assert result["message"] == "data 20% · model 55% · other 25%"


def test_a_busy_gpu_is_compute_bound_and_names_the_controls():
    steps = make_steps(data_wait_s=0.002, forward_s=0.03, backward_s=0.06, optimizer_s=0.005, host_phases_s=0.02)
    result = verdict(steps, make_systems(gpus=[gpu(96)]), "cuda:0")
    assert result["bottleneck"] == "compute"
    assert result["message"] == "GPU 96% busy; data wait 2%"
    assert any("amp=on" in tip for tip in result["suggestions"])
    assert any("cudnn_benchmark=on" in tip for tip in result["suggestions"])


@pytest.mark.parametrize("precision", ["bfloat16 autocast", "float16 autocast", "bfloat16"])
def test_advice_leaves_out_what_the_run_already_does(precision):
    """A run already in a 16-bit precision (its own autocast, or bf16 weights) with cudnn.benchmark on is not
    told to turn on AMP or cudnn.benchmark: not on a busy GPU, not near OOM, not on a busy CPU."""
    gpu_steps = make_steps(data_wait_s=0.002, forward_s=0.03, backward_s=0.06, optimizer_s=0.005, host_phases_s=0.02)
    for step in gpu_steps:
        step.update(precision=precision, cudnn_benchmark=True, amp=False)
    busy = verdict(gpu_steps, make_systems(gpus=[gpu(96)]), "cuda:0")
    near_oom = verdict(
        gpu_steps, make_systems(gpus=[gpu(90)], mem_total_bytes=80e9, mem_allocated_bytes=78e9), "cuda:0"
    )
    cpu_steps = make_steps(**CPU_COMPUTE)
    for step in cpu_steps:
        step.update(precision=precision)
    cpu = verdict(cpu_steps, make_systems())
    assert (busy["bottleneck"], near_oom["bottleneck"], cpu["bottleneck"]) == ("compute", "memory", "compute")
    for result in (busy, near_oom, cpu):
        said = " ".join(result["suggestions"])
        assert "amp=on" not in said and "cudnn_benchmark=on" not in said and "mixed precision" not in said.lower()
        assert result["evidence"]["precision"] == precision
    assert f"Already in {precision}" in busy["suggestions"][0] and "torch.compile" in busy["suggestions"][0]
    assert f"Already in {precision}" in cpu["suggestions"][1]


def rollout_steps(n: int = 64, update_s: float = 0.0005, rollout_s: float = 0.02, device_phases: bool = False):
    """PPO's shape: 16 minibatch updates per rollout; the rollout's time falls in the first update's step."""
    steps = make_steps(n, step_time=update_s, data_wait_s=0.0, forward_s=0.0002, backward_s=0.0002, optimizer_s=0.00005)
    for step in steps[::16]:
        step["step_time_s"] = update_s + rollout_s
        step["forward_s"] = 0.0002 + (rollout_s if device_phases else 0.0)
        step["other_s"] = other_seconds(step)
    return steps


@pytest.mark.parametrize("rollout_in_forward", [False, True])
def test_long_steps_among_short_ones_are_work_between_steps_whatever_phase_holds_it(rollout_in_forward):
    """Every 16th step also runs a 20 ms rollout: the verdict says so, with the share of the time it takes
    (by hand: 4 x 20 ms over 64 x 0.5 ms + 4 x 20 ms), whether or not a detail step timed it as forward."""
    result = verdict(rollout_steps(device_phases=rollout_in_forward), make_systems())
    assert result["bottleneck"] == "host"
    assert result["message"].startswith("1 step in 16 takes 41× the median step (20.5 ms vs 0.5 ms): 71% of the time")
    assert result["evidence"]["between_share"] == pytest.approx(4 * 0.02 / (64 * 0.0005 + 4 * 0.02), rel=1e-3)
    assert "profile=17" in result["suggestions"][1]


def test_a_rollouts_share_holds_when_the_detail_steps_fall_on_rollouts_and_a_core_is_waited_for():
    """Past the first steps the detail steps are a few: two of a window's three fell on a PPO loop's rollouts,
    and the rollout's 20 ms was taken for the checks' slow path and out of every rollout (53% said where the
    script's clock said 65%). And a core waited for on every step, long or short, is in no share: by hand, 4 x
    20 ms of 64 x 0.5 ms + 4 x 20 ms, the waits (a fifth of each step) out of both."""
    steps = rollout_steps()
    for index, step in enumerate(steps):
        if index not in (16, 30, 48):  # (the detail steps)
            step["detailed"] = False
            for key in ("forward_s", "backward_s", "optimizer_s", "other_s"):
                step.pop(key)
    assert verdict(steps, make_systems())["evidence"]["between_share"] == pytest.approx(0.714, abs=0.002)
    for step in steps:
        step["core_wait_s"] = step["step_time_s"] / 5
        step["step_time_s"] += step["core_wait_s"]
    assert verdict(steps, make_systems())["evidence"]["between_share"] == pytest.approx(0.714, abs=0.002)
    # A short step held off for a core, among steady ones: its 4 ms wait is none of its work, nor any share.
    steady = make_steps(99, step_time=0.0002, data_wait_s=0.0, forward_s=0.00005, backward_s=0.0001)
    for index in (40, 80):
        steady[index].update(step_time_s=0.0048, core_wait_s=0.004)
    assert "of the time" not in verdict(steady, make_systems())["message"]


def test_noisy_steps_and_a_gpu_host_catching_up_are_not_work_between_steps():
    noisy = make_steps(64, step_time=0.01, **{k: v / 10 for k, v in CPU_COMPUTE.items()})
    rng = random.Random(3)
    for step in rng.sample(noisy, 13):
        step["step_time_s"] = 0.04  # 4x: a busy machine's slow steps, at random (every 5th is a checkpoint's)
    assert "between" not in verdict(noisy, make_systems())["message"]
    for i in (3, 11, 14, 29, 31, 50, 52):
        noisy[i]["step_time_s"] = 0.5  # 50x, at random: other programs took the cores, no work between steps
    assert "between" not in verdict(noisy, make_systems())["message"]
    for first in (5, 25, 45):
        for i in range(first, first + 8):
            noisy[i]["step_time_s"] = 0.6  # bursts of slow steps side by side, as a busy machine makes them
    assert "between" not in verdict(noisy, make_systems())["message"]
    # A busy machine's slices at a regular spacing (every 4th step 5x longer): every phase of those steps took
    # longer, backward and the optimizer's step too, where work between steps leaves those alone.
    sliced = make_steps(
        64, step_time=0.001, data_wait_s=0.0001, forward_s=0.0003, backward_s=0.0004, optimizer_s=0.0001
    )
    for step in sliced[::4]:
        for key in ("step_time_s", "data_wait_s", "forward_s", "backward_s", "optimizer_s"):
            step[key] *= 6
        step["other_s"] = other_seconds(step)
    assert "between" not in verdict(sliced, make_systems())["message"]
    # On a GPU the step that reads a value back waits for the ones queued before it: not extra work.
    assert "between" not in verdict(rollout_steps(), make_systems(gpus=[gpu(96)]), "cuda:0")["message"]


def test_an_idle_gpu_that_follows_the_host_is_host_bound():
    # The device spends about as long in each phase as the host takes to launch it.
    steps = make_steps(data_wait_s=0.002, forward_s=0.03, backward_s=0.05, optimizer_s=0.01, host_phases_s=0.085)
    result = verdict(steps, make_systems(gpus=[gpu(35)]), "cuda:0")
    assert result["bottleneck"] == "host"
    assert "torch.compile" in result["suggestions"][1]


@pytest.mark.parametrize(("own", "said"), [(0.002, False), (0.012, True)])
def test_a_host_bound_verdict_says_what_optwatch_itself_takes(own, said):
    """optwatch's own Python is host work too: on a host-bound step a notable share of it is named, with
    the switches that trim it; a small share is left out of the advice."""
    steps = make_steps(
        data_wait_s=0.002, forward_s=0.03, backward_s=0.05, optimizer_s=0.01, host_phases_s=0.085, optwatch_s=own
    )
    result = verdict(steps, make_systems(gpus=[gpu(35)]), "cuda:0")
    assert result["bottleneck"] == "host"
    assert result["evidence"]["optwatch_share"] == pytest.approx(own / 0.1)
    assert (
        result["message"].endswith("; optwatch itself takes 12% of each step, the shares before are of the rest")
        is said
    )
    advice = [tip for tip in result["suggestions"] if "--budget" in tip]
    assert advice == (["optwatch itself takes 12% of each step here: after its first 100 steps its checks run "
                       "only as often as `--budget` (default 1%) allows; `--grad-every 0` drops the per-layer "
                       "statistics"]
                      if said else [])  # fmt: skip


def test_optwatchs_own_time_on_the_timed_steps_is_not_the_loops():
    """A 0.15 ms step, timed 1 in 128: the detail steps that carry the phases also carry optwatch's checks
    (0.6 ms of a 0.75 ms detail step). That time was "outside the phases", and the verdict called a bare
    forward/backward/step loop host-bound (78%) and told it to move its batches into a DataLoader."""
    light = make_steps(n=127, step_time=0.00015, optwatch_s=0.000005)
    for step in light:
        step.update(detailed=False, forward_s=None, backward_s=None, optimizer_s=None, other_s=None)
    timed = make_steps(n=1, step_time=0.00075, start=129, forward_s=0.00004, backward_s=0.00006, optimizer_s=0.00002,
                       optwatch_s=0.0006)  # fmt: skip
    timed[0]["detailed"] = True
    result = verdict(light + timed, make_systems())
    # The loop's own part of the detail step: 0.75 - 0.6 = 0.15 ms, of which 0.03 ms outside the phases.
    assert result["evidence"]["other_share"] == pytest.approx(0.03 / 0.15, abs=1e-4)  # (evidence: 4 places)
    assert result["evidence"]["forward_share"] == pytest.approx(0.04 / 0.15, abs=1e-4)
    assert result["bottleneck"] != "host", result["message"]


def test_an_idle_gpu_while_the_host_waits_outside_the_phases_is_sync_bound():
    steps = make_steps(data_wait_s=0.002, forward_s=0.015, backward_s=0.03, optimizer_s=0.005, host_phases_s=0.005)
    result = verdict(steps, make_systems(gpus=[gpu(40)]), "cuda:0")
    assert result["bottleneck"] == "sync"
    assert result["evidence"]["launch_ratio"] == pytest.approx(0.1)
    assert ".item()" in result["suggestions"][0] and "set_sync_debug_mode" in result["suggestions"][1]


def test_without_nvml_the_device_phases_stand_in_for_utilisation():
    steps = make_steps(data_wait_s=0.002, forward_s=0.03, backward_s=0.055, optimizer_s=0.01, host_phases_s=0.01)
    result = verdict(steps, make_systems(gpu_status="no NVIDIA GPU (...)", gpus=[]), "cuda:0")
    assert result["bottleneck"] == "compute"
    assert "no NVML utilisation" in result["message"]
    assert "gpu_util_percent" not in result["evidence"] and result["evidence"]["device_busy_share"] == 0.95


def test_on_a_gpu_the_phases_come_from_the_detail_steps_alone():
    """Between detail steps (--budget) a GPU's phases are not timed: those steps count for the step time
    and the data wait, and the phase shares come from the steps that were timed, not from zeros."""
    timed = make_steps(data_wait_s=0.002, forward_s=0.03, backward_s=0.055, optimizer_s=0.01, host_phases_s=0.01)
    steps = []
    for step in timed:
        if step["step"] % 4:
            step.update(detailed=False, forward_s=None, backward_s=None, optimizer_s=None, other_s=None)
            del step["host_phases_s"]
        steps.append(step)
    window = summarise(steps, [], "cuda:0")
    assert window.steps == len(steps) and window.shares["data_wait_s"] == pytest.approx(0.02)
    assert window.shares["backward_s"] == pytest.approx(0.55) and window.device_busy_share == pytest.approx(0.95)
    assert window.launch_ratio == pytest.approx(0.01 / 0.095)
    judged = verdict(steps, make_systems(gpus=[gpu(95)]), "cuda:0")
    assert judged["bottleneck"] == "compute"
    # The shares rest on the timed steps, and the verdict says how many (one in four here): a window past
    # the first 100 steps may hold one, whose phases then read as the window's.
    timed_steps = sum(1 for s in steps if s.get("detailed", True))
    assert judged["evidence"]["timed_steps"] == timed_steps
    assert f"phases of {timed_steps} timed steps" in evidence_parts(judged["evidence"])


def test_allocator_retries_in_the_window_are_memory_bound():
    systems = make_systems(gpus=[gpu(90)], mem_total_bytes=80e9, mem_allocated_bytes=60e9)
    for i, system in enumerate(systems):
        system.update(mem_alloc_retries=3 + 2 * i, mem_ooms=0, mem_fragmentation_bytes=12e9)
    steps = make_steps(data_wait_s=0.002, forward_s=0.03, backward_s=0.06, optimizer_s=0.005, host_phases_s=0.02)
    result = verdict(steps, systems, "cuda:0")
    assert result["bottleneck"] == "memory"
    assert result["message"].startswith("6 allocator retries in the last 2 s")  # 3 before the window do not count
    assert "amp=on" in result["suggestions"][0] and "expandable_segments" in result["suggestions"][1]


def test_full_host_ram_is_memory_bound():
    result = verdict(make_steps(**CPU_COMPUTE), make_systems(host_mem_used_bytes=31.5e9))
    assert result["bottleneck"] == "memory" and "host RAM 98% used" in result["message"]


def test_evidence_leaves_out_what_was_not_measured():
    evidence = verdict(make_steps(**CPU_COMPUTE))["evidence"]
    assert evidence["device"] == "cpu" and evidence["steps"] == 20
    assert "gpu_util_percent" not in evidence and "alloc_retries" not in evidence
    assert all(isinstance(v, (int, float, str, bool)) for v in evidence.values())


# --- the tracker ----------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tracker_emits_every_interval_and_a_final_verdict_before_end():
    clock = FakeClock()
    tracker = VerdictTracker(rank=0, interval_s=5.0, loader=lambda: {"num_workers": 0}, clock=clock)
    steps = make_steps(30, start=0, data_wait_s=0.08, forward_s=0.005, backward_s=0.005, optimizer_s=0.001)
    for step in steps:
        del step["other_s"]  # the tracker completes it
    assert [r["kind"] for r in tracker(steps[:10])] == ["step"] * 10  # not yet time
    clock.now = 5.0
    out = tracker(steps[10:20])
    [first] = [r for r in out if r["kind"] == "verdict"]
    assert first["bottleneck"] == "input" and first["final"] is False
    assert first["window"] == [2, 19]  # warm-up steps 0 and 1 are left out
    assert all("other_s" in r for r in out if r["kind"] == "step")
    clock.now = 6.0
    assert not [r for r in tracker(steps[20:]) if r["kind"] == "verdict"]  # next one due at 10 s
    end = {"v": 1, "kind": "end", "rank": 0, "time": 200.0}
    final = tracker([end])
    assert [r["kind"] for r in final] == ["verdict", "end"]
    assert final[0]["final"] is True and final[0]["window"] == [2, 29]
    assert final[0]["evidence"]["num_workers"] == 0


def test_tracker_ignores_other_ranks_and_needs_a_few_steps():
    clock = FakeClock()
    tracker = VerdictTracker(rank=1, interval_s=1.0, clock=clock)
    clock.now = 10.0
    assert [r["kind"] for r in tracker(make_steps(10, **CPU_COMPUTE))] == ["step"] * 10  # rank 0's
    assert tracker.verdict() == []
    assert tracker([{"v": 1, "kind": "end", "rank": 1, "time": 1.0}])[0]["kind"] == "end"


@pytest.mark.parametrize(("settled_from", "told"), [(100, "after its first 100 steps"), (0, "`--budget 0` runs")])
def test_the_advice_on_optwatchs_own_cost_knows_whether_the_budget_is_off(settled_from, told):
    """Under ``--budget 0`` (the hello: checks never settle) the advice on optwatch's own share says so; it
    used to say its checks run only as often as the budget allows, which the user had turned off."""
    tracker = VerdictTracker(rank=0, interval_s=1e9)
    hello = {"v": 1, "kind": "hello", "rank": 0, "time": 0.0, "first_step": 0,
             "diagnosis": {"settled_from": settled_from}}  # fmt: skip
    tracker([hello, *make_steps(150, **CPU_COMPUTE, optwatch_s=0.02)])
    [result] = tracker.verdict()
    [advice] = [tip for tip in result["suggestions"] if "optwatch itself" in tip]
    assert told in advice


def test_tracker_takes_the_device_from_hello():
    tracker = VerdictTracker(rank=0, interval_s=1e9)
    hello = {"v": 1, "kind": "hello", "rank": 0, "time": 0.0, "device": "cuda:1"}
    tracker([hello, *make_steps(10, forward_s=0.09, host_phases_s=0.01)])
    [result] = tracker.verdict()
    assert result["evidence"]["device"] == "cuda"


def test_once_the_run_is_past_optwatchs_full_first_steps_the_verdict_leaves_them_out():
    """optwatch checks every step until its budget applies (step 100 by default), which costs a short
    host-bound step far more than later: a short run's final verdict judges the steps after that, and
    before it, the steps there are."""
    tracker = VerdictTracker(rank=0, interval_s=1e9, settled_from=20)
    early = make_steps(18, start=2, **CPU_COMPUTE, optwatch_s=0.02)
    late = make_steps(20, start=20, **CPU_COMPUTE, optwatch_s=0.0005)
    for i, step in enumerate(late):
        step["time"] = early[-1]["time"] + (i + 1) * 0.1
    tracker(early)
    [before] = tracker.verdict()
    assert before["window"] == [2, 19] and before["evidence"]["optwatch_share"] == pytest.approx(0.2)
    assert "optwatch itself takes 20%" in " ".join(before["suggestions"])
    tracker(late)
    [final] = tracker([{"v": 1, "kind": "end", "rank": 0, "time": 200.0}])[:1]
    assert final["final"] and final["window"] == [20, 39]
    assert final["evidence"]["optwatch_share"] == pytest.approx(0.005)
    assert "optwatch itself" not in final["message"] + " ".join(final["suggestions"])


def test_an_evaluation_verdict_counts_the_evaluations_of_the_steps_it_names_and_what_they_added():
    """Two evaluations slow (a busy machine), three quick: the line said "5 evaluations in this window, 21.5 ms
    each with its step, against 71.8 ms for a training step" beside "evaluation takes 47%" (the median of
    their times, where the share comes from the two long ones), and its window (steps 3-12) left out the
    step 2 it had counted. Now the figure is what each added to its step on average, and the window holds
    every step it counted."""
    steps = make_steps(20, 0.07, start=3, **CPU_COMPUTE)
    evaluated = {2: 0.6, 6: 0.02, 9: 0.02, 12: 0.5, 15: 0.02}
    extra = make_steps(1, 0.07, start=2, **CPU_COMPUTE)
    for step in extra + steps:
        if step["step"] in evaluated:
            step["step_time_s"], step["eval_batches"] = evaluated[step["step"]], 4
    window = summarise(extra + steps, [], "cpu")
    assert (window.first_step, window.last_step) == (2, 22)
    result = classify(window)
    assert result["bottleneck"] == "host" and result["message"].startswith("evaluation takes"), result["message"]
    added = (0.6 - 0.07 + 0.5 - 0.07) / 5
    assert f"5 evaluations in this window, each adding {added * 1000:.0f} ms to its step" in result["message"]


def test_an_evaluation_share_about_its_threshold_does_not_flip_the_verdict_back_and_forth():
    """The cifar example evaluates every 50 steps, about 30% of the time: the verdict flipped between
    "evaluation takes 35%" and "compute-bound" every few seconds. Once said, it holds down to a little below
    its threshold, and goes when the share truly falls."""
    clock = FakeClock()
    tracker = VerdictTracker(rank=0, interval_s=1.0, window_s=5.0, clock=clock)

    def chunk(first: int, evaluation_s: float) -> list[dict]:
        """20 steps of 70 ms from step ``first``, the last with an evaluation in its time; each chunk 100 s
        after the one before, so that each window holds one."""
        steps = make_steps(20, 0.07, start=first, **CPU_COMPUTE)
        for step in steps:
            step["time"] = first * 5 + (step["step"] - first) * 0.07
        steps[-1]["step_time_s"], steps[-1]["eval_batches"] = evaluation_s, 4
        return steps

    said = []
    for index, evaluation_s in enumerate((0.76, 0.59, 0.62, 0.59, 0.30, 0.30)):  # 33%, 27%, 28%, 27%, 13%, 13%
        # (one thread, at a core's 100%: busy itself, on a busy machine)
        tracker(make_systems(2, time=(2 + 20 * index) * 5, cpu_percent=100.0, host_cpu_percent=100.0, torch_threads=1))
        tracker(chunk(2 + 20 * index, evaluation_s))
        clock.now += 10
        said.append([(verdict["bottleneck"], verdict["message"].split(":")[0][:22]) for verdict in tracker.verdict()])
    assert said[:4] == [[("host", "evaluation takes 33% o")], [("host", "evaluation takes 27% o")],
                        [("host", "evaluation takes 28% o")], [("host", "evaluation takes 27% o")]], said  # fmt: skip
    assert said[4] == [] and said[5][0][0] == "compute", said  # (a change: said when a second window finds it)
    one = summarise(chunk(2, 0.59), make_systems(cpu_percent=100.0, host_cpu_percent=100.0, torch_threads=1), "cpu")
    assert classify(one)["bottleneck"] == "compute"  # (not said first at 27%)


def test_a_compute_verdict_on_untimed_phases_does_not_name_them():
    """DP-SGD with vmap(grad), no backward(): forward and backward untimed, the step's work all "other". The
    verdict said "forward+backward+optimizer take 97%" with those phases null in its own evidence."""
    steps = make_steps(20, 0.05, data_wait_s=0.001)
    for step in steps:
        step["forward_s"] = step["backward_s"] = None
    result = verdict(steps, make_systems(cpu_percent=100.0, host_cpu_percent=100.0, torch_threads=1))
    assert result["bottleneck"] == "compute", result["message"]
    assert "forward+backward" not in result["message"]
    assert result["message"].startswith("the step's work apart from the data wait (its phases untimed) takes 98%")


def test_a_checkpoint_every_50_steps_is_found_among_steps_a_busy_machine_slowed():
    """A checkpoint of 60 ms every 50 steps of 0.45 ms, on a machine whose other programs slowed a third of
    the steps to 4.6 ms at random: the cut for long steps fell among the slowed ones, whose spacing is no
    spacing, and the verdict was "host-bound: 71% of each step outside the phases". By hand over the window:
    10 checkpoints' 59.55 ms beyond a median step, over all the steps' time (40% of it)."""
    rng = random.Random(5)
    steps = make_steps(500, 0.00045, data_wait_s=0.0, forward_s=0.00015, backward_s=0.0002, optimizer_s=0.00005)
    for step in steps:
        if step["step"] % 50 == 25:
            step["step_time_s"] = 0.060
        elif rng.random() < 0.33:
            step["step_time_s"] = 0.0046
        step["other_s"] = other_seconds(step)
    result = verdict(steps, make_systems(torch_threads=1))
    assert result["message"].startswith("1 step in 50 takes 133× the median step (60 ms vs 0.45 ms)"), result["message"]
    total = sum(s["step_time_s"] for s in steps)
    assert result["evidence"]["between_share"] == pytest.approx(10 * (0.060 - 0.00045) / total, rel=1e-3)


def test_the_first_sample_after_a_pause_is_not_read_as_the_steps_waiting():
    """Paused from the dashboard and resumed: the first sample after the pause measured the process's CPU
    since the pause's last one, 10% of a core, and the steps right after the resume were "host-bound: the
    process used 44% of a core: the steps wait". The pause's samples, and that one, are left out."""
    clock = FakeClock()
    tracker = VerdictTracker(rank=0, interval_s=1.0, window_s=5.0, clock=clock)
    base = {"v": 1, "kind": "system", "rank": 0, "cpu_count": 2, "torch_threads": 1, "host_cpu_percent": 40.0}
    samples = [(98.5, 2.0, True), (99.0, 2.0, True), (99.5, 2.0, True), (100.2, 10.0, False), (100.7, 80.0, False)]
    tracker(
        [{**base, "seq": n, "time": at, "cpu_percent": cpu, "held": held} for n, (at, cpu, held) in enumerate(samples)]
    )
    tracker(make_steps(20, 0.05, start=2, **CPU_COMPUTE))
    clock.now += 10
    [verdict] = tracker.verdict()
    assert verdict["bottleneck"] == "compute", verdict["message"]
    assert verdict["evidence"]["cpu_percent"] == 80.0


def test_a_verdict_changes_once_two_windows_in_a_row_find_the_change():
    """On a machine other programs load, a window's figures cross a rule's threshold and back: the verdict
    flipped between compute- and host-bound several times a minute, and headless printed the verdict and its
    advice at each flip. A change is said once the next window finds it too; the first verdict and the
    final one as found."""
    clock = FakeClock()
    tracker = VerdictTracker(rank=0, interval_s=1.0, window_s=5.0, clock=clock)
    said = []
    # (a core's worth of CPU: compute-bound; a third of one on a machine with room: the steps wait)
    for index, cpu_percent in enumerate((100.0, 30.0, 100.0, 30.0, 30.0, 100.0, 100.0)):
        first = 2 + 20 * index
        tracker(make_systems(2, time=first * 5, cpu_percent=cpu_percent, host_cpu_percent=40.0, torch_threads=1))
        steps = make_steps(20, 0.05, start=first, **CPU_COMPUTE)
        for step in steps:
            step["time"] = first * 5 + (step["step"] - first) * 0.05
        tracker(steps)
        clock.now += 10
        said.append([verdict["bottleneck"] for verdict in tracker.verdict()])
    assert said == [["compute"], [], ["compute"], [], ["host"], [], ["compute"]], said
    [final] = tracker([{"v": 1, "kind": "end", "rank": 0, "time": 1e6}])[:1]
    assert final["final"] and final["bottleneck"] == "compute"


def test_a_checkpoint_every_5_steps_at_4x_a_step_is_work_between_steps_not_compute():
    """nanoGPT saving every 5 iterations: each save step 4.1x the median (119 ms vs 29 ms), 40% of the time
    by the script's own timers; the phases from the 2 detail steps in the window, which missed the saves.
    The verdict was "compute-bound: 95%" with a GPU and amp=on to try: a step had to be 5x the median."""
    steps = make_steps(200, 0.029, data_wait_s=0.0003, forward_s=0.009, backward_s=0.016, optimizer_s=0.003)
    for step in steps:
        step["detailed"] = step["step"] in (40, 170)  # (not save steps)
        if step["step"] % 5 == 4:
            step["step_time_s"] = 0.119  # the save, after the optimizer's step
    total = sum(s["step_time_s"] for s in steps)
    result = verdict(steps, make_systems(torch_threads=1, cpu_count=2))
    assert result["bottleneck"] == "host", result["message"]
    assert result["message"].startswith("1 step in 5 takes 4× the median step (119 ms vs 28.7 ms)"), result
    by_hand = 40 * (0.119 - 0.0287) / total  # 40 saves' time beyond a median step's work
    assert result["evidence"]["between_share"] == pytest.approx(by_hand, rel=1e-2)
    assert not any("GPU" in tip or "amp=on" in tip for tip in result["suggestions"])


def test_more_torch_threads_than_cores_is_the_first_thing_to_change():
    """torch.set_num_threads(4) on 2 cores: a tiny GPT's steps took 37 ms, with 2 threads 17 ms. The verdict
    offered a GPU and amp=on, and said nothing of the threads."""
    systems = make_systems(
        cpu_percent=190.0, host_cpu_percent=97.0, torch_threads=4, cpu_count=2, run_wait_percent=29.0
    )
    result = verdict(make_steps(**CPU_COMPUTE), systems)
    assert result["bottleneck"] == "compute", result["message"]
    assert result["suggestions"][0].startswith("torch uses 4 threads on 2 cores: more threads than cores")
    assert "torch.set_num_threads(2)" in result["suggestions"][0]
    ranked = summarise(make_steps(**CPU_COMPUTE), make_systems(cpu_percent=100.0, torch_threads=2, cpu_count=2), "cpu")
    ranked.world_size = 2  # two ranks of 2 threads on 2 cores: one each
    assert "torch.set_num_threads(1)" in classify(ranked)["suggestions"][0]
    fits = verdict(make_steps(**CPU_COMPUTE), make_systems(cpu_percent=100.0, torch_threads=2, cpu_count=2))
    assert fits["suggestions"][0].startswith("The model's math keeps the CPU busy")


@pytest.mark.parametrize("known_later, said", [(True, "(1 thread, 2 cores)"), (False, "(2 cores)")])
def test_a_short_runs_final_verdict_gives_torchs_threads_as_the_run_knows_them_or_leaves_them_out(known_later, said):
    """torch's thread count is read on the training thread after its first step: a run of a few steps had
    no sample in its window that knew it, and its final verdict read "(torch threads ?, 2 cores)". The run's
    latest figure (a sample after its last step) stands in; where no sample knows it, the threads go unsaid."""
    tracker = VerdictTracker(rank=0, interval_s=1e9)
    steps = make_steps(6, start=0, **CPU_COMPUTE)
    for step in steps:
        del step["other_s"]  # the tracker completes it
    early = make_systems(1, cpu_count=2, torch_threads=None)
    later = make_systems(1, cpu_count=2, torch_threads=1 if known_later else None, time=130.0)
    tracker([*early, *steps, *later])
    [final] = [r for r in tracker([{"v": 1, "kind": "end", "rank": 0, "time": 131.0}]) if r["kind"] == "verdict"]
    assert final["bottleneck"] == "compute" and final["window"] == [2, 5]
    assert f"of each step on the CPU {said}" in final["message"], final["message"]
    assert "?" not in final["message"]


def test_two_long_steps_among_a_short_runs_steps_are_said_to_hold_the_time_not_each_step():
    """A short PPO run: 2 rollouts of 3.5 s among 24 steps of 10 ms. Too few long steps to call them work at
    a regular spacing, the verdict read "99% of each step is spent outside data loading, forward, backward
    and optimizer", and its advice was a loop's own bookkeeping. It says which steps hold that time."""
    steps = make_steps(24, 0.01, forward_s=0.003, backward_s=0.005, optimizer_s=0.001, data_wait_s=0.0)
    for index in (8, 16):
        steps[index].update(step_time_s=3.5, other_s=3.5 - 0.009)
    result = verdict(steps, make_systems(torch_threads=1, cpu_count=2))
    assert result["bottleneck"] == "host"
    assert "of each step" not in result["message"], result["message"]
    assert "in 2 steps of 24 that took 350× the median step" in result["message"], result["message"]


def fast_loop(n: int, step_s: float, detail_every: int, optwatch_s: float, seed: int) -> list[dict]:
    """A sub-millisecond CPU loop as optwatch records it past its first 100 steps: one detail step in
    ``detail_every`` carries the phases and optwatch's checks (``optwatch_s``); a machine with other programs
    on it slows one step in 150 to 1-7 ms at random."""
    rng = random.Random(seed)
    steps = make_steps(n, step_s, start=100, data_wait_s=0.0, optwatch_s=0.00002)
    for step in steps:
        if step["step"] % detail_every == 0:
            step.update(detailed=True, forward_s=0.25 * step_s, backward_s=0.37 * step_s, optimizer_s=0.12 * step_s)
            step.update(optwatch_s=optwatch_s, step_time_s=step_s + optwatch_s)
        else:
            step.update(detailed=False, forward_s=None, backward_s=None, optimizer_s=None)
            if rng.random() < 1 / 150:
                step["step_time_s"] = rng.uniform(0.001, 0.007)
        step["other_s"] = other_seconds(step)
    return steps


def test_two_checkpoints_that_hold_most_of_the_time_are_the_verdict_whatever_the_detail_steps_say():
    """A 0.3 ms loop that saves a checkpoint every 400 steps (3.5 s, then 2.6 s): the window's 10 detail steps
    never fell on a save, and the verdict read 'compute-bound: forward+backward+optimizer take 74% of each
    step' while the two saves were 94% of the window's time. By hand: their time beyond a median step's work
    (0.3 ms less optwatch's 0.02 ms) over all the steps' time."""
    steps = fast_loop(1100, 0.0003, 128, optwatch_s=0.0007, seed=9)
    steps[300]["step_time_s"], steps[700]["step_time_s"] = 3.5, 2.6  # (steps 400 and 800)
    typical = 0.0003 - 0.00002
    by_hand = (3.5 + 2.6 - 2 * (typical + 0.00002)) / sum(s["step_time_s"] for s in steps)
    result = verdict(steps, make_systems(cpu_percent=67.0, host_cpu_percent=44.0, torch_threads=1, cpu_count=2))
    assert result["bottleneck"] == "host", result["message"]
    assert result["message"].startswith(
        f"{100 * by_hand:.0f}% of the time is in 2 steps of 1100 that took {3.05 / typical:.0f}× the median step "
        "(3.05 s vs 0.28 ms): work between training steps"
    ), result["message"]
    assert result["suggestions"][0].startswith("Do that work less often or off the training's path")


def test_three_regular_checkpoints_are_found_among_steps_that_optwatch_and_a_busy_machine_slowed():
    """A 2 s upload every 1500 steps of 0.29 ms: 3 in the window, beside 39 detail steps of 1.1 ms (optwatch's
    checks, 0.8 ms of them) and ~33 steps other programs slowed to 1-7 ms. All 70 were 'long', too irregular
    to be a spacing, and the quantile cuts kept fewer than 4: 'host-bound: the steps wait (a read inside the
    loop, a sleep, a lock)', where the script's own timers said the uploads took 78% of the time."""
    steps = fast_loop(5000, 0.00029, 128, optwatch_s=0.0008, seed=4)
    for index in (999, 2499, 3999):  # (steps 1099, 2599, 4099)
        steps[index]["step_time_s"] = 2.0
    assert 60 <= sum(s["step_time_s"] > 3 * 0.00029 for s in steps) <= 80  # (the shape the probe recorded)
    result = verdict(steps, make_systems(cpu_percent=22.0, host_cpu_percent=18.0, torch_threads=1, cpu_count=2))
    assert result["bottleneck"] == "host", result["message"]
    typical = 0.00029 - 0.00002  # (a step's work less optwatch's own time)
    assert result["message"].startswith(
        f"1 step in 1500 takes {(2.0 - 0.00002) / typical:.0f}× the median step (2 s vs 0.27 ms)"
    ), result["message"]
    by_hand = 3 * (2.0 - 0.00002 - typical) / sum(s["step_time_s"] for s in steps)
    assert result["evidence"]["between_share"] == pytest.approx(by_hand, rel=1e-3)
    assert result["evidence"]["long_steps"] == 3


def tiny_loop(preempted_s: float | None) -> list[dict]:
    """Linear(4, 1) at a batch of 2 (b3_tiny): 0.15 ms steps; 39 detail steps of 0.036 ms forward, 0.097 ms
    backward, 0.035 ms optimizer and 0.088 ms else, one of which may have been preempted in its 'else'."""
    steps = make_steps(39 * 128, 0.00015, start=100, data_wait_s=0.0, optwatch_s=0.00002)
    detail = [s for s in steps if s["step"] % 128 == 0]
    for step in steps:
        step.update(detailed=False, forward_s=None, backward_s=None, optimizer_s=None)
    for step in detail:
        step.update(detailed=True, forward_s=0.000036, backward_s=0.000097, optimizer_s=0.000035)
        step.update(optwatch_s=0.0006, step_time_s=0.000256 + 0.0006)
    if preempted_s is not None:
        detail[17]["step_time_s"] += preempted_s
    for step in steps:
        step["other_s"] = other_seconds(step)
    return steps


@pytest.mark.parametrize("preempted_s", [None, 0.019])
def test_one_preempted_detail_step_does_not_turn_a_tiny_loop_host_bound(preempted_s):
    """The shares were sums over ~39 detail steps: one 19 ms preemption in a step's 'else' took the model's
    share from 66% to 22% ('host-bound: 67% of each step is spent outside...'), though every phase's median
    was the same in each window. That step is left out of the shares (by hand: 38 steps' phases over their
    0.256 ms each), as the long-step rules' to judge; the tip is the step's tininess, not a GPU."""
    result = verdict(tiny_loop(preempted_s), make_systems(cpu_percent=100.0, torch_threads=1, cpu_count=2))
    assert result["bottleneck"] == "compute", result["message"]
    assert result["evidence"]["other_share"] == pytest.approx(0.088 / 0.256, abs=1e-4)
    assert result["evidence"]["forward_share"] == pytest.approx(0.036 / 0.256, abs=1e-4)
    assert result["evidence"]["timed_steps"] == 39 - (preempted_s is not None)
    assert result["message"].startswith("forward+backward+optimizer take 66% of each step on the CPU")
    # A 0.13 ms step (0.15 less optwatch's 0.02) is its calls' fixed cost: fewer, larger calls, not a GPU.
    tips = result["suggestions"]
    assert tips[0].startswith("Each step (0.13 ms of work) is a few dozen tiny ops whose fixed cost per call"), tips
    assert "a larger batch" in tips[0]
    assert not any("CUDA GPU is the big step up" in tip or "amp=on" in tip for tip in tips), tips


def test_a_window_left_with_too_few_steps_once_a_notebooks_idle_step_is_out_gets_no_verdict():
    """A notebook's next cell, after a while: the window's last three steps were two of the last cell and the
    one a cell started in, which the verdict leaves out. Judged on the two left ('steps 598-599': 'the process
    used 18% of a core: the steps wait'), a verdict came from a window of no time; none does now."""
    tracker = VerdictTracker(rank=0, interval_s=1e9)
    steps = make_steps(50, **CPU_COMPUTE)
    idle = dict(steps[-1], step=steps[-1]["step"] + 1, time=steps[-1]["time"] + 12.0, step_time_s=12.0)
    tracker([*steps, {**idle, "between_cells": True}])
    assert tracker.verdict() == []


def test_a_tiny_models_detail_steps_are_not_work_between_training_steps():
    """A detail step every 12 on a tiny model took 22x a light one (its checks' hooks put every module call on
    torch's slow path, beyond optwatch's own lines): 'one step in 12 takes 22x the median step: 34% of the time
    is work between training steps'. Measured against the detail steps' own usual time, they are no long
    steps; a checkpoint among them still is."""
    steps = make_steps(240, step_time=0.0002)
    for step in steps:
        step["detailed"] = step["step"] % 12 == 0
        if step["detailed"]:
            step.update(step_time_s=0.0049, optwatch_s=0.0003)
    window = summarise(steps, make_systems(4), "cpu")
    assert window.between_share is None and window.few_long is None, window
    steps[100]["step_time_s"] = 0.2  # a save of 0.2 s, on a light step
    window = summarise(steps, make_systems(4), "cpu")
    assert window.few_long is not None and window.few_long[0] == 1, window
