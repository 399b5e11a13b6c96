"""The System tab, driven by Textual's pilot over records of a (described) GPU run and of a bare store."""

from __future__ import annotations

import pytest

from optwatch.app.app import OptwatchApp
from optwatch.app.widgets.allocator_panel import AllocatorPanel
from optwatch.app.widgets.gpu_panel import GpuPanel
from optwatch.app.widgets.host_panel import HostPanel
from optwatch.app.widgets.phase_chart import PhaseChart
from optwatch.app.widgets.verdict_panel import VerdictPanel
from optwatch.app.widgets.workers_panel import WorkersPanel
from optwatch.store import Store


def step(i: int, seq: int, **fields) -> dict:
    """Step ``i``'s record, 0.1 s a step, with ``fields``."""
    return {"v": 1, "kind": "step", "rank": 0, "seq": seq, "time": i * 0.1, "step": i, "step_time_s": 0.1, **fields}


def gpu_run_records() -> list[dict]:
    """What a CUDA rank sends: steps with device-timeline phases, system samples with two GPUs, a verdict."""
    records: list[dict] = [
        {"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "run_id": "r", "script": "t.py", "device": "cuda:0"}
    ]
    for i in range(50):
        phases = {"forward_s": 0.03, "backward_s": 0.055, "optimizer_s": 0.008, "other_s": 0.002}
        records.append(step(i, len(records), data_wait_s=0.005, **phases, host_phases_s=0.01))
        if i % 5 == 0:
            records.append(
                {
                    "v": 1,
                    "kind": "system",
                    "rank": 0,
                    "seq": len(records),
                    "time": i * 0.1,
                    "cpu_percent": 110.0,
                    "rss_bytes": 5 * 2**30,
                    "threads": 30,
                    "cpu_count": 16,
                    "load_avg": [3.2, 3.0, 2.5],
                    "host_mem_used_bytes": 40 * 2**30,
                    "host_mem_total_bytes": 128 * 2**30,
                    "torch_threads": 8,
                    "workers": [{"pid": 100 + k, "cpu_percent": 60.0, "rss_bytes": 2**30} for k in range(4)],
                    "gpu_status": "ok",
                    "gpus": [
                        {
                            "index": 0,
                            "name": "NVIDIA H200",
                            "current": True,
                            "util_percent": 97,
                            "mem_used_bytes": 40 * 2**30,
                            "mem_total_bytes": 140 * 2**30,
                            "process_mem_bytes": 38 * 2**30,
                            "temperature_c": 61,
                            "power_w": 520.0,
                            "power_limit_w": 700.0,
                            "sm_clock_mhz": 1980,
                            "throttle": ["power_cap"],
                        },
                        {"index": 1, "name": "NVIDIA H200", "current": False, "util_percent": 0, "throttle": ["idle"]},
                    ],
                    "mem_device": 0,
                    "mem_allocated_bytes": 36 * 2**30,
                    "mem_reserved_bytes": 39 * 2**30,
                    "mem_peak_bytes": 37 * 2**30,
                    "mem_fragmentation_bytes": 3 * 2**30,
                    "mem_total_bytes": 140 * 2**30,
                    "mem_headroom_bytes": 101 * 2**30,
                    "mem_alloc_retries": 2,
                    "mem_ooms": 0,
                }
            )
    records.append(
        {
            "v": 1,
            "kind": "verdict",
            "rank": 0,
            "seq": len(records),
            "time": 5.0,
            "step": 49,
            "window": [2, 49],
            "final": False,
            "bottleneck": "compute",
            "message": "GPU 97% busy; data wait 5%",
            "evidence": {"step_time_s": 0.1, "data_wait_share": 0.05, "gpu_util_percent": 97.0, "num_workers": 4},
            "suggestions": ["Mixed precision (control: amp=on)", "cudnn.benchmark (control: cudnn_benchmark=on)"],
        }
    )
    return records


async def test_system_tab_shows_verdict_phases_gpus_allocator_host_and_workers():
    store = Store()
    store.ingest(gpu_run_records())
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        await pilot.pause(0.3)
        verdict = app.query_one(VerdictPanel).lines
        chart = app.query_one(PhaseChart)
        gpu = app.query_one(GpuPanel).lines
        allocator = app.query_one(AllocatorPanel)
        host = app.query_one(HostPanel).lines
        workers = app.query_one(WorkersPanel).lines
    assert verdict[0] == " COMPUTE-BOUND  GPU 97% busy; data wait 5%"
    assert verdict[1] == "  step 100 ms · data 5% · GPU busy 97%  (steps 2–49)"
    assert verdict[2:] == ["  → Mixed precision (control: amp=on)", "  → cudnn.benchmark (control: cudnn_benchmark=on)"]
    assert len(chart.columns) == 50 and chart.columns[-1] == [0.005, 0.03, 0.055, 0.008, 0.002]
    assert round(chart.shares["bwd"], 2) == 0.55
    assert gpu[0] == "GPU0 NVIDIA H200 ◀ this run"
    assert gpu[1].startswith(" util  97% ") and gpu[2].startswith(" mem  40.0 GiB/140.0 GiB ")
    assert gpu[3] == " 61°C  520/700 W  1980 MHz  run 38.0 GiB"
    assert gpu[4] == " throttled: power_cap"
    assert gpu[5] == "GPU1 NVIDIA H200" and "idle" not in " ".join(gpu)  # an idle GPU is not throttled
    assert allocator.border_title == "Allocator cuda:0"
    assert allocator.lines[2] == "frag     3.0 GiB  free 101.0 GiB" and allocator.lines[3] == "retries 2  OOMs 0"
    assert host[0].startswith("CPU   110% ") and host[3] == "load 3.2 on 16 cores"
    assert workers[0] == "num_workers=4" and len(workers) == 5 and workers[1].startswith("    100   60% ")


async def test_system_tab_before_any_data_and_without_a_gpu_at_80x24():
    store = Store()
    store.ingest(
        [
            {"v": 1, "kind": "step", "rank": 0, "seq": 0, "time": 0.0, "step": 0, "step_time_s": 0.1},
            {
                "v": 1,
                "kind": "system",
                "rank": 0,
                "seq": 1,
                "time": 0.0,
                "cpu_percent": 50.0,
                "rss_bytes": 2**30,
                "workers": [],
                "gpu_status": "no NVIDIA GPU (NVML Shared Library Not Found)",
                "gpus": [],
            },
        ]
    )
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await pilot.pause(0.3)
        verdict = app.query_one(VerdictPanel).lines
        chart = app.query_one(PhaseChart)
        gpu = app.query_one(GpuPanel).lines
        allocator = app.query_one(AllocatorPanel).lines
        workers = app.query_one(WorkersPanel).lines
        await pilot.press("o")
        assert app.query_one("TabbedContent").active == "overview"
    assert verdict[0].startswith("Verdict: waiting for a few steps")
    assert chart.columns == []  # steps without phase times draw nothing
    assert gpu[:2] == ["no NVIDIA GPU", "(NVML Shared Library Not Found)"]
    assert allocator[0] == "no CUDA allocator"
    assert workers == ["none: batches load on the training thread"]


async def test_with_the_checks_spaced_out_the_phases_are_those_of_the_last_timed_steps():
    """Past step 100 optwatch may time only every 128th step (``--budget``): the chart reaches back to the
    last timed steps, names them, and says how sparse they are, rather than show the one or two timed
    steps among the last 120."""
    store = Store()
    records: list[dict] = [{"v": 1, "kind": "hello", "rank": 0, "seq": 0, "time": 0.0, "run_id": "r", "device": "cpu"}]
    for i in range(1000):
        timed = i % 128 == 0
        phases = {"forward_s": 0.03, "backward_s": 0.05, "optimizer_s": 0.01, "other_s": 0.01} if timed else {}
        unknown = dict.fromkeys(("forward_s", "backward_s", "optimizer_s", "other_s"))
        fields = {"data_wait_s": 0.0, "detailed": timed, "detail_every": 128, **unknown, **phases}
        records.append(step(i, len(records), **fields))
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("s")
        await pilot.pause(0.3)
        chart = app.query_one(PhaseChart)
        assert chart.labels == list(range(0, 1000, 128))
        assert chart.border_title.startswith("Phases, 8 steps (timed 1 in 128)")
        assert chart.shares["bwd"] == pytest.approx(0.5)


async def test_a_run_that_ended_shows_its_host_as_it_trained_not_its_idle_last_seconds():
    """A replay's Host panel read "CPU 2%" (a sample taken during the script's final save, after its last
    step) beside the verdict's 172%: the samples after the last step are left out, as the verdict leaves them."""
    store = Store()
    records: list[dict] = [step(i, i, forward_s=0.05, backward_s=0.04) for i in range(30)]
    for n, (at, cpu) in enumerate([(1.0, 170.0), (2.0, 174.0), (2.9, 172.0), (4.0, 2.0), (5.0, 1.0)]):
        records.append({"v": 1, "kind": "system", "rank": 0, "seq": 100 + n, "time": at, "cpu_percent": cpu})
    records.append({"v": 1, "kind": "end", "rank": 0, "seq": 200, "time": 5.5, "steps": 30, "exit_code": 0})
    store.ingest(records)
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("s")
        await pilot.pause(0.3)
        host = app.query_one(HostPanel).lines
    assert host[0].startswith("CPU   172% "), host  # (the last step at 2.9 s)
