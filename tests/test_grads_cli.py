"""Gradient alerts end to end: `optwatch run --headless --record` on runs that go wrong in known ways."""

from __future__ import annotations

import math

import pytest

from conftest import EXAMPLES, SCRIPTS, optwatch, read_jsonl, steps_of
from optwatch.diagnose.gradients import LayerStats

SCENARIOS = str(SCRIPTS / "grad_scenarios.py")


def run_scenario(tmp_path, scenario: str, *args: str) -> tuple[list[dict], list[dict], str]:
    record = tmp_path / f"{scenario}.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), SCENARIOS, "--scenario", scenario, *args)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(record)
    return records, [r for r in records if r["kind"] == "alert"], result.stderr


def test_a_30_layer_sigmoid_mlp_vanishes_in_its_early_layers(tmp_path):
    records, alerts, stderr = run_scenario(tmp_path, "vanishing", "--steps", "100")
    [alert] = alerts
    assert alert["type"] == "vanishing" and alert["step"] < 100
    linears = [str(2 * i) for i in range(30)]  # nn.Sequential names: Linear, Sigmoid, Linear, ...
    named = alert["layers"]
    assert len(named) >= 3 and named == linears[: len(named)] and linears[-1] not in named
    assert f"ALERT vanishing @ step {alert['step']}: gradients vanish in" in stderr
    # The layer records carry the verdict, so the dashboard can highlight the same layers.
    layers = [r for r in records if r["kind"] == "layers"]
    assert len(layers) == 100 and set(layers[-1]["alerting"]) == set(named)


def test_a_learning_rate_raised_far_too_high_explodes_before_the_loss_breaks(tmp_path):
    records, alerts, stderr = run_scenario(tmp_path, "lr-jump", "--steps", "90", "--at", "60")
    first_nonfinite = min(s["step"] for s in steps_of(records) if not math.isfinite(s["loss"]))
    exploding = [a for a in alerts if a["type"] == "exploding"]
    assert all(a["step"] >= 60 for a in alerts), alerts  # nothing before the change
    assert len(exploding) == 1 and 60 <= exploding[0]["step"] <= first_nonfinite
    assert [a["step"] for a in alerts if a["type"] == "nonfinite"] == [first_nonfinite]
    assert f"ALERT exploding @ step {exploding[0]['step']}" in stderr


def test_a_module_that_emits_inf_is_named_at_that_very_step(tmp_path):
    """With the forward check on from the first step (by default it starts at the first non-finite value)."""
    record = tmp_path / "inf.jsonl"
    result = optwatch(
        "run", "--headless", "--forward-check", "always", "--record", str(record),
        SCENARIOS, "--scenario", "inf-module", "--steps", "70", "--at", "60",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    alerts, stderr = [r for r in read_jsonl(record) if r["kind"] == "alert"], result.stderr
    [alert] = alerts
    assert alert["type"] == "nonfinite" and alert["step"] == 60 and alert["module"] == "3"
    assert "ALERT nonfinite @ step 60: first non-finite output: module '3'" in stderr


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~30 s on an idle 2-core machine; much longer when the cores are shared
def test_the_cifar_example_raises_no_alert_in_150_steps(tmp_path):
    record = tmp_path / "cifar.jsonl"
    result = optwatch(
        "run",
        "--headless",
        "--record",
        str(record),
        str(EXAMPLES / "cifar.py"),
        "--steps",
        "150",
        "--batch-size",
        "16",  # a healthy run, at a third of the compute
        timeout=840,
    )
    assert result.returncode == 0, result.stderr
    records = read_jsonl(record)
    assert [r for r in records if r["kind"] == "alert"] == []
    layers = [r for r in records if r["kind"] == "layers"]
    steps = [r["step"] for r in layers]
    assert steps[:100] == list(range(100))  # the first 100 steps at the asked cadence
    # Then the budget may space out the detail steps (here up to every 128th: the steps between take most of
    # the 1% of this 11 ms step, and the evaluations at steps 50 and 100 buy no checks) and the statistics'
    # own governor thin them to every 2nd..4th of those; each record says its cadence, no gap is wider, and
    # the cadence is the spacing the probe planned at that step times that stride (not some multiple of two
    # step counts).
    spacing = {r["step"]: r["detail_every"] for r in records if r["kind"] == "step"}
    assert all(b["step"] - a["step"] <= max(a["every"], b["every"]) for a, b in zip(layers, layers[1:]))
    assert all(r["every"] in {k * spacing[r["step"] + 1] for k in (1, 2, 3, 4)} for r in layers if r["step"] < 149)
    # After the last, no step was a detail step at the spacing then (a spacing that grew near the end shows
    # in the step records alone: no detail step came at it).
    assert max(spacing) == 149
    assert all(step % spacing[step] for step in range(steps[-1] + 1, 150))
    # A healthy run, seen in the numbers too: every layer's update ratio within 1e-5..1e-1 (per tensor, a
    # bias that starts at zero can have larger ones; per layer, the weight dominates). The weights are
    # measured a chunk at a time: every layer has its ratio once the first chunks went round.
    ratios = [m.update_ratio for r in layers[16:] for m in LayerStats.from_record(r).modules()]
    assert len(ratios) == len(layers[16:]) * 21 and all(1e-5 < u < 0.1 for u in ratios), (min(ratios), max(ratios))
    assert "ALERT" not in result.stderr


def test_bad_gradient_flags_get_clear_messages():
    script = str(SCRIPTS / "plain_train.py")
    every = optwatch("run", "--grad-every", "-2", script)
    assert every.returncode == 2 and "--grad-every: expected 0 or more, got '-2'" in every.stderr
    check = optwatch("run", "--forward-check", "sometimes", script)
    assert check.returncode == 2 and "--forward-check: invalid choice: 'sometimes'" in check.stderr
    share = optwatch("run", "--budget", "101", script)
    assert share.returncode == 2 and "--budget: expected a percentage from 0 to 100, got '101'" in share.stderr
    unknown = optwatch("run", "--grad-threshold", "explode=3", script)
    assert unknown.returncode == 2 and "unknown gradient threshold 'explode' (known: window," in unknown.stderr
    clash = optwatch("run", "--headless", "--grad-threshold", "window=80", script)
    assert clash.returncode == 2 and "baseline_window (50) must be at least window (80)" in clash.stderr


def test_the_budget_spaces_out_the_checks_of_a_tiny_step_and_zero_keeps_every_step(tmp_path):
    """A sub-millisecond step: from step 100 optwatch's checks run on every Nth step only, and the summary
    says so; `--budget 0` keeps them on every step."""
    script = str(SCRIPTS / "plain_train.py")
    spaced, every = tmp_path / "spaced.jsonl", tmp_path / "every.jsonl"
    result = optwatch("run", "--headless", "--record", str(spaced), script, "--steps", "350")
    assert result.returncode == 0, result.stderr
    steps = steps_of(read_jsonl(spaced))
    assert len(steps) == 350 and all(s["detailed"] for s in steps[:100])
    late = steps[300:]
    assert late[-1]["detail_every"] > 1 and not all(s["detailed"] for s in late)
    assert all((s["grad_norm"] is not None) == s["detailed"] for s in late)
    final = [line for line in result.stderr.splitlines() if line.startswith("optwatch: final step")]
    assert final and f"checks 1/{late[-1]['detail_every']})" in final[0]
    last_measured = [s for s in steps if s["grad_norm"] is not None][-1]
    # The last norm measured, also when the final step had no check, then with its step (the spacing depends
    # on this machine's speed, so which step that is does too).
    when = f" at step {last_measured['step']}" if last_measured is not steps[-1] else ""
    assert f"| grad {last_measured['grad_norm']:.3g}{when} |" in final[0]
    result = optwatch("run", "--headless", "--budget", "0", "--record", str(every), script, "--steps", "400")
    assert result.returncode == 0, result.stderr
    steps = steps_of(read_jsonl(every))
    assert len(steps) == 400 and all(s["detailed"] and s["grad_norm"] is not None for s in steps)


TRUNK_AND_HEADS = """
import torch
from torch import nn
torch.manual_seed(0)
trunk = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
head_a, head_b = nn.Linear(16, 3), nn.Linear(16, 1)
optimizer = torch.optim.Adam([*trunk.parameters(), *head_a.parameters(), *head_b.parameters()], lr=1e-3)
for step in range(6):
    features = trunk(torch.randn(32, 8))
    loss = head_a(features).pow(2).mean() + head_b(features).pow(2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
"""


def test_heads_made_apart_from_their_trunk_are_named_after_the_scripts_own_names(tmp_path):
    """A multi-task model built as a trunk and two heads, one optimizer over them: the trunk (the largest part)
    named its parameters and the heads' were "(unnamed).4" to ".7", one "(unnamed)" row in the Gradients tab
    with both heads' gradients together, and alerts naming neither."""
    script = tmp_path / "heads.py"
    script.write_text(TRUNK_AND_HEADS)
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--no-record", "--record", str(record), str(script))
    assert result.returncode == 0, result.stderr[-2000:]
    [names] = {tuple(r["names"]) for r in read_jsonl(record) if r["kind"] == "layers"}
    assert names == ("trunk.0.weight", "trunk.0.bias", "head_a.weight", "head_a.bias", "head_b.weight", "head_b.bias")
