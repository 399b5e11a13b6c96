"""The system collectors: NVML (real library; the missing driver mocked only where NVML loads it), host, allocator."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import psutil
import pynvml
import pytest
import torch

from optwatch.collectors import allocator
from optwatch.collectors.host import HostCollector
from optwatch.collectors.nvml import NO_GPU, GpuCollector


@pytest.mark.parametrize("error", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED])
def test_without_a_driver_there_is_a_clear_no_gpu_state_and_no_noise(monkeypatch, caplog, error):
    calls = []

    def no_driver():
        calls.append(1)
        raise pynvml.NVMLError(error)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    collector = GpuCollector()
    with caplog.at_level(logging.DEBUG, logger="optwatch"):
        samples = [collector.sample() for _ in range(3)]
    assert samples[0] == samples[-1]
    assert samples[0]["gpus"] == []
    assert samples[0]["gpu_status"] == f"{NO_GPU} ({pynvml.NVMLError(error)})"
    assert len(calls) == 1  # tried once, not at every sample
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]  # one quiet line, never a warning


def test_the_real_library_never_raises_here():
    sample = GpuCollector().sample()
    assert sample["gpu_status"] == "ok" or sample["gpu_status"].startswith(NO_GPU)
    assert isinstance(sample["gpus"], list)


def test_cuda_visible_devices_limits_the_devices(monkeypatch):
    from optwatch.collectors.nvml import _visible_indices

    uuids = {0: "GPU-aaaa-1", 1: "GPU-bbbb-2", 2: "GPU-cccc-3"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _visible_indices(3, uuids.get) == [0, 1, 2]
    cases = [("2,0", [2, 0]), ("", []), ("-1", []), ("1,7,2", [1]), ("GPU-bbbb", [1]), ("MIG-x", [0, 1, 2])]
    for visible, expected in cases:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert _visible_indices(3, uuids.get) == expected, visible


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_nvml_reports_the_gpu_this_process_trains_on():
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    properties = torch.cuda.get_device_properties(0)
    sample = GpuCollector().sample(current_uuid=str(properties.uuid))
    assert sample["gpu_status"] == "ok"
    [gpu] = [g for g in sample["gpus"] if g["current"]]
    assert properties.name in gpu["name"] or gpu["name"] in properties.name
    assert abs(gpu["mem_total_bytes"] - properties.total_memory) < 0.05 * properties.total_memory
    assert 0 < gpu["mem_used_bytes"] <= gpu["mem_total_bytes"]
    assert 0 <= gpu["util_percent"] <= 100 and 0 < gpu["temperature_c"] < 120
    assert gpu["sm_clock_mhz"] > 0 and isinstance(gpu["throttle"], list)
    assert gpu["power_w"] is None or gpu["power_w"] > 0
    # Hidden when the container has its own PID namespace; when shown, it holds our block.
    assert gpu["process_mem_bytes"] is None or gpu["process_mem_bytes"] >= block.numel()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_system_sample_reads_the_allocator_of_the_training_device():
    from optwatch.probe.sampler import sample_system

    index = torch.cuda.device_count() - 1  # not the sampler thread's current device when there are several
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=f"cuda:{index}")
    sample = sample_system(block.device)
    assert sample["mem_device"] == index and sample["mem_allocated_bytes"] >= block.numel()
    assert sample["mem_headroom_bytes"] == sample["mem_total_bytes"] - sample["mem_reserved_bytes"]
    assert sample["mem_alloc_retries"] == 0 and sample["mem_ooms"] == 0
    assert sum(gpu["current"] for gpu in sample["gpus"]) == 1


def test_before_the_first_step_or_on_the_cpu_there_are_no_allocator_fields():
    from optwatch.probe.sampler import sample_system

    for device in (None, torch.device("cpu")):
        sample = sample_system(device)
        assert "mem_allocated_bytes" not in sample and sample["torch_threads"] is None  # (the training's: unknown)


def test_host_sees_the_process_and_each_dataloader_worker():
    class Busy(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, index):
            deadline = time.perf_counter() + 0.05
            while time.perf_counter() < deadline:
                pass
            return torch.zeros(1)

    collector = HostCollector()
    iterator = iter(torch.utils.data.DataLoader(Busy(), batch_size=2, num_workers=2))
    next(iterator)
    collector.sample()  # starts each worker's CPU measurement
    next(iterator)
    time.sleep(0.2)
    sample = collector.sample()
    pids = sorted(w.pid for w in iterator._workers)
    del iterator
    assert sorted(w["pid"] for w in sample["workers"]) == pids
    assert all(w["cpu_percent"] is not None and w["cpu_percent"] >= 0 for w in sample["workers"])
    assert all(w["rss_bytes"] > 0 for w in sample["workers"])
    assert sample["rss_bytes"] > 0 and sample["cpu_count"] >= 1 and len(sample["load_avg"]) == 3
    assert 0 < sample["host_mem_used_bytes"] < sample["host_mem_total_bytes"]


@pytest.mark.parametrize("marker", ["compile_worker", "optwatch.probe.traces"])
def test_host_leaves_out_children_that_are_not_workers(marker):
    """torch.compile's pool, and optwatch's own profiler-trace summary (busy at 98% of a core, it read as the
    one DataLoader worker of a loop that has none)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:
        time.sleep(0.2)
        assert HostCollector().sample()["workers"] == []
    finally:
        child.kill()
        child.wait()


def test_a_helper_caught_between_its_fork_and_its_exec_is_no_worker():
    """A fork reads as its parent until it runs its ``exec``: multiprocessing starting its forkserver, caught in
    that moment, was "1 worker" for the rest of the run (the project's CI, one sample in a few hundred)."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "if os.fork() == 0:\n"
            "    time.sleep(0.6)\n"
            "    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30)', "
            "'multiprocessing.' + 'forkserver'])\n"  # (not in the parent's own command line)
            "time.sleep(30)\n",
        ]
    )
    try:
        collector = HostCollector(parent.pid)
        deadline = time.monotonic() + 5
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.01)
        [child] = psutil.Process(parent.pid).children()
        assert child.cmdline() == psutil.Process(parent.pid).cmdline()  # not yet exec'd
        assert collector.sample()["workers"] == []
        time.sleep(1.0)
        assert "multiprocessing.forkserver" in child.cmdline()
        assert collector.sample()["workers"] == []
        assert collector.sample()["workers"] == []
    finally:
        for process in psutil.Process(parent.pid).children() + [psutil.Process(parent.pid)]:
            process.kill()
        parent.wait()


def test_the_workers_are_the_dataloaders_own_with_a_forkserver_and_a_pool_beside_it(tmp_path):
    """A forkserver's workers are not the training process's children, and the children it has (the
    forkserver, multiprocessing's resource tracker, a Pool's processes) are no DataLoader workers: the
    verdict read "2 workers at 0% CPU each" for workers it never sampled, and "5 workers" under spawn."""
    import json

    from conftest import SCRIPTS, optwatch, read_jsonl

    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "forkserver_workers.py"))
    assert result.returncode == 0, result.stderr[-3000:]
    [workers] = [json.loads(line[8:]) for line in result.stdout.splitlines() if line.startswith("WORKERS ")]
    sampled = [r["workers"] for r in read_jsonl(record) if r["kind"] == "system" and r.get("workers")]
    assert sampled and all(sorted(w["pid"] for w in each) == workers for each in sampled)
    assert any(w["cpu_percent"] for each in sampled for w in each)  # busy in __getitem__: their CPU is seen


def test_allocator_summary_derives_fragmentation_and_headroom():
    stats = {
        "allocated_bytes.all.current": 6 * 2**30,
        "reserved_bytes.all.current": 8 * 2**30,
        "allocated_bytes.all.peak": 7 * 2**30,
        "num_alloc_retries": 2,
        "num_ooms": 0,
    }
    summary = allocator.summarise(stats, 80 * 2**30, device=0)
    assert summary["mem_fragmentation_bytes"] == 2 * 2**30
    assert summary["mem_headroom_bytes"] == 72 * 2**30
    assert (summary["mem_alloc_retries"], summary["mem_ooms"], summary["mem_peak_bytes"]) == (2, 0, 7 * 2**30)
    assert allocator.summarise({}, None)["mem_headroom_bytes"] is None


def test_collectors_and_rules_import_neither_torch_nor_textual():
    code = (
        "import sys, optwatch.collectors.nvml, optwatch.collectors.host, optwatch.collectors.allocator, "
        "optwatch.diagnose.bottleneck, optwatch.diagnose.tracker; "
        "print([m for m in ('torch', 'textual') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert result.stdout.strip() == "[]"


def test_torch_threads_are_the_training_threads_even_when_set_after_a_slow_start(tmp_path):
    """The HF Trainer's scripts set torch's threads after slow imports: the sampler thread, which had asked
    before, kept seeing the default (OpenMP fixes a count per thread), and the verdict said "2 threads"
    and gave the advice for that. The system records now say what the training thread uses."""
    from conftest import ROOT, read_jsonl

    script = tmp_path / "threads.py"
    script.write_text(
        "import time, torch\ntime.sleep(2)\ntorch.set_num_threads(1)\nprint('THREADS', torch.get_num_threads())\n"
        "model = torch.nn.Linear(256, 256)\nopt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "x = torch.randn(64, 256)\nstarted = time.time()\nwhile time.time() - started < 2:\n"
        "    opt.zero_grad(); model(x).pow(2).mean().backward(); opt.step()\n"
    )
    record = tmp_path / "r.jsonl"
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}  # (the suite's is 1)
    done = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--record", str(record), str(script)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "THREADS 1" in done.stdout and os.cpu_count() > 1
    told = [r["torch_threads"] for r in read_jsonl(record) if r["kind"] == "system" and r.get("step", 0) > 0]
    assert told and set(told) == {1}, told
    # Before the first step the training thread's count is not known: unknown, not the sampler's own 2.
    before = [r["torch_threads"] for r in read_jsonl(record) if r["kind"] == "system" and r.get("step", 0) == 0]
    assert before and set(before) <= {None, 1}, before


def test_the_machines_cpu_is_measured_on_the_thread_that_samples_not_read_as_idle():
    """The collector is made on the importing thread and sampled on the sampler's: psutil keeps its last
    reading per thread, so the first sample said 0% for a machine this test keeps busy, and a starved
    process on a busy machine read as a loop that waits. That first sample has no figure; the next is
    the busy machine's (a spinning thread: at least one core's share of the machine)."""
    collector = HostCollector()
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    samples: list[dict] = []

    def sample_twice() -> None:
        samples.append(collector.sample())
        time.sleep(0.5)
        samples.append(collector.sample())

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        sampler = threading.Thread(target=sample_twice)
        sampler.start()
        sampler.join()
    finally:
        stop.set()
        spinner.join()
    cores = psutil.cpu_count()
    assert samples[0]["host_cpu_percent"] is None
    assert samples[1]["host_cpu_percent"] >= 0.8 * 100 / cores


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="the kernel's schedstat is Linux's")
def test_the_wait_for_a_core_tells_a_starved_process_from_one_that_sleeps():
    """Both use little CPU on a busy machine: a rank asleep in the all-reduce was told to find what else runs.
    Two busy processes on one core: each waits for it about half the time; one that sleeps waits for none."""
    spin = "import os, time\nos.sched_setaffinity(0, {0})\nwhile True: pass\n"
    sleep = "import os, time\nos.sched_setaffinity(0, {0})\nwhile True: time.sleep(0.05)\n"
    processes = [subprocess.Popen([sys.executable, "-c", code]) for code in (spin, spin, sleep)]
    try:
        time.sleep(1.0)  # (started, and on their core)
        collectors = [HostCollector(process.pid) for process in processes]
        assert all(collector.sample()["run_wait_percent"] is None for collector in collectors)  # (a first sample)
        time.sleep(2.0)
        spinning, _, sleeping = (collector.sample()["run_wait_percent"] for collector in collectors)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert spinning is not None and 30.0 <= spinning <= 100.0, spinning  # (half the time, give or take the load)
    assert sleeping is not None and sleeping < 10.0, sleeping
