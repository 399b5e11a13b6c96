"""A run resumed from a checkpoint goes on from the framework's global step, and so do optwatch's steps: its
step records are numbered as the framework logs them, with the framework's loss and learning rate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPTS, new_probe, optwatch, read_jsonl, records_of, steps_of, train


def framework_steps(output: str) -> dict[int, dict]:
    lines = [json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("FRAMEWORK_STEP ")]
    return {line["step"]: line for line in lines}


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["hf", "lightning", "plain"])
def test_a_resumed_run_is_numbered_from_the_frameworks_global_step(tmp_path, framework):
    script = [str(SCRIPTS / "resumed.py"), "--framework", framework, "--dir", str(tmp_path / "checkpoints")]
    first = subprocess.run(
        [sys.executable, *script, "--phase", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert sorted(framework_steps(first.stdout)) == list(range(10))

    record = tmp_path / "r.jsonl"
    # A command meant for global step 15 lands there (the plain loop's schedule, moved by it, shows it too).
    control = ["--control", "lr=0.02@15"] if framework == "plain" else []
    resumed = optwatch(
        "run", "--headless", "--record", str(record), *control, *script, "--phase", "2", "--callback", timeout=300
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    truth = framework_steps(resumed.stdout)
    assert sorted(truth) == list(range(10, 20))
    records = read_jsonl(record)
    steps = {s["step"]: s for s in steps_of(records)}
    assert sorted(steps) == list(range(10, 20))
    for step, said in truth.items():
        assert steps[step]["loss"] == pytest.approx(said["loss"], rel=1e-5), step
        assert steps[step]["lr"] == pytest.approx(said["lr"], rel=1e-6), step
    assert [h["first_step"] for h in records if h["kind"] == "hello"][-1] == 10
    assert "optwatch: final step 19 (10 steps) " in resumed.stderr  # the ten this process trained
    compared = optwatch("compare", "--headless", str(record), str(record))
    assert compared.returncode == 0 and compared.stdout.splitlines()[1].split() == ["steps", "10", "10"]
    if framework == "plain":
        assert truth[15]["lr"] == 0.02 and truth[14]["lr"] != 0.02
        [event] = [e for e in records if e["kind"] == "event"]
        assert event["status"] == "accepted" and event["effective_step"] == 15


def test_a_resumed_process_checks_every_step_for_its_own_first_steps_then_spaces_them():
    """Numbered from 5000, the process still checks every step for its first 100 (the alert rules' baselines
    start again with it), and from there spaces its checks by the budget as a run from step 0 does; a
    start_step given after the first step leaves the numbers alone."""
    import torch

    probe = new_probe("resumed", grad_full_cadence_steps=20).start()
    probe.start_at(5000)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    train(model, optimizer, x, y, steps=3)
    probe.start_at(7)  # too late: said in the log, nothing changes
    train(model, optimizer, x, y, steps=117)
    spaced = probe.detail_every
    records = records_of(probe)
    steps = {s["step"]: s for s in steps_of(records)}
    assert sorted(steps) == list(range(5000, 5120))
    assert all(steps[n]["detailed"] and steps[n]["detail_every"] == 1 for n in range(5000, 5020))
    assert spaced > 1 and not all(steps[n]["detailed"] for n in range(5020, 5120))
    [hello] = [h for h in records if h["kind"] == "hello" and h.get("first_step") == 5000][-1:]
    assert hello["diagnosis"]["settled_from"] == 5020
