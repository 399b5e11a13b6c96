"""The Hot spots tab: `p` on a live run, and a recorded window read back."""

from __future__ import annotations

import os

import pytest

from conftest import SCRIPTS, start_training, wait_for_ui
from optwatch.app.app import OptwatchApp
from optwatch.app.widgets.hotspots_view import HotspotsView
from optwatch.session import ViewerSession
from optwatch.store import Store


@pytest.fixture
def training(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTWATCH_TRACE_DIR", str(tmp_path / "traces"))
    process = start_training(str(SCRIPTS / "plain_train.py"), "--steps", "100000", "--sleep", "0.05")
    yield process
    process.stop(grace_s=2)
    process.cleanup()


async def test_p_profiles_the_live_run_and_the_table_shows_it(training, tmp_path):
    app = OptwatchApp(ViewerSession.for_process(training))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_ui(
            pilot, lambda: app.store.primary is not None and len(app.store.primary.steps) >= 3, timeout_s=60
        )
        view = app.query_one(HotspotsView)
        await pilot.press("p")
        assert app.query_one("TabbedContent").active == "hotspots"
        await wait_for_ui(pilot, lambda: view.rows, timeout_s=60)
        done = app.store.latest["hotspots"]
        assert done["status"] == "done" and done["steps"][1] - done["steps"][0] == 4
        names = [row[0] for row in view.rows]
        assert "aten::addmm" in names
        modules = {row[0]: row[4] for row in view.rows}  # Op, Self CPU, %, Flags, Module... (no GPU column on CPU)
        # The other linear layer ran it too; a Sequential's layers are named with their class.
        assert modules["aten::addmm"] in ("0 (Linear) +1", "2 (Linear) +1")
        assert view.digest_text == done["digest"] and view.digest_text
        # The script sleeps 50 ms a step, in no op: the digest says so first.
        assert view.digest_text.startswith(f"{done['outside_ops_pct']:.0f}% of the window is in no torch op")
        assert view.modules_text.startswith("by module: ") and "(Linear) " in view.modules_text
        assert view.trace_text == f"trace: {done['trace']}" and os.path.exists(done["trace"])
        assert done["trace"].startswith(str(tmp_path / "traces"))
        assert view.state_text.startswith(f"steps {done['steps'][0]}-{done['steps'][1]}")
        # Sorted by self CPU time, most expensive first; `t` sorts by calls instead.
        first_cpu = next(op for op in done["ops"] if op["name"] == names[0])
        assert first_cpu["self_cpu_s"] == max(op["self_cpu_s"] for op in done["ops"])
        await pilot.press("t")
        calls = [int(row[5]) for row in view.rows]
        assert calls == sorted(calls, reverse=True) and "sorted by calls" in view.state_text
        await pilot.press("q", "y")
        await wait_for_ui(pilot, lambda: training.poll() is not None, timeout_s=20)


def recorded_window() -> dict:
    ops = [
        {
            "name": name,
            "self_cpu_s": cpu,
            "self_device_s": device,
            "calls": calls,
            "pct": pct,
            "shapes": [[[128, 3, 32, 32], [32, 3, 3, 3], []]] if "conv" in name else [],
            "module": module,
            "flags": flags,
        }
        for name, cpu, device, calls, pct, module, flags in [
            ("aten::convolution_backward", 0.010, 0.410, 50, 41.0, "layer1.conv1", []),
            ("aten::cudnn_convolution", 0.008, 0.200, 50, 20.0, "layer1.conv1", []),
            ("cudaStreamSynchronize", 0.300, 0.0, 5, 0.0, None, ["sync"]),
            ("aten::copy_", 0.020, 0.120, 300, 12.0, "DataLoader", ["dataloader", "pageable-h2d"]),
        ]
    ]
    return {
        "v": 1,
        "kind": "hotspots",
        "rank": 0,
        "seq": 40,
        "time": 1.0,
        "status": "done",
        "steps": [10, 14],
        "reason": "cli",
        "wall_s": 1.0,
        "partial": False,
        "sort_by": "self_device_s",
        "ops": ops,
        "modules": [
            {"name": "layer1.conv1", "pct": 61.0, "self_s": 0.61},
            {"name": "DataLoader", "pct": 12.0, "self_s": 0.12},
        ],
        "culprits": [{"flag": "sync", "s": 0.3, "calls": 5, "pct_of_wall": 30.0}],
        "digest": "convolution backward 41%, convolution 20%, data copy 12%",
        "self_cpu_total_s": 0.4,
        "device_total_s": 1.0,
        "trace": "/home/me/optwatch-traces/run/rank0-steps10-14.pt.trace.json.gz",
    }


async def test_a_recorded_window_reads_at_80x24_and_sorts_by_self_time():
    store = Store()
    store.ingest([{"v": 1, "kind": "step", "rank": 0, "seq": 0, "time": 0.0, "step": 20, "loss": 1.0}])
    store.ingest([recorded_window()])
    app = OptwatchApp.for_store(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("h")
        await pilot.pause(0.2)
        view = app.query_one(HotspotsView)
        assert [row[0] for row in view.rows][:3] == [
            "aten::convolution_backward",
            "aten::cudnn_convolution",
            "aten::copy_",
        ]
        assert view.rows[0][1:4] == ["10.0 ms", "410.0 ms", "41.0"]  # Self CPU, Self GPU, %
        assert view.state_text.startswith("steps 10-14 · 200.0 ms/step · sorted by self GPU time")
        assert view.culprits_text == "sync 30% of the step (5 calls)"
        assert view.modules_text == "by module: layer1.conv1 61% · DataLoader 12%"  # (the record computes them)
        assert view.trace_text == "trace: /home/me/optwatch-traces/run/rank0-steps10-14.pt.trace.json.gz"
        await pilot.press("t")  # self GPU -> calls
        await pilot.press("t")  # calls -> self CPU
        assert view.rows[0][0] == "cudaStreamSynchronize" and view.rows[0][4] == "sync"
        await pilot.press("p")  # a replay cannot be profiled: a notice, nothing else
        await pilot.pause(0.1)
        assert view.rows[0][0] == "cudaStreamSynchronize"
        assert app.screen.query_one("#hotspots-table").size.width <= 80
