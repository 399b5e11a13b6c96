"""The gradient rules on their own: synthetic numbers in, alerts out (no torch, no process)."""

from __future__ import annotations

import math
import random
import re

import pytest

from conftest import ROOT
from optwatch.diagnose.gradients import (
    Episode,
    GradientDiagnosis,
    LayerStats,
    StepInput,
    Thresholds,
    module_of,
    parse_override,
)


def layers(rms: list[float], update_ratio: float | None = 1e-3, numel: int = 100) -> LayerStats:
    """One weight tensor per layer ``l0 .. lN`` with these RMS gradients and unit weight norms."""
    return LayerStats(
        names=[f"l{i}.weight" for i in range(len(rms))],
        numel=[numel] * len(rms),
        grad_norm=[r * math.sqrt(numel) for r in rms],
        weight_norm=[1.0] * len(rms),
        update_norm=[update_ratio] * len(rms),
        zero_frac=[0.0] * len(rms),
    )


def feed(diagnosis: GradientDiagnosis, steps: list[StepInput]) -> list[dict]:
    alerts = []
    for step in steps:
        alerts += diagnosis.observe(step)
    return alerts


def test_overrides_are_checked_with_one_line_reasons():
    t = Thresholds().with_overrides({"exploding_factor": 20, "window": 10})
    assert t.exploding_factor == 20.0 and t.window == 10 and isinstance(t.window, int)
    assert parse_override(" vanishing_ratio=1e-5") == ("vanishing_ratio", 1e-5)
    for overrides, reason in [
        ({"banana": 1}, "unknown gradient threshold 'banana'"),
        ({"window": 2.5}, "window must be a positive whole number"),
        ({"window": 80}, "baseline_window (50) must be at least window (80)"),
        ({"vanishing_ratio": 3}, "vanishing_ratio must be between 0 and 1"),
        ({"exploding_factor": 0.5}, "exploding_factor must be greater than 1"),
    ]:
        with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            Thresholds().with_overrides(overrides)
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_override("exploding_factor")
    with pytest.raises(ValueError, match="expected a number"):
        parse_override("window=lots")


def test_parameters_combine_into_modules():
    stats = LayerStats(
        names=["enc.weight", "enc.bias", "head.weight", "scale"],
        numel=[300, 100, 50, 1],
        grad_norm=[3.0, 4.0, 1.0, 2.0],
        weight_norm=[6.0, 8.0, 2.0, 1.0],
        update_norm=[0.06, 0.08, None, 0.5],
        zero_frac=[0.5, 0.0, 0.0, 0.0],
    )
    enc, head, root = stats.modules()
    assert (enc.name, head.name, root.name) == ("enc", "head", "(model)")
    assert enc.params == ("enc.weight", "enc.bias") and enc.numel == 400
    assert enc.grad_norm == pytest.approx(5.0) and enc.weight_norm == pytest.approx(10.0)
    assert enc.update_ratio == pytest.approx(0.01)
    assert enc.zero_frac == pytest.approx(150 / 400)
    assert enc.grad_rms == pytest.approx(5.0 / math.sqrt(250))  # over the non-zero entries only
    assert head.update_ratio is None  # not measured this step
    assert module_of("a.b.c.weight") == "a.b.c"


def test_an_episode_fires_once_and_ends_after_enough_healthy_observations():
    episode = Episode(recover=3)
    fired = [episode.update(bad) for bad in [False, True, True, False, True, False, False, False, True]]
    assert fired == [False, True, False, False, False, False, False, False, True]


def test_exploding_fires_once_on_a_spike_and_again_after_recovery():
    rng = random.Random(0)
    diagnosis = GradientDiagnosis()
    norms = [1.0 + 0.1 * rng.random() for _ in range(60)] + [80.0, 90.0, 85.0] + [1.0] * 25 + [70.0]
    alerts = feed(diagnosis, [StepInput(step=i, loss=1.0, grad_norm=g) for i, g in enumerate(norms)])
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 60), ("exploding", 88)]
    assert "global gradient norm 80 is" in alerts[0]["message"] and alerts[0]["baseline"] == pytest.approx(1.05, 0.1)


def test_slow_drift_and_noise_are_not_exploding():
    rng = random.Random(1)
    diagnosis = GradientDiagnosis()
    # Triples over 300 steps, with heavy-tailed noise: what healthy runs do.
    steps = [StepInput(step=i, loss=1.0, grad_norm=(1 + 2 * i / 300) * math.exp(rng.gauss(0, 0.4))) for i in range(300)]
    assert feed(diagnosis, steps) == []


def heavy_tailed(i: int, rng: random.Random) -> float:
    """A one-task meta-batch's loss or gradient norm: lone spikes 6x the rest every 13 steps, 12x every 97 (from
    step 50), and at step 400 one 60x."""
    if i == 400:
        return 60.0
    if i % 97 == 50:
        return 12.0
    return 6.0 if i % 13 == 0 else 1.0 + 0.2 * rng.random()


def test_a_heavy_tailed_signal_is_exploding_only_far_beyond_its_own_spikes():
    """Such a run is healthy (it converges), and an error at each 12x spike told its user otherwise (five in
    1,500 steps of a MAML run with one task a meta-batch). One that goes the root of the factor beyond the lone
    spikes its baseline holds still is exploding: the gradient norm's, and the loss's between detail steps."""
    rng = random.Random(6)
    norms = [StepInput(step=i, loss=1.0, grad_norm=heavy_tailed(i, rng)) for i in range(500)]
    assert [(a["type"], a["step"]) for a in feed(GradientDiagnosis(), norms)] == [("exploding", 400)]
    losses = [StepInput(step=i, loss=heavy_tailed(i, rng), grad_norm=1.0 if i % 16 == 1 else None) for i in range(500)]
    alerts = feed(GradientDiagnosis(), losses)
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 400)]
    assert alerts[0]["message"].startswith("loss 60 is ")


def test_steady_growth_by_orders_of_magnitude_is_exploding():
    diagnosis = GradientDiagnosis()
    # x1.06 per step: never 10x its recent median, but 1000x over 120 steps.
    alerts = feed(diagnosis, [StepInput(step=i, loss=1.0, grad_norm=1.06**i) for i in range(160)])
    assert [a["type"] for a in alerts] == ["exploding"]
    assert "grew" in alerts[0]["message"] and alerts[0]["step"] < 140


def sparse_after_settling(after: list[float]) -> list[StepInput]:
    """Every second step observed up to 144, a norm rising smoothly x1.04 per observation, then one observation
    every 112 steps (``--budget`` spacing the checks out once the first steps are over) with ``after``'s norms."""
    dense = [StepInput(step=i, loss=1.0, grad_norm=1.02**i) for i in range(0, 146, 2)]
    return dense + [StepInput(step=144 + 112 * (k + 1), loss=1.0, grad_norm=g) for k, g in enumerate(after)]


def test_a_smooth_rise_over_a_gap_in_the_observations_is_not_exploding():
    """Over the gap the norm grew x9 from the last observation, 24x its dense baseline's median, then stays
    there (LoRA's B growing from zero does this): no single observation jumped, so no alert."""
    level = 1.02**256
    assert feed(GradientDiagnosis(), sparse_after_settling([level, level * 1.1, level * 0.95, level])) == []


def test_an_explosion_within_a_gap_in_the_observations_is_exploding_when_seen():
    alerts = feed(GradientDiagnosis(), sparse_after_settling([300.0 * 1.02**144, 1e4, 1e5]))
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 256)]


def test_a_layer_growing_from_nothing_beside_the_rest_is_not_exploding_but_one_that_takes_over_is():
    """LoRA's A gets gradients only as its B grows from zero: its RMS gradient rose 10x its median within 26
    steps under SGD with momentum, a millionth of the rest's, and was an error alert. A rise counts when the
    layer weighs in the gradient (``exploding_layer_share``); a layer that jumps to dominate it still fires."""

    def run(tiny: list[float]) -> list[dict]:
        diagnosis = GradientDiagnosis()
        return feed(diagnosis, [StepInput(step=i, loss=1.0, grad_norm=0.1, layers=layers([1e-2, r]))
                                for i, r in enumerate(tiny)])  # fmt: skip

    ramp = [1e-12 * 1.3**i for i in range(40)]  # 1e-12 to 2.8e-8, smoothly: 10x in 9 steps
    assert run(ramp) == []
    jump = [1e-3 * (1 + 0.01 * (i % 3)) for i in range(60)] + [1.0]
    [alert] = run(jump)
    assert alert["type"] == "exploding" and alert["step"] == 60 and "'l1'" in alert["message"]


def test_a_layer_whose_gradient_grows_smoothly_is_not_exploding():
    """A first layer's RMS gradient, settled, then growing 10% a step (a healthy MLP's, while the loss fell):
    11x its median over 50 steps, an error alert. A layer's rise must be a jump over its
    last few values too; the same layer jumping still fires at that step."""

    def run(first: list[float]) -> list[dict]:
        return feed(GradientDiagnosis(), [StepInput(step=i, loss=1.0, grad_norm=0.1, layers=layers([r, 1e-2]))
                                          for i, r in enumerate(first)])  # fmt: skip

    settled_then_rising = [6e-4] * 40 + [6e-4 * 1.1**i for i in range(1, 41)]  # 45x over 40 steps
    assert run(settled_then_rising) == []
    [alert] = run([6e-4] * 40 + [6e-4 * 1.1**i for i in range(1, 11)] + [6e-4 * 1.1**10 * 12])
    assert alert["type"] == "exploding" and alert["step"] == 50 and "'l0'" in alert["message"]


def test_an_update_ratio_that_jumps_is_exploding_at_that_step():
    diagnosis = GradientDiagnosis()
    steps = [StepInput(step=i, loss=1.0, grad_norm=1.0, layers=layers([1e-2] * 4)) for i in range(40)]
    jumped = layers([1e-2] * 4, update_ratio=0.5)
    steps.append(StepInput(step=40, loss=1.0, grad_norm=1.0, layers=jumped))
    [alert] = feed(diagnosis, steps)
    assert alert["type"] == "exploding" and alert["step"] == 40
    assert alert["message"].startswith("updates jumped: update ratio 0.5 in 'l0', 500× its median 0.001")
    assert alert["layers"] == ["l0", "l1", "l2", "l3"]
    assert diagnosis.alerting() == {f"l{i}": "exploding" for i in range(4)}


def test_vanishing_names_the_early_layers_after_a_warm_up():
    diagnosis = GradientDiagnosis()
    profile = [1e-12, 1e-10, 1e-8, 1e-3, 1e-2, 3e-2]
    alerts = feed(diagnosis, [StepInput(step=i, loss=1.0, layers=layers(profile)) for i in range(60)])
    [alert] = alerts
    assert alert["type"] == "vanishing" and alert["step"] == 39  # 2 windows of 20
    assert alert["layers"] == ["l0", "l1", "l2"]
    assert "3 of 6 layers ('l0', 'l1', 'l2')" in alert["message"]


def test_layers_a_few_orders_apart_are_healthy_and_all_zero_layers_count_as_vanished():
    diagnosis = GradientDiagnosis()
    healthy = [1e-4, 1e-3, 3e-3, 1e-2, 5e-2]  # a CNN: early convs ~100x below the head
    assert feed(diagnosis, [StepInput(step=i, loss=1.0, layers=layers(healthy)) for i in range(100)]) == []
    diagnosis = GradientDiagnosis()
    underflowed = [0.0, 0.0, 1e-3, 1e-2]
    [alert] = feed(diagnosis, [StepInput(step=i, loss=1.0, layers=layers(underflowed)) for i in range(60)])
    assert alert["layers"] == ["l0", "l1"] and alert["step"] == 39
    assert "'l0', 'l1': every gradient entry exactly 0 for 20 measured steps in a row" in alert["message"]
    # A layer going between 1e-23 and exactly 0 (a deep sigmoid stack's, underflowing at some steps) vanishes
    # with the others: its all-zero steps are no steps it sat out.
    diagnosis = GradientDiagnosis()
    flickering = [[0.0, 0.0 if i % 3 else 1e-23, 1e-3, 1e-2] for i in range(60)]
    [alert] = feed(diagnosis, [StepInput(step=i, loss=1.0, layers=layers(g)) for i, g in enumerate(flickering)])
    assert alert["layers"] == ["l0", "l1"] and alert["step"] == 39
    assert "'l0': every gradient entry exactly 0" in alert["message"]


def test_nonfinite_names_the_module_that_turned_and_the_parameters():
    diagnosis = GradientDiagnosis()
    ok = [("mask", -math.inf), ("enc", 3.0), ("spike", 2.0), ("head", 1.0)]
    broken = [("mask", -math.inf), ("enc", 3.0), ("spike", math.inf), ("head", math.nan)]
    steps = [StepInput(step=i, loss=1.0, grad_norm=1.0, forward=ok) for i in range(5)]
    bad_grads = LayerStats(["enc.weight", "head.weight"], [4, 4], [1.0, math.nan], [1.0, 1.0], [None, None], [0, 0])
    steps.append(StepInput(step=5, loss=math.inf, grad_norm=math.nan, forward=broken, layers=bad_grads))
    steps += [StepInput(step=i, loss=math.nan, grad_norm=math.nan, forward=broken) for i in range(6, 9)]
    [alert] = feed(diagnosis, steps)
    assert alert["type"] == "nonfinite" and alert["step"] == 5
    assert alert["module"] == "spike" and alert["params"] == ["head.weight"]
    assert alert["layers"] == ["spike", "head"]
    assert alert["message"] == (
        "loss is inf; first non-finite output: module 'spike'; non-finite gradients in 1 parameter: 'head.weight'"
    )


def test_a_loss_that_jumps_at_a_step_whose_gradients_were_not_measured_is_exploding():
    """Steps between detail steps carry the loss only; a 15x jump there is named at its step. At a measured
    step the gradients decide: a loss jump with healthy gradients (an odd batch) is no explosion."""
    rng = random.Random(2)
    losses = [1.0 * math.exp(rng.gauss(0, 0.3)) for _ in range(120)]  # heavy-tailed, as real losses are
    steps = [StepInput(step=i, loss=loss, grad_norm=1.0 if i % 16 == 0 else None) for i, loss in enumerate(losses)]
    assert feed(GradientDiagnosis(), steps) == []
    jumped = [*steps, StepInput(step=120, loss=15.0)]
    alerts = feed(GradientDiagnosis(), jumped)
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 120)]
    assert alerts[0]["message"].startswith("loss 15 is ") and "gradients were not measured" in alerts[0]["message"]
    measured = [*steps, StepInput(step=120, loss=15.0, grad_norm=1.1)]
    assert feed(GradientDiagnosis(), measured) == []


def test_a_negative_loss_that_dives_is_exploding_once_for_the_whole_dive():
    """A WGAN critic's loss lives below 0: it never entered the baseline (positive values only), so its dive
    from -9.5 to -1e4 between detail steps raised nothing until a detail step, and then again at each
    later one (the loss-only steps between them read as healthy, ending the episode each time)."""
    rng = random.Random(3)
    calm = [
        StepInput(step=i, loss=-9.5 + rng.gauss(0, 1.0), grad_norm=10.0 if i % 128 == 0 else None) for i in range(300)
    ]
    assert feed(GradientDiagnosis(), calm) == []
    # Down by 1.2x a step to -12,000 (steps 300-339), then there with the gradients 50x what they were.
    dive = [StepInput(step=i, loss=-9.5 * 1.2 ** (i - 299)) for i in range(300, 340)]
    after = [
        StepInput(step=i, loss=-12000 + rng.gauss(0, 1000), grad_norm=500.0 if i % 128 == 0 else None)
        for i in range(340, 1100)
    ]
    alerts = feed(GradientDiagnosis(), [*calm, *dive, *after])
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 312)], alerts
    assert alerts[0]["message"].startswith("loss -102 is 10× its median -10.1 (last 50 steps)")


def test_a_loss_that_lives_about_zero_is_weighed_on_its_usual_size_not_its_median():
    """A policy-gradient loss swings about 0: against a median of nearly 0 any ordinary value is "many times"
    it. Its spikes of a few times its usual size are no alert; one of 30x is, said against that size."""
    rng = random.Random(4)
    swings = [StepInput(step=i, loss=rng.gauss(0, 0.02), grad_norm=1.0 if i % 128 == 0 else None) for i in range(400)]
    spikes = [StepInput(step=400 + i, loss=0.08 * (-1) ** i) for i in range(40)]
    assert feed(GradientDiagnosis(), [*swings, *spikes]) == []
    alerts = feed(GradientDiagnosis(), [*swings, StepInput(step=400, loss=0.4)])
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 400)]
    assert alerts[0]["message"].startswith("loss 0.4 is ") and "its usual size 0.01" in alerts[0]["message"]


@pytest.mark.parametrize(
    "skipped, why",
    [("unarmed", "it starts at the first non-finite value, this one (--forward-check auto"),
     ("spaced", "optwatch's --budget spaces them out")],
)  # fmt: skip
def test_a_nonfinite_loss_without_a_forward_check_says_why_there_was_none(skipped, why):
    diagnosis = GradientDiagnosis()
    feed(diagnosis, [StepInput(step=i, loss=1.0, grad_norm=1.0) for i in range(30)])
    [alert] = diagnosis.observe(StepInput(step=30, loss=math.nan, grad_norm=math.nan, forward_skipped=skipped))
    assert alert["type"] == "nonfinite" and f"no forward check ran at this step: {why}" in alert["message"]


def test_an_episode_in_a_model_compiled_in_place_says_once_that_no_module_can_be_named():
    """--forward-check auto arms at the first NaN and promises that the first checked step names the module;
    in a model compiled in place (``model.compile()``) no check can run: its checked steps say so, once."""
    diagnosis = GradientDiagnosis()
    feed(diagnosis, [StepInput(step=i, loss=1.0, grad_norm=1.0) for i in range(30)])
    nan = math.nan
    steps = [StepInput(step=i, loss=nan, grad_norm=nan, forward_skipped="unarmed") for i in range(30, 35)]
    steps += [StepInput(step=i, loss=nan, grad_norm=nan, forward_skipped="compiled") for i in range(35, 40)]
    alerts = feed(diagnosis, steps)
    assert [(a["type"], a["step"]) for a in alerts] == [("nonfinite", 30), ("nonfinite", 35)]
    assert alerts[1]["message"].startswith("at step 35, the first checked since step 30: no module can be named")


def test_an_episode_no_check_saw_begin_names_the_module_at_its_first_checked_step():
    """A NaN loss at step 30 arms the forward check (auto); the run stays NaN and its first checked step, 35,
    finds the module where it shows: it was never named (every later step was the same episode), and the
    advice said to use --forward-check always, which the budget spaced out too."""
    diagnosis = GradientDiagnosis()
    feed(diagnosis, [StepInput(step=i, loss=1.0, grad_norm=1.0, forward=[("0", 1.0), ("2", 1.0)]) for i in range(30)])
    nan = math.nan
    steps = [StepInput(step=i, loss=nan, grad_norm=nan, forward_skipped="unarmed") for i in range(30, 35)]
    steps += [StepInput(step=i, loss=nan, grad_norm=nan, forward=[("0", nan), ("2", nan)]) for i in range(35, 40)]
    alerts = feed(diagnosis, steps)
    assert [(a["type"], a["step"], a["module"]) for a in alerts] == [("nonfinite", 30, None), ("nonfinite", 35, "0")]
    assert alerts[1]["message"].startswith("first non-finite output at step 35, the first checked since step 30")
    # A start that was checked, all outputs finite (a NaN born in the loss): the weights it spoiled later are
    # no news, and no step of it went unchecked.
    checked = GradientDiagnosis()
    feed(checked, [StepInput(step=i, loss=1.0, grad_norm=1.0, forward=[("0", 1.0), ("2", 1.0)]) for i in range(30)])
    steps = [StepInput(step=30, loss=nan, grad_norm=nan, forward=[("0", 1.0), ("2", 1.0)])]
    steps += [StepInput(step=i, loss=nan, grad_norm=nan, forward=[("0", nan), ("2", nan)]) for i in range(31, 35)]
    assert [(a["step"], a["module"]) for a in feed(checked, steps)] == [(30, None)]


def test_amp_overflow_is_not_a_broken_run_until_the_scaler_gives_up():
    diagnosis = GradientDiagnosis(Thresholds(amp_skip_limit=5, recover_steps=3))
    steps = [StepInput(step=i, loss=1.0, grad_norm=1.0) for i in range(3)]
    steps += [StepInput(step=3, loss=1.0, grad_norm=math.inf, amp_overflow=True, amp_scale=65536.0)]
    steps += [StepInput(step=i, loss=1.0, grad_norm=1.0) for i in range(4, 10)]
    steps += [
        StepInput(step=i, loss=1.0, grad_norm=math.nan, amp_overflow=True, amp_scale=2.0**-i) for i in range(10, 16)
    ]
    alerts = feed(diagnosis, steps)
    assert [(a["type"], a["step"]) for a in alerts] == [("amp_overflow", 3), ("amp_overflow", 10), ("nonfinite", 14)]
    assert "at loss scale 65536" in alerts[0]["message"] and "not a broken run" in alerts[0]["message"]
    assert "GradScaler skipped every step" in alerts[2]["message"]


def test_the_docs_list_every_threshold_with_its_default():
    text = (ROOT / "docs" / "gradients.md").read_text()
    for name, default, _ in Thresholds.describe():
        match = re.search(rf"^\| `{name}` \| ([^|]+) \|", text, re.MULTILINE)
        assert match and float(match.group(1)) == default, name


def test_a_converging_regressions_batch_losses_between_checks_are_no_explosion():
    """A mini-batch loss near convergence has a heavy tail: a batch of hard examples is now and then 10-15x the
    median one. Between the budget's checks (the loss alone stands in for the gradients) a healthy run of
    5,000 steps raised 4-6 "exploding" errors; it raises none, and a real jump of the loss is still one."""
    import torch

    torch.manual_seed(0)
    inputs = torch.randn(1024, 12)
    targets = inputs @ torch.randn(12, 1)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = []
    for step in range(5000):
        batch = torch.randint(0, 1024, (32,))
        loss = torch.nn.functional.mse_loss(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        optimizer.step()
        measured = step < 100 or step % 128 == 0  # (the default budget's checks on this loop)
        steps.append(StepInput(step=step, loss=loss.item(), grad_norm=norm.item() if measured else None))
    import statistics

    losses = [s.loss for s in steps]
    tail = [n for n in range(2000, 5000) if losses[n] > 10 * statistics.median(losses[n - 50 : n])]
    assert tail, "the tail this test is about: batches 10x the median of the 50 before"
    assert feed(GradientDiagnosis(), steps) == []
    jumped = StepInput(step=5000, loss=100 * statistics.median(losses[-50:]))
    alerts = feed(GradientDiagnosis(), [*steps, jumped])
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 5000)], alerts


def test_a_value_just_beyond_a_spike_a_few_steps_old_is_no_explosion():
    """A diffusion model's layer spiked to 21x its median, and four steps later reached 25x: "exploding",
    where the spike, not yet in the baseline's reach (refreshed every few observations), set no bar. The
    same norms here: a spike of 25 beside a median of 1, then 30 a few steps on (the root of the factor
    beyond a spike is 79)."""
    for gap in range(2, 5):  # (25 then 30 at once: two in a row, no lone spike)
        rng = random.Random(3)
        norms = [1.0 + 0.1 * rng.random() for _ in range(60)]
        norms[20] = 9.0  # (an older spike: 30 is beyond its bar, 28.5)
        norms += [25.0] + [1.0] * (gap - 1) + [30.0] + [1.0] * 10
        steps = [StepInput(step=i, loss=1.0, grad_norm=g) for i, g in enumerate(norms)]
        assert feed(GradientDiagnosis(), steps) == [], gap


def test_a_lone_spike_that_was_said_once_raises_the_bar_for_the_next_like_it():
    """A PPO run's minibatch gradient norm spiked to 264x its median at step 257 and to 424x at step 384,
    each back to normal at the next minibatch: an error alert for each, on a healthy run. The first spike
    still says so (nothing before it could tell); one like it later is the signal's own tail; an explosion
    that stays up, beyond the root of the factor over that spike, is still one."""
    rng = random.Random(4)
    norms = [0.0025 * (1 + 0.3 * rng.random()) for _ in range(400)]
    norms[60], norms[190] = 0.641, 0.669  # lone spikes, 130 steps apart (the next minibatch back at once)
    norms[300:310] = [3.0] * 10  # (4.7x the first spike, and it stays up)
    alerts = feed(GradientDiagnosis(), [StepInput(step=i, loss=1.0, grad_norm=g) for i, g in enumerate(norms)])
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 60), ("exploding", 300)]
