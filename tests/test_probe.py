"""The probe on real (tiny) CPU training loops, in this process: what a step is, and what it records."""

from __future__ import annotations

import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch

import optwatch.probe.channel
import optwatch.probe.controls
import optwatch.probe.probe
from conftest import new_probe, records_of, train
from optwatch.probe.plugin import ProbePlugin
from optwatch.probe.probe import Probe

CUDA = torch.cuda.is_available()


def start(*plugins: ProbePlugin, first: bool = False, **options) -> Probe:
    """A started probe publishing at every step, with ``options`` and ``plugins`` of a test's own, run after
    the others (before them with ``first``)."""
    return new_probe(extra=plugins, first=first, **options).start()


@pytest.fixture
def probe():
    probe = start()
    yield probe
    probe.close()


def recorded(probe: Probe, kind: str = "step") -> list[dict]:
    return records_of(probe, kind)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def test_step_records_match_the_loop(probe):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    losses, norms = [], []
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        optimizer.step()
        losses.append(loss.item())
    steps = recorded(probe)
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4]
    assert [s["loss"] for s in steps] == losses
    assert [s["grad_norm"] for s in steps] == pytest.approx(norms, rel=1e-5)
    assert all(s["lr"] == 0.1 for s in steps)


def test_lbfgs_closure_is_one_step_with_the_first_loss(probe):
    model = tiny_model()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x, y = torch.randn(16, 4), torch.randn(16, 1)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    returned = [optimizer.step(closure).item() for _ in range(3)]
    steps = recorded(probe)
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert [s["loss"] for s in steps] == returned


def test_several_param_groups_report_the_first_groups_lr(probe):
    model = tiny_model()
    optimizer = torch.optim.Adam(
        [{"params": model[0].parameters(), "lr": 1e-3}, {"params": model[2].parameters(), "lr": 1e-2}]
    )
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=3)
    steps = recorded(probe)
    assert len(steps) == 3 and all(s["lr"] == 1e-3 for s in steps)
    all_grads = [p.grad for p in model.parameters()]
    assert steps[-1]["grad_norm"] == pytest.approx(torch.nn.utils.get_total_norm(all_grads).item(), rel=1e-5)


def test_without_an_optimizer_each_backward_is_a_step(probe):
    weight = torch.randn(3, requires_grad=True)
    losses = []
    for _ in range(4):
        loss = (weight**2).sum()
        loss.backward()
        with torch.no_grad():
            weight -= 0.1 * weight.grad
            weight.grad = None
        losses.append(loss.item())
    steps = recorded(probe)
    assert [s["loss"] for s in steps] == losses


def test_gradient_accumulation_is_one_step_with_the_summed_loss(probe):
    """Scripts divide each micro-batch's loss by the number of micro-batches: the sum of what they
    backpropagate is the loss of the whole batch, the objective whose gradient the step applies."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    whole = 0.0
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(model(torch.randn(4, 4)), torch.randn(4, 1)) / 3
        loss.backward()
        whole += loss.item()
    optimizer.step()
    steps = recorded(probe)
    assert len(steps) == 1
    assert steps[0]["loss"] == pytest.approx(whole, rel=1e-6)


@pytest.mark.parametrize("on_host", [True, False], ids=["read-in-place", "packed-as-for-a-gpu"])
def test_micro_batch_losses_add_up_where_they_are_read_back_in_double_precision(on_host):
    """The step's micro-batch losses go out as their parts and are added where they are read (no operator on
    the training thread): in double precision, so bfloat16 parts do not round at each addition, and the same
    in a GAN's per-optimizer map. Checked against the sum of the parts' own values."""
    from optwatch.probe.losses import LossSum
    from optwatch.probe.readback import DeviceBatch

    parts = [torch.tensor(2.0**-9, dtype=torch.bfloat16)] * 8 + [torch.tensor(1.0), torch.tensor([0.25])]
    total = LossSum([part if not part.dim() else part.reshape(()) for part in parts])
    records = [{"kind": "step", "loss": total, "losses": {"netD": total, "netG": torch.tensor(0.5)}}]
    batch = DeviceBatch(records, on_host=on_host)
    assert batch.ready()
    (record,) = batch.records()
    by_hand = math.fsum(part.item() for part in parts)
    assert by_hand == 1.25 + 8 * 2.0**-9  # exact; added in bfloat16, each 2**-9 would vanish next to 1.0
    assert record["loss"] == by_hand
    assert record["losses"] == {"netD": by_hand, "netG": 0.5}


def test_dataloader_batches_give_samples_per_second_and_data_wait(probe):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    for x, y in torch.utils.data.DataLoader(data, batch_size=16):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    steps = recorded(probe)
    assert [s["samples"] for s in steps] == [16, 16, 16, 16]
    assert all(s["samples_per_s"] > 0 and s["data_wait_s"] >= 0 for s in steps)


def test_explicit_batch_size_and_metrics(probe):
    probe.attach(batch_size=32)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(torch.randn(32, 4)), torch.randn(32, 1)).backward()
    optimizer.step()
    probe.log(val_acc=0.5)
    records = records_of(probe)
    [step] = [r for r in records if r["kind"] == "step"]
    assert step["samples"] == 32
    metrics = [r for r in records if r["kind"] == "metric"]
    assert metrics[0]["values"] == {"val_acc": 0.5} and metrics[0]["step"] == 1
    with pytest.raises(ValueError, match="batch_size must be positive"):
        probe.attach(batch_size=0)


def test_hooks_are_removed_on_close(probe):
    backward = torch.autograd.backward
    probe.close()
    assert torch.autograd.backward is not backward
    assert torch.autograd.backward.__module__ == "torch.autograd"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_steps_make_no_host_device_sync(probe):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64, device="cuda"), torch.randn(32, 1, device="cuda")
    for _ in range(3):  # warm-up outside the checked region (allocator, cuBLAS handles)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(50):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    steps = recorded(probe)
    assert len(steps) == 53 and all(isinstance(s["loss"], float) for s in steps)


def test_zero_code_finds_the_model_and_names_its_parameters(probe):
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(torch.randn(2, 4)), torch.randn(2, 1)).backward()
    optimizer.step()
    assert probe.find_model() is model
    names = probe.parameter_names()
    assert sorted(names.values()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert names[id(model[0].weight)] == "0.weight"


@pytest.mark.parametrize("make_scheduler", ["lambda", "step", "plateau"])
def test_a_manual_lr_change_moves_the_schedule_with_it(make_scheduler):
    """lr=V under a scheduler: the schedule continues from the new level instead of snapping back.
    ReduceLROnPlateau (here on a metric that never improves: it halves the lr at every step) makes itself
    without LRScheduler's __init__: optwatch did not see it, held the commanded rate against its
    reductions as against a script's own assignments, and the plateau never cut the lr again."""
    probe = new_probe(f"sched-{make_scheduler}", controls=["lr=0.01@4"]).start()
    try:
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if make_scheduler == "lambda":
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
        elif make_scheduler == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
            scheduler.step(1.0)  # the first metric: the best so far
        used = []  # the lr each update really uses (the optimizer's own pre-hooks run after optwatch's)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
        for _ in range(8):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(torch.randn(4, 4)), torch.randn(4, 1)).backward()
            optimizer.step()
            scheduler.step(*([1.0] if make_scheduler == "plateau" else []))
    finally:
        probe.close()
    # Steps 0-3 follow 0.1 * 0.5^k; at step 4 the lr is set to 0.01; after it, the schedule halves from there.
    assert used[:4] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
    assert used[4:] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])


@pytest.mark.parametrize("scheduled", [True, False])
def test_a_scaled_lr_scales_every_step_from_its_own_under_a_per_iteration_schedule(scheduled):
    """lr*=0.5@4 during a warm-up stepped every iteration, by a scheduler or assigned by the script itself
    (nanoGPT): from step 4 on each update uses half the schedule's own value. The schedule was scaled twice
    (0.375x from step 5 here): once at the boundary and again when step 4 was pinned to half of step 3's."""
    probe = new_probe(f"scaled-{scheduled}", controls=["lr*=0.5@4"]).start()

    def warmup(step: int) -> float:
        return min(1.0, (step + 1) / 8)

    try:
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup) if scheduled else None
        used = []
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
        for step in range(12):
            if not scheduled:
                for group in optimizer.param_groups:
                    group["lr"] = 0.1 * warmup(step)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(torch.randn(4, 4)), torch.randn(4, 1)).backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
    finally:
        probe.close()
    assert used == pytest.approx([0.1 * warmup(s) * (0.5 if s >= 4 else 1.0) for s in range(12)], rel=1e-12)


def test_a_groups_own_lr_command_leaves_the_other_groups_held_rates_alone():
    """A script that assigns its schedule to both groups each iteration: lr*=0.5@2 holds both at half,
    lr[1]=0.001@6 sets group 1; group 0 stays at half at step 6 too (it got the script's raw rate there)."""
    probe = new_probe("groups-held", controls=["lr*=0.5@2", "lr[1]=0.001@6"]).start()
    try:
        model = tiny_model()
        optimizer = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.1)
        used = []
        optimizer.register_step_pre_hook(lambda opt, *_: used.append([g["lr"] for g in opt.param_groups]))
        for step in range(10):
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * (step + 1)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(torch.randn(4, 4)), torch.randn(4, 1)).backward()
            optimizer.step()
    finally:
        probe.close()
    assert [lrs[0] for lrs in used] == pytest.approx([0.01 * (s + 1) * (0.5 if s >= 2 else 1) for s in range(10)])
    assert [lrs[1] for lrs in used][6] == pytest.approx(0.001)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")])],
)
def test_amp_without_bf16_trains_in_fp16_and_skips_overflowing_steps(monkeypatch, device):
    """amp=on where bf16 is missing (a T4, a V100): fp16 autocast with loss scaling; an overflow skips the
    step and is reported as such."""
    monkeypatch.setattr(optwatch.probe.controls, "bf16_supported", lambda device: False)  # the device's capability
    probe = new_probe("fp16", controls=["amp=on@5"]).start()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 64, device=device), torch.randn(64, 1, device=device)
    dtypes, weights = [], []
    try:
        for step in range(40):
            optimizer.zero_grad()
            inputs = x * 1000 if step == 20 else x  # gradients beyond fp16's range at a 65536 loss scale
            output = model(inputs)
            dtypes.append(output.dtype)
            torch.nn.functional.mse_loss(output.float(), y).backward()
            optimizer.step()
            weights.append(model[2].weight.detach().clone())
    finally:
        probe.close()
    steps = recorded(probe)
    assert dtypes[:5] == [torch.float32] * 5 and set(dtypes[5:]) == {torch.float16}
    assert [s["amp"] for s in steps] == [False] * 5 + [True] * 35
    assert [s["step"] for s in steps if s.get("amp_overflow")] == [20]
    assert steps[20]["amp_scale"] == 2.0**16
    assert torch.equal(weights[19], weights[20]) and not torch.equal(weights[20], weights[21])
    assert all(math.isfinite(s["loss"]) for s in steps if s["step"] != 20)
    assert steps[-1]["loss"] < steps[5]["loss"]  # it trains in fp16


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux's CPU affinity")
def test_a_new_fold_is_named_when_a_busy_machine_slowed_the_walk_not_its_cost(probe):
    """A k-fold run on a busy machine: the walk over every live object that finds a new model is done only
    when it costs at most a twentieth of the time since the last one, and a wait for a core inside it counted
    as its cost (70 ms of walk read 190 ms): the third fold's layers were "(unnamed).0", ... Here the process
    shares its one core with a spinning program, which doubles the walk's wall time and not its cost."""
    from optwatch.probe.model import largest_module_of

    x, y = torch.randn(16, 4), torch.randn(16, 1)
    calibration = torch.optim.SGD(tiny_model().parameters(), lr=0.1)
    affinity = os.sched_getaffinity(0)
    core = min(affinity)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(0, {core})
        os.sched_setaffinity(spinner.pid, {core})
        started = time.thread_time()
        largest_module_of(calibration)  # the walk's own cost, in this process as it is
        walk_s = time.thread_time() - started
        for fold in range(2):
            model = tiny_model()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            train(model, optimizer, x, y, steps=3)
            if fold == 0:  # between 20 times the walk's cost and 20 times its time beside the spinner (twice)
                time.sleep(30 * walk_s)
            del model, optimizer
    finally:
        os.sched_setaffinity(0, affinity)
        spinner.kill()
        spinner.wait()
    layers = recorded(probe, "layers")
    assert set(layers[-1]["names"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_a_closed_probe_lets_go_of_the_model():
    """In a notebook or a loop of runs, each closed probe must not keep its model (and memory) alive."""
    import gc
    import weakref

    probe = new_probe("gone").start()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(torch.randn(4, 4)), torch.randn(4, 1)).backward()
        optimizer.step()
    assert probe.find_model() is model
    probe.close()
    model_ref, probe_ref = weakref.ref(model), weakref.ref(probe)
    del model, optimizer, probe
    gc.collect()
    assert probe_ref() is None and model_ref() is None


def test_a_plugin_that_raises_is_switched_off_and_the_training_goes_on(caplog):

    class Faulty(ProbePlugin):
        name = "faulty"
        calls = 0

        def after_step(self, probe, record):
            Faulty.calls += 1
            record["faulty"] = True
            if Faulty.calls == 3:
                raise RuntimeError("boom")

    probe = start(Faulty(), first=True)  # before the others: they must still run at that step
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=6)
    steps = recorded(probe)
    assert [s["step"] for s in steps] == list(range(6))
    assert Faulty.calls == 3 and [bool(s.get("faulty")) for s in steps] == [True] * 3 + [False] * 3
    assert all("forward_s" in s and "amp" in s for s in steps)  # the other plugins carried on
    assert caplog.text.count("faulty failed in after_step and is switched off; training goes on") == 1


def test_records_a_plugin_spoils_are_said_to_be_missing_not_left_out_in_silence():
    """A step record with a bad field (a plugin's, or a loss of shape (1,) sent as a list) was left out by the
    hub with a line in its log, which nobody sees: the run showed no steps and said nothing. The hub says
    once, in an alert every viewer and the record get, what it left out and why."""

    class Spoiling(ProbePlugin):
        name = "spoiling"

        def after_step(self, probe, record):
            if record["step"] >= 3:
                record["samples"] = "sixteen"

    probe = start(Spoiling())
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=8)
    records = records_of(probe)
    assert [r["step"] for r in records if r["kind"] == "step"] == [0, 1, 2]
    [alert] = [r for r in records if r["kind"] == "alert"]
    assert alert["type"] == "records_refused" and alert["severity"] == "warning", alert
    assert "samples" in alert["message"] and "the run, which goes on" in alert["message"], alert["message"]


def test_a_plugin_switched_off_takes_its_hooks_away_at_once():
    """Left in place, a broken plugin's hooks would go on running at every module call."""
    from torch.nn.modules import module as nn_module

    class Hooked(ProbePlugin):
        name = "hooked"
        calls = 0

        def install(self, probe):
            self.handle = nn_module.register_module_forward_hook(self.count)

        def count(self, module, args, output):
            Hooked.calls += 1

        def after_step(self, probe, record):
            raise RuntimeError("boom")

        def close(self, probe):
            self.handle.remove()

    hooks_before = len(nn_module._global_forward_hooks)
    probe = start(Hooked())
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=1)
    calls = Hooked.calls
    assert calls > 0 and len(nn_module._global_forward_hooks) == hooks_before
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=3)
    assert Hooked.calls == calls
    probe.close()
    assert len(nn_module._global_forward_hooks) == hooks_before


class SparseBag(torch.nn.Module):
    """A sparse embedding, a frozen layer and a trained head: gradients of every kind in one optimizer."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4, sparse=True)
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, tokens):
        return self.head(self.frozen(self.embed(tokens).mean(1)))


@pytest.mark.parametrize("grad_every", [0, 1])  # the probe's own norm, and the gradient statistics'
def test_the_global_norm_covers_the_gradients_there_are(grad_every):
    """Frozen parameters (no gradient) are left out of the step's global norm; a sparse gradient counts as the
    dense one would (it was left out: SparseAdam's embedding had no part in the norm)."""
    probe = start(grad_every=grad_every)
    torch.manual_seed(0)
    model = SparseBag()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # the frozen layer's parameters included
    tokens, y = torch.randint(0, 10, (8, 3)), torch.randn(8, 1)
    norms = []
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(tokens), y).backward()
        dense = [model.embed.weight.grad.to_dense(), model.head.weight.grad, model.head.bias.grad]
        norms.append(torch.nn.utils.get_total_norm(dense).item())
        optimizer.step()
    steps = recorded(probe)
    assert [s["grad_norm"] for s in steps] == pytest.approx(norms, rel=1e-6)


class Costly(ProbePlugin):
    """Stands for optwatch work of a known cost: before the optimizer step, and at the step boundary."""

    name = "costly"

    def before_optimizer_step(self, probe, optimizer):
        time.sleep(0.01)

    def after_step(self, probe, record):
        time.sleep(0.02)


def test_optwatchs_own_time_is_in_each_step_record_and_in_the_step_time():
    probe = start(Costly())
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=6)
    steps = recorded(probe)[1:]  # step 0 began at its backward(), after its forward
    assert len(steps) == 5
    for step in steps:
        # 10 ms in the step, and the previous boundary's 20 ms: optwatch's, and part of the step's time,
        # as the training pays for it.
        assert 0.03 <= step["optwatch_s"] < step["step_time_s"]
        assert step["optwatch_s"] > 0.9 * step["step_time_s"] - 0.01  # the model's own work is a few ms at most


def test_the_forward_checks_time_is_counted_as_optwatchs():
    """Checking a 16M-value activation (a sum on the CPU) is optwatch's time; without the check it is not."""

    def own_time(forward_check: str) -> float:
        probe = start(forward_check=forward_check)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 4096), torch.nn.Linear(4096, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        train(model, optimizer, torch.randn(4096, 8), torch.randn(4096, 1), steps=6)
        return statistics.median(s["optwatch_s"] for s in recorded(probe)[1:])

    checked, unchecked = own_time("always"), own_time("off")
    assert checked > 2 * unchecked and checked - unchecked > 0.001, (checked, unchecked)


def test_forwards_before_the_first_step_are_not_charged_to_it():
    """A sanity check of the loss before training (grad enabled, big activations): not step 0's time."""
    probe = start()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4096), torch.nn.Linear(4096, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4096, 8), torch.randn(4096, 1)
    for _ in range(10):
        torch.nn.functional.mse_loss(model(x), y).item()
    train(model, optimizer, x, y, steps=3)
    steps = recorded(probe)
    timed = [(s["optwatch_s"], s["step_time_s"]) for s in steps]
    assert all(0 < own < step_time for own, step_time in timed), timed


def test_stop_comes_at_the_next_steps_backward_with_the_last_step_whole():
    """`stop@3` is applied at the boundary after step 2. Its KeyboardInterrupt came from inside step 2's
    optimizer.step(), after the update and before the script's scheduler.step() and its own count: a
    checkpoint saved by the script's handler had one update more than its step count. It comes at step 3's
    backward now, with step 2 whole; a loop that catches it and trains on gets steps that still tile time."""
    probe = start(controls=["stop@3"])
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    stopped, updates, counted = [], 0, 0
    for _ in range(6):
        time.sleep(0.1)
        try:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            updates += 1
            scheduler.step()
            counted += 1
        except KeyboardInterrupt as stop:
            stopped.append((updates, counted, scheduler.last_epoch, str(stop)))
    steps = recorded(probe)
    assert stopped == [(3, 3, 3, "optwatch: stopped by request before step 3")]
    assert [s["step"] for s in steps] == list(range(5))  # step 3 spans the stopped iteration and the next
    assert all(s["step_time_s"] < 0.17 and s["optwatch_s"] < 0.05 for s in steps[1:] if s["step"] != 3), [
        (s["step"], s["step_time_s"], s["optwatch_s"]) for s in steps
    ]


def test_controls_switched_off_for_a_bug_take_their_autocast_with_them():
    """AMP turned on by optwatch, then the controls plugin fails: autocast must not stay on (nothing of
    optwatch would leave it at backward() any more), during the run or after it."""
    from optwatch.probe.controls import ControlPlugin

    class FailingControls(ControlPlugin):
        def after_step(self, probe, record):
            if record["step"] == 1:
                raise RuntimeError("a bug in the controls")
            super().after_step(probe, record)

    probe = new_probe("amp", controls=["amp=on@0"])
    probe.plugins = [FailingControls(["amp=on@0"]) if p.name == "controls" else p for p in probe.plugins]
    probe.start()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    dtypes = []
    for _ in range(4):
        optimizer.zero_grad()
        out = model(x)
        dtypes.append(out.dtype)
        torch.nn.functional.mse_loss(out.float(), y).backward()
        optimizer.step()
    probe.close()
    left_on = torch.is_autocast_enabled("cpu")
    while torch.is_autocast_enabled("cpu"):  # the other tests must not inherit it
        torch.set_autocast_enabled("cpu", False)
    assert dtypes[1] == torch.bfloat16 and dtypes[2:] == [torch.float32] * 2  # on at step 1, off from 2
    assert not left_on


PER_STEP = (
    "on_backward_start",
    "on_backward_end",
    "on_gradients",
    "before_optimizer_step",
    "after_optimizer_step",
    "after_step",
)


class Recorder(ProbePlugin):
    """Which per-step callbacks it was given, at which step."""

    def __init__(self, name: str, between_detail_steps: frozenset[str] | None):
        self.name = name
        self.between_detail_steps = between_detail_steps
        self.seen: dict[int, list[str]] = {}

    def _saw(self, probe: Probe, method: str) -> None:
        self.seen.setdefault(probe.step, []).append(method)

    def on_backward_start(self, probe, loss):
        self._saw(probe, "on_backward_start")

    def on_backward_end(self, probe, loss):
        self._saw(probe, "on_backward_end")

    def before_optimizer_step(self, probe, optimizer):
        self._saw(probe, "before_optimizer_step")

    def after_optimizer_step(self, probe, optimizer):
        self._saw(probe, "after_optimizer_step")

    def on_gradients(self, probe, optimizer):
        self._saw(probe, "on_gradients")

    def after_step(self, probe, record):
        self._saw(probe, "after_step")


def test_between_detail_steps_a_plugin_gets_only_the_callbacks_it_needs_and_controls_still_apply():
    """Over its budget optwatch spaces its detail steps; on the steps between, a plugin that asks for the
    boundary alone gets nothing else (what keeps those steps cheap), one that asks for nothing in
    particular gets everything, and scheduled LR changes land at their very steps, detail or not."""
    every, boundary = Recorder("every", None), Recorder("boundary", frozenset({"after_step"}))
    changes = {step: round(0.001 * (step - 149), 6) for step in range(150, 170)}
    controls = [f"lr={lr}@{step}" for step, lr in changes.items()]
    probe = start(every, boundary, budget=0.01, grad_full_cadence_steps=20, controls=controls)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=200)
    steps = {r["step"]: r for r in recorded(probe)}
    light = [s for s in range(20, 200) if not steps[s]["detailed"]]
    assert len(light) > 100 and any(not steps[s]["detailed"] for s in changes)
    for step in range(200):
        assert every.seen[step] == list(PER_STEP)
        assert boundary.seen[step] == (["after_step"] if step in light else list(PER_STEP))
    assert {s: steps[s]["lr"] for s in changes} == changes


class RecordCounting(Probe):
    """Counts the step records made at their step's end, on the training thread."""

    made_at_step_end = 0

    def _make_record(self, now, extra):
        self.made_at_step_end += 1
        super()._make_record(now, extra)


def test_steps_no_plugin_needs_at_their_end_get_their_records_later_with_the_numbers_of_their_own_step():
    """Between detail steps, a step whose end no plugin needs leaves only its raw values (the cheapest end a
    step can have); its record is made at the next flush or detail step. Those records say what the script
    did at each of those steps: its loss and the learning rate it assigned, in order, and the state a
    plugin keeps (cudnn.benchmark, switched on by a scheduled command at step 60), from the step it holds."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        probe = new_probe(
            probe_class=RecordCounting,
            budget=0.01,
            grad_full_cadence_steps=20,
            publish_interval_s=3600.0,
            controls=["cudnn_benchmark=on@60"],
        ).start()
        model = tiny_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        losses, rates = [], []
        started = time.time()
        for step in range(200):
            rate = 0.01 * (1 + math.cos(math.pi * step / 200))  # assigned each step, as nanoGPT does
            for group in optimizer.param_groups:
                group["lr"] = rate
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            rates.append(rate)
        made_at_step_end = probe.made_at_step_end
        steps = recorded(probe)
        ended = time.time()
    finally:
        torch.backends.cudnn.benchmark = saved
    light = [s["step"] for s in steps if not s["detailed"]]
    assert len(light) > 120 and made_at_step_end < 200 - 100  # most records were made later
    assert [s["step"] for s in steps] == list(range(200))
    assert [s["loss"] for s in steps] == pytest.approx(losses, rel=1e-6)
    assert [s["lr"] for s in steps] == rates
    assert all(s["grad_norm"] is not None and s["clip_max_norm"] == 1.0 for s in steps)
    times = [s["time"] for s in steps]
    assert times == sorted(times) and started <= times[0] and times[-1] <= ended
    assert [s["cudnn_benchmark"] for s in steps] == [False] * 60 + [True] * 140
    assert all(s["amp"] is False for s in steps)
    assert all(s["forward_s"] is None for s in steps if s["step"] in light)


def test_cudnn_benchmark_set_by_the_script_itself_shows_in_the_records_from_the_next_sample():
    """A script that sets ``cudnn.benchmark`` itself (no command): the step records say so from the
    sampler's next look on (within a sample's interval), as one switch, on steps between detail steps too."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        probe = start(budget=0.01, grad_full_cadence_steps=20, system_interval_s=0.02)
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        for step in range(200):
            if step == 100:
                torch.backends.cudnn.benchmark = True
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            time.sleep(0.002)
        steps = recorded(probe)
    finally:
        torch.backends.cudnn.benchmark = saved
    flags = [s["cudnn_benchmark"] for s in steps]
    switch = flags.index(True)
    assert flags == [False] * switch + [True] * (200 - switch) and switch >= 100
    assert sum(s["step_time_s"] for s in steps[100:switch]) <= 0.5  # the sampler looks every 20 ms
    assert any(not s["detailed"] for s in steps[switch:])


def test_a_live_command_reaches_a_run_whose_steps_need_no_plugin_at_their_end():
    """The controls have nothing to do at a step's end while no command is scheduled: a command that comes
    in (on the channel's thread) still applies at the next boundary, as it does at any step."""
    probe = start(budget=0.01, grad_full_cadence_steps=20)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for step in range(200):
        if step == 120:
            probe.commands.append({"id": "c1", "command": "lr=0.05", "source": "ctl"})
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    [event] = [r for r in records if r["kind"] == "event" and r.get("id") == "c1"]
    assert event["status"] == "accepted" and event["effective_step"] == 121
    assert sum(not s["detailed"] for s in steps[20:120]) > 60
    assert [s["lr"] for s in steps] == [0.1] * 121 + [0.05] * 79


def test_the_training_thread_never_wakes_the_channel_and_closing_wakes_it_at_once(monkeypatch):
    """The channel's thread takes what the training thread handed over on its own timer, never woken by the
    hand-over (that would take the GIL from the training thread at the step's end), and sleeps while
    nothing is on its way; closing the probe wakes it at once to send the rest."""
    monkeypatch.setattr(optwatch.probe.channel, "IDLE_WAIT_S", 60.0)
    probe = start(system_interval_s=3600.0)
    history = probe.test_hub.hub.history
    time.sleep(1.0)  # the hello is out, the thread asleep
    probe.log(accuracy=0.5)
    probe.flush()
    time.sleep(1.0)
    assert not [r for r in history.records() if r["kind"] == "metric"]  # still queued: nobody woke it
    closing = time.perf_counter()
    records = records_of(probe)
    assert [r["values"] for r in records if r["kind"] == "metric"] == [{"accuracy": 0.5}]
    assert records[-1]["kind"] == "end" and time.perf_counter() - closing < 5.0


def test_a_plugin_appended_in_place_or_wrapped_before_start_gets_its_callbacks():
    """``probe.plugins`` is a list: a plugin appended to it, or a plugin method wrapped on the instance
    (as benchmarks/grad_overhead.py does), before ``start`` runs at every step like one set with it."""
    probe = new_probe()
    appended = Recorder("appended", None)
    probe.plugins.append(appended)
    [telemetry] = [p for p in probe.plugins if p.name == "telemetry"]
    wrapped_calls = []
    unwrapped = telemetry.after_step

    def counting_after_step(probe, record):
        wrapped_calls.append(record["step"])
        return unwrapped(probe, record)

    telemetry.after_step = counting_after_step
    probe.start()
    model = tiny_model()
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(16, 4), torch.randn(16, 1), steps=3)
    records_of(probe)
    assert [appended.seen[step] for step in range(3)] == [list(PER_STEP)] * 3
    assert wrapped_calls == [0, 1, 2]


def test_optwatchs_own_hooks_failing_leave_the_training_and_the_step_numbers_alone(caplog):
    """A bug in optwatch's step accounting, which torch and the DataLoader call directly (simulated: its
    bookkeeping raises in each of its hooks at chosen steps), is logged once per hook; the training runs
    every step, and the steps after keep their numbers (a failed boundary still ends its step)."""

    class FaultyProbe(Probe):
        def batch_taken(self, iterator, started, finished, batch):
            if self.step == 2:
                raise RuntimeError("boom in the DataLoader hook")
            super().batch_taken(iterator, started, finished, batch)

        def backward_starting(self, tensors, weight=None):
            if self.step == 4:
                raise RuntimeError("boom in the backward hook")
            return super().backward_starting(tensors, weight)

        def learning_rate(self, optimizer=None):
            if self.step in (6, 8):
                raise RuntimeError("boom in the step record")
            return super().learning_rate(optimizer)

    probe = new_probe(probe_class=FaultyProbe).start()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randn(40, 1))
    losses = []
    for x, y in torch.utils.data.DataLoader(data, batch_size=4):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    steps = {s["step"]: s for s in recorded(probe)}
    assert len(losses) == 10 and probe.step == 10
    assert sorted(steps) == [0, 1, 2, 3, 4, 5, 7, 9]  # the two boundaries that failed left no record
    assert steps[4]["loss"] is None and [steps[s]["loss"] for s in (3, 5, 9)] == [losses[3], losses[5], losses[9]]
    for where in ("DataLoader hook", "backward hook", "step boundary"):
        assert caplog.text.count(f"optwatch: its {where} failed; training goes on") == 1, where


def test_a_plugins_own_hook_failing_switches_the_plugin_off_and_takes_its_hooks_away(caplog):
    """The forward check's hook is one torch calls directly, inside the model's forward: a failure there
    (simulated) must not reach the forward; the plugin is switched off as if a callback had failed, its hook
    goes, and the training and the other plugins go on."""
    from torch.nn.modules import module as nn_module

    from optwatch.probe.forward_check import ForwardCheckPlugin

    class FaultyCheck(ForwardCheckPlugin):
        def _sum_on_cpu(self):
            if self._context.step == 3:
                raise RuntimeError("boom in the forward check")
            super()._sum_on_cpu()

    hooks_before = len(nn_module._global_forward_hooks)
    probe = new_probe(forward_check="off", extra=[FaultyCheck(always=True)]).start()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train(model, optimizer, torch.randn(16, 4), torch.randn(16, 1), steps=8)
    hooks_during = len(nn_module._global_forward_hooks)
    steps = recorded(probe)
    assert [s["step"] for s in steps] == list(range(8)) and all(s["loss"] is not None for s in steps)
    assert hooks_during == hooks_before  # the forward check's global hook went at step 3
    assert all("amp" in s and s["forward_s"] is not None for s in steps[1:])  # the others carried on
    assert caplog.text.count("forward_check failed in its forward check and is switched off; training goes on") == 1


def test_the_last_steps_before_a_wait_with_no_module_call_reach_the_hub_on_the_cpu(monkeypatch):
    """A CPU training whose last steps were light ones, then a wait with no module call (a notebook's kernel
    between cells, a ``time.sleep`` after the loop): the sampler's thread records those steps itself once the
    module-call hook has gone untaken, so the hub has the last step while the process still waits (it
    showed step 180 of 199 for as long as it slept)."""
    monkeypatch.setattr(optwatch.probe.probe, "IDLE_FLUSH_S", 0.2)
    probe = start(budget=0.01, grad_full_cadence_steps=20, publish_interval_s=3600.0, system_interval_s=0.05)
    history = probe.test_hub.hub.history
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    losses = []
    for _ in range(200):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert probe._light_steps  # the last steps are light ones, not recorded yet
    deadline = time.perf_counter() + 10.0
    while time.perf_counter() < deadline:  # the process waits, no module called
        steps = [r for r in history.records() if r["kind"] == "step"]
        if steps and steps[-1]["step"] == 199:
            break
        time.sleep(0.05)
    assert [s["step"] for s in steps] == list(range(200))
    assert [s["loss"] for s in steps] == losses
    assert sum(not s["detailed"] for s in steps) > 100
    steps = recorded(probe, "step")  # closing after records nothing twice
    assert [s["step"] for s in steps] == list(range(200))


def test_an_interrupt_in_a_pause_ends_it_and_the_wait_is_held_time_not_optwatchs():
    """Ctrl-C (a notebook kernel's interrupt) while a ``pause`` holds the run: the KeyboardInterrupt reaches the
    loop, the pause ends with it and the run's events say so, the next training runs at once (it hung until
    someone resumed), and the wait is no step's time nor optwatch's own (it read as optwatch taking 80%)."""
    import _thread
    import threading

    probe = start()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    interrupter = threading.Timer(1.0, _thread.interrupt_main)
    # Without the fix the next training would wait for this resume (the test ends either way).
    rescue = threading.Timer(8.0, lambda: probe.commands.append({"id": "r", "command": "resume", "source": "ctl"}))
    rescue.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for step in range(1000):
                if step == 5:
                    probe.commands.append({"id": "p", "command": "pause", "source": "ctl"})
                    interrupter.start()
                train(model, optimizer, x, y, steps=1)
        interrupted_at = probe.step
        resumed = time.perf_counter()
        train(model, optimizer, x, y, steps=5)
        assert time.perf_counter() - resumed < 3.0  # not held until the resume
        records = records_of(probe)
    finally:
        interrupter.cancel()
        rescue.cancel()
    [resume] = [r for r in records if r["kind"] == "event" and r["command"] == "resume"]
    assert (
        resume["status"] == "accepted" and "interrupt" in resume["reason"] and "KeyboardInterrupt" in resume["reason"]
    )
    steps = {s["step"]: s for s in records if s["kind"] == "step"}
    assert set(steps) == set(range(interrupted_at + 5))
    after = steps[interrupted_at]  # the step begun after the interrupted pause
    assert after["step_time_s"] < 0.5 and after["optwatch_s"] < 0.1


def test_watch_with_a_model_built_anew_starts_the_alerts_baselines_over():
    """``model, opt = build(); optwatch.watch(model, opt)`` again in the same process (a notebook's next cell):
    the new model's first step record says ``new_model``, and its first losses, far above the trained
    model's, raise no alert (they were 'exploding @ step 800: loss 17.9 is 469x its median')."""
    probe = start()
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.randn(4, 1) * 3.0

    def build():
        model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        return model, torch.optim.Adam(model.parameters(), lr=0.02)

    model, optimizer = build()
    probe.attach(model=model, optimizer=optimizer)  # what optwatch.watch does with the probe it started
    train(model, optimizer, x, y, steps=150)
    model, optimizer = build()
    probe.attach(model=model, optimizer=optimizer)
    first_loss = torch.nn.functional.mse_loss(model(x), y).item()
    train(model, optimizer, x, y, steps=20)
    assert probe.attach(model=model, optimizer=optimizer) is probe and not probe._new_model  # the same one again
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    assert first_loss > 20 * statistics.median(s["loss"] for s in steps[100:150])  # (a jump, against the last model)
    assert [s["step"] for s in steps if s.get("new_model")] == [150]
    assert [a for a in records if a["kind"] == "alert" and a["step"] >= 150] == []


def test_a_notebook_kernels_idle_time_between_cells_is_no_step_work_in_the_verdict():
    """A notebook: a cell trains, the kernel idles, the next cell trains on. The step begun in the first cell
    and ended in the next holds the idle time: IPython's ``pre_run_cell`` (here the probe's handler called as
    the event calls it; tests/test_notebook.py runs a real IPython shell) marks it ``between_cells``, and the
    final verdict leaves it out as a pause (it read as 'host-bound: 94% in 1 step that took 6113x the median
    (34.7 s): work between training steps')."""
    probe = start(budget=0.01, grad_full_cadence_steps=20)
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    train(model, optimizer, x, y, steps=60)
    time.sleep(1.5)  # the kernel idles between the cells
    probe._cell_started()
    train(model, optimizer, x, y, steps=60)
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    assert [s["step"] for s in steps if s.get("between_cells")] == [60]
    assert steps[60]["step_time_s"] > 1.5
    [verdict] = [r for r in records if r["kind"] == "verdict" and r.get("final")]
    # (Not 'the steps wait (a read inside the loop, a sleep, a lock)': the idle kernel's samples are no step's.)
    assert not re.search("the steps wait|between training steps", verdict["message"]), verdict["message"]
    assert verdict["evidence"]["window_s"] < 1.5  # the idle time is no part of the window's


@pytest.mark.skipif(not os.path.exists("/proc/thread-self/schedstat"), reason="Linux's schedstat")
def test_a_busy_machines_slices_are_each_steps_wait_for_a_core_not_work_between_training_steps():
    """The training thread shares its core with two busy programs (all pinned to it, as on a machine with more
    busy threads than cores): the scheduler holds it off for a few milliseconds at a time, every dozen 0.2 ms
    steps. Each step says how long it waited for a core (``core_wait_s``, which adds up to the kernel's
    own count read here around the loop), and the verdict takes that out of the steps' work: it read '1 step
    in 16 takes 27x the median step: 51% of the time is work between training steps', or 'the process used 50%
    of a core: the steps wait (a read inside the loop, a sleep, a lock)', where other programs take its core."""
    core = min(os.sched_getaffinity(0))
    # Other programs on that core (not children of this process's, which would count as its DataLoader
    # workers): the launcher says the pids it forked and exits. (Each spinner printing its own pid, under
    # PYTHONUNBUFFERED as in CI, wrote the pid and the newline apart: two pids ran together into one number,
    # and the clean-up killed no spinner, or another process.)
    spin = (
        f"import os\nos.sched_setaffinity(0, {{{core}}})\npids = []\nfor _ in range(2):\n    pid = os.fork()\n"
        "    if pid == 0:\n        os.close(1)\n        os.close(2)\n        while True: pass\n"
        "    pids.append(pid)\nprint(*pids)"
    )
    launcher = subprocess.run([sys.executable, "-c", spin], capture_output=True, text=True, check=True)
    busy = [int(pid) for pid in launcher.stdout.split()]
    allowed, threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        os.sched_setaffinity(0, {core})  # this thread alone: the test's process keeps its other threads' cores
        torch.set_num_threads(1)
        probe = start(budget=0.01)
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        train(model, optimizer, x, y, steps=5)
        before = _run_delay_s()
        train(model, optimizer, x, y, steps=2000)  # (a second or more: the sampler's readings of the cores)
        waited = _run_delay_s() - before
        probe.close()
    finally:
        os.sched_setaffinity(0, allowed)
        torch.set_num_threads(threads)
        for pid in busy:
            os.kill(pid, signal.SIGKILL)
    records = records_of(probe)
    steps = [r for r in records if r["kind"] == "step"]
    assert waited > 0.45 * sum(s["step_time_s"] for s in steps[5:])  # (the core was shared)
    # (Up to a slice apart: the test reads after the last step's end, the probe at it. The steps' sum read 9%
    # short where a wait inside the probe's read of the kernel's count was capped away.)
    assert sum(s["core_wait_s"] for s in steps[5:]) == pytest.approx(waited, rel=0.03)
    [verdict] = [r for r in records if r["kind"] == "verdict" and r.get("final")]
    assert not re.search("the steps wait|between training steps", verdict["message"]), verdict["message"]
    # Where the machine has cores to spare, the two programs on the training's own say it; a machine whose
    # cores are all busy (other tests beside this one) is the busy machine's rule's to judge, on its figures.
    host = verdict["evidence"]["host_cpu_percent"]
    if host is not None and host < 90:
        assert verdict["message"].startswith("the cores it may run on are busy"), verdict["message"]


def _run_delay_s() -> float:
    """This thread's wait for a core so far, as the kernel counts it."""
    with open("/proc/thread-self/schedstat") as schedstat:
        return int(schedstat.read().split()[1]) / 1e9


def test_optwatchs_autocast_ends_with_the_notebook_cell_and_comes_back_at_the_next_step():
    """``amp=on`` in a notebook: when the cell ends (IPython's ``post_run_cell``, here the probe's handler called
    as the event calls it), optwatch's autocast is left, on the thread that entered it alone, so a later cell's
    evaluation runs in float32 (it ran in bf16); the next training step enters it again."""
    import threading

    probe = start()
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    train(model, optimizer, x, y, steps=2)
    probe.commands.append({"id": "a", "command": "amp=on", "source": "ctl"})
    train(model, optimizer, x, y, steps=3)
    assert torch.is_autocast_enabled("cpu")
    other = threading.Thread(target=probe._cell_ended)  # not the thread that entered it: no effect
    other.start()
    other.join()
    assert torch.is_autocast_enabled("cpu")
    probe._cell_ended()
    try:
        assert not torch.is_autocast_enabled("cpu")
        with torch.no_grad():
            assert model(x).dtype == torch.float32  # the next cell's evaluation
        train(model, optimizer, x, y, steps=3)
        assert torch.is_autocast_enabled("cpu")
        with torch.no_grad():
            assert model(x).dtype == torch.bfloat16
    finally:
        steps = recorded(probe)
    assert not torch.is_autocast_enabled("cpu")  # (closing leaves it too)
    assert [s["amp"] for s in steps[-3:]] == [True] * 3


def test_the_probe_reads_as_its_run_and_how_to_watch_it():
    """A notebook cell ending with ``optwatch.watch(...)`` shows the probe's repr: the run and the command."""
    probe = new_probe("repr-test")
    try:
        assert repr(probe) == "<optwatch run repr-test: `optwatch attach repr-test` to watch it>"
    finally:
        probe.test_hub.close()
