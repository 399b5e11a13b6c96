"""Gradient statistics measured by the probe on real (tiny) CPU training loops, in this process."""

from __future__ import annotations

import concurrent.futures
import copy
import math
import statistics
import threading
import time

import pytest
import torch
from torch import nn

from conftest import new_probe, records_of, train
from optwatch.diagnose.gradients import GradientDiagnosis, LayerStats
from optwatch.probe.probe import Probe

CUDA = torch.cuda.is_available()


def start(**options) -> Probe:
    """A probe measuring every step: these tests check the statistics, the cost governor has its own."""
    return new_probe("grads-test", **{"budget": 0.0, **options}).start()


@pytest.fixture
def probe():
    probe = start()
    yield probe
    probe.close()


def recorded(probe: Probe, kind: str) -> list[dict]:
    return records_of(probe, kind)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


def test_layer_records_hold_the_exact_norms_updates_and_zero_fractions(probe):
    model = mlp()
    # Param groups in another order than the model's: records still list layers in model order.
    optimizer = torch.optim.Adam(
        [{"params": model[4].parameters()}, {"params": [*model[0].parameters(), *model[2].parameters()]}], lr=0.01
    )
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    expected = []
    for _ in range(4):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        params = list(model.parameters())
        before = [p.detach().clone() for p in params]
        grads = [p.grad.clone() for p in params]
        optimizer.step()
        expected.append(
            {
                "grad_norm": [g.norm().item() for g in grads],
                "weight_norm": [b.norm().item() for b in before],
                "update_norm": [(p.detach() - b).norm().item() for p, b in zip(params, before)],
                "zero_frac": [(g == 0).float().mean().item() for g in grads],
            }
        )
    records = recorded(probe, "layers")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    # The weights are measured a module at a time here (a chunk is an eighth of them, whole modules): each
    # figure is the one of the step it says (updated_at), and exact.
    assert [r["updated_at"] for r in records] == [
        [0, 0, None, None, None, None],
        [0, 0, 1, 1, None, None],
        [0, 0, 1, 1, 2, 2],
        [3, 3, 1, 1, 2, 2],
    ]
    for record, want in zip(records, expected):
        assert record["names"] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
        assert record["numel"] == [32, 8, 64, 8, 8, 1]
        assert record["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)  # every parameter, every step
        for key in ("weight_norm", "update_norm", "zero_frac"):
            for index, at in enumerate(record["updated_at"]):
                if at is not None:
                    assert record[key][index] == pytest.approx(expected[at][key][index], rel=1e-5, abs=1e-9), key
        for index, at in enumerate(record["updated_at"]):
            if at is not None:
                ratio = expected[at]["update_norm"][index] / expected[at]["weight_norm"][index]
                assert record["update_ratio"][index] == pytest.approx(ratio, rel=1e-5)
        assert not any(key.startswith("_") for key in record)
    assert any(0 < z < 1 for r in records for z in r["zero_frac"] if z is not None)  # ReLU: dead units


def test_grad_every_and_a_small_update_budget_take_turns():
    probe = start(grad_every=2, grad_update_mb=(64 * 4 + 8 * 4) / 2**20)  # room for layer "2" alone
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(32, 4), torch.randn(32, 1), steps=8)
    records = recorded(probe, "layers")
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    # Chunks of whole modules that fit 288 bytes: "0" (160 B), "2" (288 B), "4" (36 B), in turn; a layer
    # measured at an earlier step shows its newest values, and the step they are from.
    assert [r["updated_at"] for r in records] == [
        [0, 0, None, None, None, None],
        [0, 0, 2, 2, None, None],
        [0, 0, 2, 2, 4, 4],
        [6, 6, 2, 2, 4, 4],
    ]
    for record in records:
        lr_update = [0.1 * g for g in record["grad_norm"]]  # plain SGD: ||Δw|| = lr ||g||
        for update, want, at in zip(record["update_norm"], lr_update, record["updated_at"]):
            assert (update is None) == (at is None)
            if at == record["step"]:
                assert update == pytest.approx(want, rel=1e-5)


def test_gradscaler_skipped_steps_are_amp_overflows_not_broken_runs(probe):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    poisoned = {3, 4}  # an fp16 overflow, stood in for by an inf planted in one gradient
    losses = []
    for step in range(8):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        losses.append(loss.item())
        if step in poisoned:
            model[2].weight.grad[0, 0] = math.inf
        scaler.step(optimizer)
        scaler.update()
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    alerts = [r for r in records if r["kind"] == "alert"]
    assert [s["step"] for s in steps] == list(range(8))
    assert [s["loss"] for s in steps] == losses  # the loss the script computed, not the scaled one
    assert [s.get("amp_overflow", False) for s in steps] == [s in poisoned for s in range(8)]
    assert [s.get("amp_scale") for s in steps if s.get("amp_overflow")] == [1024.0, 512.0]
    assert [(a["type"], a["step"]) for a in alerts] == [("amp_overflow", 3)]
    layer_steps = [r["step"] for r in records if r["kind"] == "layers"]
    assert layer_steps == [0, 1, 2, 5, 6, 7]  # skipped steps changed no weights: nothing to measure


class Spike(nn.Module):
    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        return x * math.inf if self.armed else x


def test_forwards_on_other_threads_leave_the_training_threads_check_alone(caplog):
    """A thread running forwards with gradients on (an actor, a background evaluation) while the model
    trains: its outputs are not mixed into the training's sequence of checks, and the origin of an inf
    is still named at its step (interleaved, they made the diagnosis fail and switch itself off)."""
    probe = start(forward_check="always")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), Spike(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    other, z = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 8)), torch.randn(16, 8)
    stop = threading.Event()

    def actor():
        while not stop.is_set():
            other(z)

    threads = [threading.Thread(target=actor) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for step in range(10):
            time.sleep(0.005)  # let the actors run between the steps as well
            model[3].armed = step == 6
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    records = records_of(probe)
    [alert] = [a for a in records if a["kind"] == "alert" and a["type"] == "nonfinite"]
    assert alert["step"] == 6 and alert["module"] == "3"
    assert "failed" not in caplog.text
    layers = [r for r in records if r["kind"] == "layers"]
    assert len(layers) == 10 and not any(key.startswith("_") for r in layers for key in r)


def spiky_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), Spike(), nn.Linear(8, 1))


def test_training_on_a_thread_of_its_own_has_its_first_steps_checked():
    """The probe starts on the main thread (as `optwatch run` starts it); the training runs on another,
    and a module emits inf at step 0: the origin is named at that step."""
    probe = start(forward_check="always")
    model = spiky_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    worker = threading.Thread(target=train, args=(model, optimizer, x, y, 3), kwargs={"spike": (model[3], 0)})
    worker.start()
    worker.join()
    [alert] = [a for a in recorded(probe, "alert") if a["type"] == "nonfinite"]
    assert (alert["step"], alert["module"]) == (0, "3")


def test_steps_run_by_a_thread_pool_are_all_checked():
    """Each step on whichever worker of a pool is free: every step's forward is checked."""
    probe = start(forward_check="always")
    model = spiky_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(time.sleep, [0.05] * 4))  # a pool whose workers have all run
        for step in range(12):
            pool.submit(train, model, optimizer, x, y, 1, spike=(model[3], 0) if step == 9 else None).result()
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    [alert] = [a for a in records if a["kind"] == "alert" and a["type"] == "nonfinite"]
    assert (alert["step"], alert["module"]) == (9, "3")
    assert [s["step"] for s in steps] == list(range(12))


@pytest.mark.parametrize(
    "forward_check, device",
    [
        ("always", "cpu"),
        ("off", "cpu"),
        pytest.param("always", "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]),
    ],
)
def test_the_module_that_emits_inf_is_named_at_that_step(forward_check, device):
    """On a GPU the outputs are checked by one fused norm when backward starts; on a CPU, one by one."""
    probe = start(forward_check=forward_check)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), Spike(), nn.Linear(8, 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4, device=device), torch.randn(32, 1, device=device)
    train(model, optimizer, x, y, steps=12, spike=(model[3], 7))
    with torch.no_grad():  # evaluation forwards are not checked and change nothing
        model(x)
    records = records_of(probe)
    [alert] = [a for a in records if a["kind"] == "alert" and a["type"] == "nonfinite"]
    assert alert["step"] == 7 and set(alert["params"]) >= {"0.weight", "2.weight"}
    if forward_check == "always":
        assert alert["module"] == "3" and "first non-finite output: module '3'" in alert["message"]
    else:
        assert alert["module"] is None
    steps = [r for r in records if r["kind"] == "step"]
    assert not any(key.startswith("_") for s in steps for key in s)


def test_by_default_the_first_inf_arms_the_forward_check_and_the_next_is_named_at_its_step():
    """The loss and the gradient norm, watched at every step, see the first inf; which module made it is
    found from then on (a hook on every module call costs too much to keep otherwise), so a recurrence is
    named at its very step."""
    probe = start()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), Spike(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    healthy = copy.deepcopy(model.state_dict())
    train(model, optimizer, x, y, steps=12, spike=(model[3], 7))
    model.load_state_dict(healthy)  # the inf gradients made the weights NaN (0 * inf): a transient, then
    # the check is armed off the training thread, once the inf has been read back
    for _ in range(200):
        if probe.nonfinite_seen:
            break
        time.sleep(0.02)
    train(model, optimizer, x, y, steps=1)  # the step in flight when it came
    again = probe.step + 25  # past the first episode (20 healthy steps end it)
    train(model, optimizer, x, y, steps=30, spike=(model[3], 25))
    nonfinite = [a for a in recorded(probe, "alert") if a["type"] == "nonfinite"]
    assert [(a["step"], a["module"]) for a in nonfinite] == [(7, None), (again, "3")]
    # Not the budget's doing (every step is a detail step here): auto arms the check at the first non-finite value.
    assert "no forward check ran at this step: it starts at the first non-finite value" in nonfinite[0]["message"]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_on_a_gpu_a_model_deeper_than_one_batch_of_checks_still_names_the_module():
    probe = start(forward_check="always")
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(8, 8) for _ in range(40)]
    layers.insert(37, Spike())  # past the first batch of 32 outputs checked together
    model = nn.Sequential(nn.Linear(4, 8), *layers, nn.Linear(8, 1)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 4, device="cuda"), torch.randn(32, 1, device="cuda")
    train(model, optimizer, x, y, steps=10, spike=(model[38], 6))
    alerts = recorded(probe, "alert")
    assert [(a["type"], a["step"], a["module"]) for a in alerts if a["type"] == "nonfinite"] == [("nonfinite", 6, "38")]


class SpikyConv(nn.Conv2d):
    """A convolution whose output overflows at one chosen step (as fp16 can)."""

    armed = False

    def forward(self, x):
        out = super().forward(x)
        return out * math.inf if self.armed else out


def test_a_convolution_checked_through_the_batch_norm_after_it_is_named():
    probe = start(forward_check="always")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), SpikyConv(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 2),
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,))
    train(model, optimizer, x, y, steps=10, loss_fn=nn.functional.cross_entropy, spike=(model[3], 6))
    alerts = recorded(probe, "alert")
    assert [(a["type"], a["step"], a["module"]) for a in alerts] == [("nonfinite", 6, "3")]


class Wrapper(nn.Module):
    """A model whose parameters all belong to its one child (a common shape: a backbone in a shell)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) / 0.0  # a NaN born in the wrapper's own code, not in a submodule


def test_the_wrapper_is_the_model_and_is_named_for_what_its_own_code_does():
    probe = start(forward_check="always")
    inner = nn.Linear(4, 1)  # made before the wrapper: the first of the two a heap walk meets
    model = Wrapper(inner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.mse_loss(model(torch.randn(2, 4)), torch.randn(2, 1)).backward()
    optimizer.step()
    assert probe.find_model() is model
    [alert] = recorded(probe, "alert")
    assert alert["module"] == "Wrapper" and alert["step"] == 0  # the root, by its class name


def test_a_zero_budget_measures_every_step():
    probe = start(budget=0.0)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(130):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)).backward()
        optimizer.step()
    layers = recorded(probe, "layers")
    assert [r["step"] for r in layers] == list(range(130)) and {r["every"] for r in layers} == {1}


def test_grads_off_records_steps_only():
    probe = start(grad_every=0)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.mse_loss(model(torch.randn(2, 4)), torch.randn(2, 1)).backward()
    optimizer.step()
    records = records_of(probe)
    assert [r for r in records if r["kind"] == "layers"] == [] and len([r for r in records if r["kind"] == "step"]) == 1


def test_a_failing_diagnosis_costs_neither_statistics_nor_privacy(monkeypatch, caplog):
    def broken(self, step):
        raise RuntimeError("diagnosis bug")

    monkeypatch.setattr(GradientDiagnosis, "observe", broken)
    probe = start()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(torch.randn(8, 4)), torch.randn(8, 1)).backward()
        optimizer.step()
    records = [r for r in records_of(probe) if r["kind"] in ("step", "layers")]
    assert len(records) == 6 and not any(key.startswith("_") for r in records for key in r)
    assert all("zero_frac" in r for r in records if r["kind"] == "layers")
    assert caplog.text.count("the gradient diagnosis failed for rank 0 and is switched off") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gradient_statistics_make_no_host_device_sync(probe):
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 1)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 1, device="cuda")

    def step():
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # GradScaler syncs by itself (found_inf.item()): keep it out of the check
        scaler.update()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train(model, optimizer, x, y, steps=30)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    records = records_of(probe)
    layers = [r for r in records if r["kind"] == "layers"]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) == 33 and [r["step"] for r in layers] == [s["step"] for s in steps if not s.get("amp_overflow")]
    assert all(math.isfinite(g) for r in layers[-30:] for g in r["grad_norm"] + r["update_norm"])


def test_with_clipping_the_norm_before_clipping_is_what_explodes(probe):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    returned = []
    for step in range(50):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        (loss * (1000.0 if step == 45 else 1.0)).backward()  # a gradient spike that clipping hides
        returned.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1).item())
        optimizer.step()
    wrapped = torch.nn.utils.clip_grad_norm_
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    assert torch.nn.utils.clip_grad_norm_ is not wrapped  # unwrapped on close
    assert [s["grad_norm"] for s in steps] == pytest.approx(returned, rel=1e-6)  # before clipping
    assert {s["clip_max_norm"] for s in steps} == {0.1}
    alerts = [r for r in records if r["kind"] == "alert"]
    assert [(a["type"], a["step"]) for a in alerts] == [("exploding", 45)]
    assert alerts[0]["message"].startswith("global gradient norm before clipping")


def test_a_float64_model_gets_its_statistics_and_checks_in_float64(caplog):
    """A norm may widen a dtype but not narrow it: float64 training must neither break nor lose a plugin."""
    probe = start(forward_check="always")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), Spike(), nn.Linear(8, 1)).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    train(model, optimizer, x, y, steps=2)
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    train(model, optimizer, x, y, steps=6, spike=(model[3], 4))
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    layers = [r for r in records if r["kind"] == "layers"]
    assert len(steps) == 8 and steps[1]["grad_norm"] == pytest.approx(expected, rel=1e-9)
    assert len(layers) == 8 and layers[1]["grad_norm"][0] > 0
    alerts = [(a["type"], a["step"], a["module"]) for a in records if a["kind"] == "alert"]
    assert alerts == [("nonfinite", 6, "3")]
    assert "switched off" not in caplog.text


def test_a_model_trained_under_optwatch_can_still_be_copied_saved_and_scripted(tmp_path):
    """EMA and "best so far" copies (copy.deepcopy), SWA's AveragedModel, torch.save(model) and
    torch.jit.script must keep working mid-run, and a saved model must not need optwatch to load:
    optwatch leaves nothing of its own in the model's modules (its hooks are global)."""
    import copy
    import pickle

    probe = start()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=3)
    assert probe.detailed  # the phase hooks and the forward check are on for the next step
    best = copy.deepcopy(model)
    averaged = torch.optim.swa_utils.AveragedModel(model)
    torch.save(model, tmp_path / "model.pt")
    scripted = torch.jit.script(model)
    pickled = pickle.dumps(model)
    records_of(probe)
    x = torch.randn(2, 4)
    assert torch.equal(best(x), model(x)) and averaged.n_averaged.item() == 0
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=False)(x), model(x))
    assert torch.equal(scripted(x), model(x))
    assert b"optwatch" not in pickled and b"optwatch" not in (tmp_path / "model.pt").read_bytes()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in [*model.modules(), *best.modules()])


def test_over_its_budget_optwatch_spaces_out_its_checks_and_a_nan_between_them_brings_every_step_back():
    """A tiny MLP, whose sub-millisecond step optwatch's checks would slow by far more than 1%: after the
    first steps, the gradient norms and statistics and the phase timing run on every Nth step only (records
    say which); a NaN loss at a step between two detail steps is caught there (no forward check ran, the
    alert says), and from then on every step is a detail step with the forward check on, so the next one is
    named at its very step."""
    probe = start(budget=0.01, grad_full_cadence_steps=20)
    model = spiky_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    train(model, optimizer, x, y, steps=300)
    assert probe.detail_every > 1 and not probe.governor.pinned
    light = next(step for step in range(probe.step, probe.step + 200) if step % probe.detail_every)
    healthy = copy.deepcopy(model.state_dict())
    train(model, optimizer, x, y, steps=light - probe.step + 1, spike=(model[3], light - probe.step))
    model.load_state_dict(healthy)  # the inf gradients made the weights NaN (0 * inf): a transient, then
    model[3].armed = False
    deadline = time.monotonic() + 10
    while not probe.governor.pinned and time.monotonic() < deadline:  # the channel thread reads it back
        time.sleep(0.01)
    assert probe.governor.pinned
    train(model, optimizer, x, y, steps=1)  # the step in flight when the pin came
    pinned_from = probe.step  # at once, not at the next step the old spacing had planned (up to 128 later)
    again = probe.step + 30  # past the first episode (20 healthy steps end it)
    train(model, optimizer, x, y, steps=31, spike=(model[3], 30))
    records = records_of(probe)
    steps = {r["step"]: r for r in records if r["kind"] == "step"}
    layers = {r["step"] for r in records if r["kind"] == "layers"}
    assert all(steps[s]["detailed"] and steps[s]["grad_norm"] is not None for s in range(20))
    spaced = [r for r in steps.values() if 40 <= r["step"] < light]
    assert any(not r["detailed"] for r in spaced) and any(r["detailed"] for r in spaced)
    for r in spaced:
        assert r["detailed"] == (r["step"] % r["detail_every"] == 0) == (r["step"] in layers)
        assert (r["grad_norm"] is not None) == r["detailed"] and r["loss"] is not None
    # (A detail step's boundary work, its statistics' update norms, is paid in the step after it.)
    between = [r for r in spaced if not r["detailed"] and not steps[r["step"] - 1]["detailed"]]
    # Medians: one light step preempted by a busy machine would weigh on a sum.
    light_share = statistics.median(r["optwatch_s"] / r["step_time_s"] for r in between)
    detail_share = statistics.median(r["optwatch_s"] / r["step_time_s"] for r in spaced if r["detailed"])
    assert light_share < 0.7 * detail_share  # what the spacing is for
    nonfinite = [a for a in records if a["kind"] == "alert" and a["type"] == "nonfinite"]
    assert [(a["step"], a["module"]) for a in nonfinite] == [(light, None), (again, "3")]
    # Not the budget's doing (every step is a detail step here): auto arms the check at the first non-finite value.
    assert "no forward check ran at this step: it starts at the first non-finite value" in nonfinite[0]["message"]
    assert all(steps[s]["detailed"] and steps[s]["detail_every"] == 1 for s in range(pinned_from, again + 1))


def test_forward_check_always_checks_the_steps_between_detail_steps_too():
    """``--forward-check always`` set its hook on detail steps only: past the first steps, over its budget, a
    NaN between two of them was named by no module, and the alert's advice (use `always`) did not help."""
    probe = start(budget=0.01, grad_full_cadence_steps=20, forward_check="always")
    model = spiky_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    train(model, optimizer, x, y, steps=300)
    assert probe.detail_every > 1
    light = next(step for step in range(probe.step, probe.step + 200) if step % probe.detail_every)
    train(model, optimizer, x, y, steps=light - probe.step + 1, spike=(model[3], light - probe.step))
    records = records_of(probe)
    assert not {r["step"]: r for r in records if r["kind"] == "step"}[light]["detailed"]
    [alert] = [a for a in records if a["kind"] == "alert" and a["type"] == "nonfinite"]
    assert (alert["step"], alert["module"]) == (light, "3")


def test_a_loss_that_jumps_between_detail_steps_is_an_alert_and_brings_them_back():
    """A learning rate 100,000x too high for one step, at a step between two detail steps (at this budget
    on a millisecond step the checks run on 1 step in tens): the loss, read every step, jumps 50x at the next step. That
    step is named (its gradients were not measured: the alert says so), and optwatch looks closer at the
    steps after it, every one a detail step. No alert came before: the next detail step was too late."""
    probe = start(budget=0.01, grad_full_cadence_steps=20)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    # (A batch that makes a step about a millisecond: at a tenth of that, on a busy machine, the channel's
    # thread fell behind the training and dropped records, as it must rather than slow the training.)
    x, y = torch.randn(4096, 4), torch.randn(4096, 1)
    train(model, optimizer, x, y, steps=300)
    assert probe.detail_every > 4
    spiked = next(step for step in range(probe.step, probe.step + 200) if step % probe.detail_every > 2)
    train(model, optimizer, x, y, steps=spiked - probe.step)
    optimizer.param_groups[0]["lr"] = 1000.0
    train(model, optimizer, x, y, steps=1)
    optimizer.param_groups[0]["lr"] = 0.01
    for _ in range(2000):  # the losses are read back on the channel thread, a flush or so later
        if probe.governor.close_look_until >= 0:
            break
        train(model, optimizer, x, y, steps=1)
    looked_from = probe.step + 1
    train(model, optimizer, x, y, steps=30)
    records = records_of(probe)
    steps = {r["step"]: r for r in records if r["kind"] == "step"}
    assert steps[spiked + 1]["loss"] > 10 * steps[spiked]["loss"] and not steps[spiked + 1]["detailed"]
    exploding = [a for a in records if a["kind"] == "alert" and a["type"] == "exploding"]
    assert [a["step"] for a in exploding] == [spiked + 1], exploding
    assert "its gradients were not measured at this step" in exploding[0]["message"]
    assert all(steps[s]["detailed"] and steps[s]["grad_norm"] is not None for s in range(looked_from, probe.step))


def test_the_budget_weighs_what_optwatchs_threads_cost_as_the_live_figure_does():
    """The budget holds the share the live figure shows, optwatch's threads included: the same run, once with
    its threads costing far more than the budget (charged here as the channel's and the sampler's CPU time
    is), gets its checks spaced out as far as they go; without that it keeps checking every few steps."""
    from optwatch.probe.governor import MAX_DETAIL_EVERY

    spacings = {}
    for charged_s in (0.0, 0.005):
        probe = start(budget=0.5, grad_full_cadence_steps=20)
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        for _ in range(160):
            # Steps of a few milliseconds: optwatch's own work on the tiny model, a fraction of a millisecond,
            # stays well under the budget on a busy machine too (without it, it came near, and over it once).
            time.sleep(0.002)
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            probe.channel.add_cpu(charged_s)
        spacings[charged_s] = probe.detail_every
        late = [r for r in records_of(probe, "step") if r["step"] >= 100]
        threads_s = sum(r["optwatch_bg_s"] for r in late)
        assert (threads_s > 0.5 * sum(r["step_time_s"] for r in late)) == bool(charged_s)  # by hand
    assert spacings[0.005] == MAX_DETAIL_EVERY
    assert spacings[0.0] < MAX_DETAIL_EVERY // 4


@pytest.mark.parametrize(
    ("between_s", "detail_s", "settles_at"),
    [(0.00015, 0.00066, 128), (0.00001, 0.0005, 7)],
    ids=["the-steps-between-take-the-budget", "room-for-every-7th"],
)
def test_past_the_first_steps_the_spacing_is_right_within_two_windows_and_stays(between_s, detail_s, settles_at):
    """The LLM-shaped loop's costs (benchmarks/llm_loop.py, 15 ms steps: 0.15 ms of optwatch's own between
    detail steps, 0.66 ms at one), and a 10 ms step with room for every 7th: from step 100 the governor
    finds the spacing the 1% budget allows within two windows of 20 steps, where doubling spent some 300
    steps, a third of them detail steps, getting there; then it stays (by hand: 0.01 + 0.49 / 7 = 0.080 ms
    a step, 0.80% of 10 ms, inside [0.5%, 1%])."""
    from optwatch.probe.governor import DetailGovernor

    step_s = 0.015 if settles_at == 128 else 0.010
    governor = DetailGovernor(budget=0.01, settle_steps=100)
    detailed, spacings = True, []
    for step in range(1000):
        every, detailed = governor.plan(step, detail_s if detailed else between_s, step_s, detailed)
        spacings.append(every)
    assert spacings[99] > 1  # the first 100 steps measured the detail steps' cost
    assert all(every == settles_at for every in spacings[140:])
    details_past_100 = sum(1 for step in range(100, 400) if step % spacings[step - 1] == 0)
    assert details_past_100 <= 300 // settles_at + 8  # (doubling: 33 in the first case)


@pytest.mark.parametrize("host_paced", [True, False], ids=["cpu", "gpu"])
def test_a_pause_between_steps_buys_no_checks_for_the_steps_around_it(host_paced):
    """The 10 ms step with room for every 7th detail step (above), with a 150 ms wait in every 20th step
    (an evaluation, a checkpoint, a process stopped for a while): the training steps pay for the checks, so
    the spacing is the one without the waits, 7, not the 4 it settled at when the waits counted as step time
    (17.5 ms a step on average: room for a detail step every 4 or 5). On a GPU the long step is the one that
    waited for the device's queue, whose work is the steps' before it: it counts whole there."""
    from optwatch.probe.governor import DetailGovernor

    governor = DetailGovernor(budget=0.01, settle_steps=100)
    governor.host_paced = host_paced
    detailed, spacings = True, []
    for step in range(1000):
        step_s = 0.010 + (0.150 if step % 20 == 19 else 0.0)
        every, detailed = governor.plan(step, 0.0005 if detailed else 0.00001, step_s, detailed)
        spacings.append(every)
    assert all(every == (7 if host_paced else 4) for every in spacings[200:])


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")])]
)
def test_the_budget_takes_a_long_step_for_a_pause_where_the_host_paces_the_training(device):
    """Where the model trains tells the governor which kind of step time it is given (the test above)."""
    probe = start()
    probe.governor.host_paced = device != "cpu"  # the opposite: the model's device sets it
    try:
        model = mlp().to(device)
        x, y = torch.randn(16, 4, device=device), torch.randn(16, 1, device=device)
        train(model, torch.optim.SGD(model.parameters(), lr=0.01), x, y, steps=3)
        assert probe.governor.host_paced is (device == "cpu")
    finally:
        probe.close()


_FOREACH_NORM = torch._foreach_norm


class _GradNormCount(torch.overrides.TorchFunctionMode):
    """Counts ``torch._foreach_norm`` 2-norm calls over exactly the gradients of ``params`` (float32 ones)."""

    def __init__(self, params: list[torch.Tensor]):
        super().__init__()
        self.params = params
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is _FOREACH_NORM and (args[1] if len(args) > 1 else (kwargs or {}).get("ord", 2)) == 2:
            grads = {id(p.grad) for p in self.params if p.grad is not None and p.dtype == torch.float32}
            self.count += {id(t) for t in args[0]} == grads
        return func(*args, **(kwargs or {}))


def _clipped_run(
    probe_on: bool, head_dtype: torch.dtype, reverse: bool = False, **clip_options
) -> tuple[list[float], list[int], list[list[torch.Tensor]]]:
    """What ``clip_grad_norm_`` returned at each step, how many times a step computed the norms of the
    float32 gradients, and the gradients it left."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    head = nn.Linear(1, 1).to(head_dtype)
    params = [*model.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01)
    x, y = torch.randn(32, 4), torch.randn(32, 1, dtype=head_dtype)
    probe = start() if probe_on else None
    returned, counts, grads = [], [], []
    try:
        for _ in range(6):
            optimizer.zero_grad()
            with _GradNormCount(params) as counted:
                nn.functional.mse_loss(head(model(x).to(head_dtype)), y).backward()
                clipped = params[::-1] if reverse else params  # (the clip's order need not be optwatch's)
                returned.append(torch.nn.utils.clip_grad_norm_(clipped, 0.5, **clip_options).item())
                grads.append([p.grad.clone() for p in params])
                optimizer.step()
            counts.append(counted.count)
    finally:
        if probe is not None:
            probe.close()
    return returned, counts, grads


def test_the_clip_takes_the_norms_optwatch_measured_and_returns_the_same_bits():
    """With the script clipping by norm, optwatch's per-layer norms are the clip's: the gradients' norms are
    computed once per step, not twice, and the clip returns exactly what it returns without optwatch and
    leaves exactly the same gradients, whichever of its arguments the script gives."""

    def same(bare: tuple, watched: tuple, once: bool = True) -> None:
        assert watched[0] == bare[0]  # the total norm, bit for bit
        if once:  # the gradients' norms computed once a step, in one fused call, without optwatch and with it
            assert bare[1] == [1] * 6 and watched[1] == [1] * 6
        assert all(torch.equal(a, b) for step_a, step_b in zip(bare[2], watched[2]) for a, b in zip(step_a, step_b))

    same(_clipped_run(False, torch.float32), _clipped_run(True, torch.float32))
    for options in ({"norm_type": 2, "foreach": True}, {"error_if_nonfinite": True}):
        same(_clipped_run(False, torch.float32, **options), _clipped_run(True, torch.float32, **options))
    # A clip told not to fuse computes each norm alone, as it would without optwatch (whose own are apart).
    options = {"foreach": False}
    same(_clipped_run(False, torch.float32, **options), _clipped_run(True, torch.float32, **options), once=False)
    same(_clipped_run(False, torch.float32, reverse=True), _clipped_run(True, torch.float32, reverse=True))
    # Gradients of two dtypes: optwatch measures all of them in float64, which is not what the clip computes,
    # so the clip measures its own groups as it always does; its result is the same bits again.
    same(_clipped_run(False, torch.float64), _clipped_run(True, torch.float64))


class _SlowGradNorms(_GradNormCount):
    """The 2-norms of all of ``params``'s gradients taking ``seconds`` more, as on a model far larger."""

    def __init__(self, params: list[torch.Tensor], seconds: float):
        super().__init__(params)
        self.seconds = seconds

    def __torch_function__(self, func, types, args=(), kwargs=None):
        counted = self.count
        result = super().__torch_function__(func, types, args, kwargs)
        if self.count > counted:
            time.sleep(self.seconds)
        return result


def test_the_norms_the_clip_takes_from_optwatch_are_the_clips_cost_not_optwatchs():
    """optwatch measures the gradients' norms and the clip takes them instead of measuring them itself: the
    step pays for them once, as it does without optwatch, so optwatch's figure for itself leaves them out. A
    clip by value measures no norms: there optwatch's norms are its own cost, and its figure says so."""
    slow = 0.03
    for clip_by_norm in (True, False):
        probe = start()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(32, 4), torch.randn(32, 1)
        with _SlowGradNorms(list(model.parameters()), slow):
            for _ in range(10):
                optimizer.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                if clip_by_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                else:
                    torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
                optimizer.step()
        steps = [r for r in records_of(probe, "step") if r["step"] >= 2]  # (the first ones set up the layout)
        assert len(steps) == 8 and all(s["step_time_s"] > slow for s in steps)
        own = [s["optwatch_s"] for s in steps]
        if clip_by_norm:
            # (The median: on a loaded machine a step's own time also holds any preemption that fell in it.)
            assert statistics.median(own) < slow / 2, own
        else:
            assert min(own) > slow, own


def test_steps_that_grow_slower_bring_the_checks_back_within_a_window():
    """The LLM-shaped loop's costs at its 15 ms step (the steps between take the 1% budget: every 128th),
    then steps ten times slower (a larger batch, a slower loader): the window at the widest spacing (256
    steps, after the one under way when they began) finds room for every check (by hand: 0.66 ms of 150 ms
    is 0.44%, under half the budget), and the spacing comes down there, where halving once per window
    spent some 540 steps getting to it."""
    from optwatch.probe.governor import MAX_DETAIL_EVERY, DetailGovernor

    governor = DetailGovernor(budget=0.01, settle_steps=100)
    detailed, spacings = True, []
    for step in range(1200):
        step_s = 0.015 if step < 600 else 0.150
        every, detailed = governor.plan(step, 0.00066 if detailed else 0.00015, step_s, detailed)
        spacings.append(every)
    assert spacings[599] == MAX_DETAIL_EVERY
    assert all(every == 1 for every in spacings[600 + 4 * MAX_DETAIL_EVERY :])  # two windows at most


def test_a_complex_valued_layer_keeps_every_layers_statistics_on(probe):
    """A Fourier layer's complex weights beside real ones: the norm raised ("dtype should be complex for
    complex inputs") and the per-layer statistics were switched off for the whole run, the real layers' too."""
    torch.manual_seed(0)
    spectral = nn.Parameter(torch.randn(8, 8, dtype=torch.complex64) * 0.3)
    head = nn.Linear(8, 1)
    optimizer = torch.optim.Adam([spectral, *head.parameters()], lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    expected = []
    for _ in range(3):
        optimizer.zero_grad()
        mixed = torch.fft.ifft(torch.fft.fft(x) @ spectral).real
        nn.functional.mse_loss(head(mixed), y).backward()
        expected.append([p.grad.norm().item() for p in (spectral, *head.parameters())])
        optimizer.step()
    records = recorded(probe, "layers")
    assert [r["step"] for r in records] == [0, 1, 2]
    for record, want in zip(records, expected):
        # (in the probe's order of the parameters: the complex one's by torch's own norm)
        assert sorted(record["grad_norm"]) == pytest.approx(sorted(want), rel=1e-5)
    steps = recorded(probe, "step")
    assert steps[-1]["grad_norm"] == pytest.approx(math.sqrt(sum(n * n for n in expected[-1])), rel=1e-5)


class TaskHeads(nn.Module):
    """A trunk and three task heads; ``task`` picks the head a step trains."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(4, 8)
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(3))

    def forward(self, x, task):
        return self.heads[task](torch.relu(self.trunk(x)))


def test_heads_trained_in_turn_show_the_zero_fraction_of_their_own_gradient(probe):
    """Each head has a gradient one step in three and zeros between (``zero_grad(set_to_none=False)``). The
    zeros were counted a chunk at a time, often at a step the head sat out: shown beside its next step's norm,
    100% zeros, an RMS gradient of 0 and a "vanishing" alert on a healthy run (as with two heads on
    alternate steps); nor are the steps a head sits out, all zero, vanishing ones."""
    torch.manual_seed(0)
    model = TaskHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for param in model.parameters():
        param.grad = torch.zeros_like(param)  # (as after the first step of each head)
    truth = []  # per step: name -> (gradient norm, share of exact zeros), by hand
    for step in range(60):
        optimizer.zero_grad(set_to_none=False)
        nn.functional.mse_loss(model(x, step % 3), y).backward()
        truth.append(
            {n: (p.grad.norm().item(), (p.grad == 0).float().mean().item()) for n, p in model.named_parameters()}
        )
        optimizer.step()
    records = records_of(probe)
    layers = [r for r in records if r["kind"] == "layers"]
    assert [r["step"] for r in layers] == list(range(60))
    counted: dict[str, list[int]] = {}  # name -> the steps its zeros were counted at (a chunk's turn)
    checked = 0
    for record in layers:
        step = record["step"]
        for index, name in enumerate(record["names"]):
            if record["updated_at"][index] == step:
                counted.setdefault(name, []).append(step)
            norm, zeros = truth[step][name]
            shown = record["zero_frac"][index]
            if norm == 0:
                assert shown == 1.0, (step, name)  # all zero, at this very step
                continue
            # The share counted at the newest step that had a gradient (a step the head sat out says nothing).
            had = [at for at in counted.get(name, []) if truth[at][name][0] > 0]
            if had:
                assert shown == pytest.approx(truth[had[-1]][name][1], abs=1e-9), (step, name)
                checked += 1
            else:
                assert shown is None, (step, name)
        for module in LayerStats.from_record(record).modules():
            norm = math.sqrt(sum(truth[step][p][0] ** 2 for p in module.params))
            assert (module.grad_rms > 0) == (norm > 0), (step, module.name)
    assert checked > 100
    assert [a for a in records if a["kind"] == "alert"] == []


def test_a_complex_layers_zero_fraction_and_rms_gradient_count_complex_entries(probe):
    """A complex entry is zero when both its parts are: counted on the real view, a zero fraction of -0.25
    and an RMS gradient √2 too small."""
    torch.manual_seed(0)

    class Spectral(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Parameter(torch.randn(8, 4, dtype=torch.complex64) * 0.3)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head((x @ self.mix).abs())

    model = Spectral()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8, dtype=torch.complex64), torch.randn(16, 1)
    x[:, :3] = 0  # the mix's first 3 rows get no gradient: 12 zero entries of 32
    truth = []
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grad = model.mix.grad
        nonzero = (grad != 0).sum().item()
        truth.append(((grad == 0).float().mean().item(), grad.abs().norm().item() / math.sqrt(nonzero)))
        optimizer.step()
    assert truth[0][0] == 12 / 32
    for record in recorded(probe, "layers"):
        index = record["names"].index("mix")
        assert record["numel"][index] == 32
        if record["updated_at"][index] == record["step"]:
            zeros, rms = truth[record["step"]]
            assert record["zero_frac"][index] == pytest.approx(zeros, abs=1e-9)
            [module] = [m for m in LayerStats.from_record(record).modules() if m.params == ("mix",)]
            assert module.grad_rms == pytest.approx(rms, rel=1e-5)
