"""optwatch's numbers on the loops people run, held against what each script computes itself.

Each script under tests/scripts prints its own ground truth per step (``TRUTH {json}`` or, from the
frameworks' own hooks and logs, ``FRAMEWORK_STEP {json}``), counted from step 0 as optwatch counts; the
script runs unchanged under ``optwatch run --headless --record`` and every step record is compared.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPTS, optwatch, read_jsonl, steps_of


def truth_of(stdout: str, marker: str = "TRUTH") -> dict[int, dict]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith(f"{marker} "):
            payload = json.loads(line[len(marker) + 1 :])
            found[int(payload["step"])] = payload
    return found


def run(tmp_path, script: str, *args: str, options: tuple[str, ...] = ()) -> tuple[list[dict], str, str]:
    record = tmp_path / f"{script}.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), *options, str(SCRIPTS / f"{script}.py"), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_jsonl(record), result.stdout, result.stderr


def assert_as_the_script(steps: list[dict], truth: dict[int, dict], *keys: str) -> None:
    """Each of ``keys`` as the script printed it (under the same name), at every step."""
    for key in keys:
        assert_same(steps, truth, key, key)


def assert_same(steps: list[dict], truth: dict[int, dict], record_key: str, truth_key: str, rel: float = 1e-5):
    assert [s["step"] for s in steps] == sorted(truth), "a step is missing"
    got = [s.get(record_key) for s in steps]
    want = [truth[s["step"]][truth_key] for s in steps]
    assert got == pytest.approx(want, rel=rel), record_key


def test_a_gan_has_each_optimizers_loss_and_the_primarys_gradient_norm(tmp_path):
    """DCGAN: D's two backward() calls are D's loss; G's one backward() is G's, in the same step's record."""
    records, stdout, _ = run(tmp_path, "gan")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss_d")
    assert_same(steps, truth, "grad_norm", "grad_norm_d")
    assert_same(steps, truth, "samples", "samples")
    assert [sorted(s["losses"]) for s in steps] == [["optD", "optG"]] * len(steps)
    assert [s["losses"]["optG"] for s in steps] == pytest.approx([truth[s["step"]]["loss_g"] for s in steps])
    assert [s["losses"]["optD"] for s in steps] == [s["loss"] for s in steps]


def test_two_optimizers_made_on_one_line_are_named_each_for_its_own_model(tmp_path):
    """``opt_d, opt_g = Adam(D...), Adam(G...)`` in a function: both were named from the first one looked up
    at that line, so the discriminator's loss read "Generator2" beside the generator's "Generator"."""
    records, stdout, _ = run(tmp_path, "optimizers_on_one_line")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss_d")
    assert [sorted(s["losses"]) for s in steps] == [["Discriminator", "Generator"]] * len(steps)
    assert [s["losses"]["Generator"] for s in steps] == pytest.approx([truth[s["step"]]["loss_g"] for s in steps])


def test_a_burst_of_updates_after_the_primarys_step_gives_its_last_loss_to_that_step(tmp_path):
    """SAC with CleanRL's policy_frequency: the actor steps three times every fourth critic step. Its first
    loss went with the critic's step, its last with the next step (where the actor did not step), and the one
    between was lost. Now the step has the burst's last loss, the one the script logs."""
    records, stdout, _ = run(tmp_path, "burst_updates")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss")
    actor = {s["step"]: s["losses"]["actor_optimizer"] for s in steps if "actor_optimizer" in s.get("losses", {})}
    assert actor == pytest.approx({step: t["actor"] for step, t in truth.items() if "actor" in t})


def test_an_optimizer_stepping_another_inside_its_step_is_one_optimizer_with_the_loss(tmp_path):
    """ZeroRedundancyOptimizer steps the AdamW it wraps from its own step(): the inner step had taken the loss
    as a second optimizer's, and the step's own loss was empty (every step, on every rank)."""
    records, stdout, _ = run(tmp_path, "zero_optimizer", options=("--budget", "0"))
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_as_the_script(steps, truth, "loss", "grad_norm", "lr")
    assert not any(s.get("losses") for s in steps)


def test_a_side_models_loss_goes_with_the_step_it_followed_from_its_first(tmp_path):
    """A probe stepped after the autoencoder every 5th iteration: its first loss went with the next step's
    record (step 5, not 4), since the record it followed had gone before anyone knew the probe steps after."""
    records, stdout, _ = run(tmp_path, "side_probe", "--after")
    truth = truth_of(stdout)
    assert_same(steps_of(records), truth, "loss", "loss")
    probe = [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("PROBE ")]
    sides = {
        s["step"]: s["losses"]["probe_optimizer"] for s in steps_of(records) if "probe_optimizer" in s.get("losses", {})
    }
    assert sides == pytest.approx({p["step"]: p["loss"] for p in probe})


def test_a_new_optimizer_made_mid_run_takes_over_and_the_old_one_is_let_go(tmp_path):
    """A fine-tune that makes a new optimizer at a phase change: optwatch recorded no step after it (the run
    looked frozen at its last step), an lr command was never applied, and the dropped optimizer's state was
    kept alive. Now the new optimizer's steps are the run's steps."""
    records, stdout, _ = run(tmp_path, "recreated_optimizer", options=("--control", "lr*=0.5@40"))
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_as_the_script(steps, truth, "loss", "grad_norm", "lr")
    assert truth[40]["lr"] == pytest.approx(truth[39]["lr"] / 4)  # the schedule's halving, and the command's
    [event] = [r for r in records if r["kind"] == "event"]
    assert event["status"] == "accepted" and event["effective_step"] == 40
    [old] = [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("OLD_OPTIMIZER ")]
    assert old == {"alive": False}
    assert not [s for s in steps if s.get("new_model")]  # the same model: its gradient baselines stand


def test_lr_scaled_on_a_split_model_scales_both_optimizers_and_holds_against_the_schedule(tmp_path):
    """lr*=0.5 on a Muon + AdamW run moved Muon's rate alone (the event said "the run's other optimizers keep
    theirs"): half the model trained at the old rate. Both rates are halved from the command's step, and
    held so against the script's own schedule, which assigns both every step."""
    records, stdout, _ = run(tmp_path, "split_optimizers", options=("--control", "lr*=0.5@10"))
    truth = truth_of(stdout)
    for step, seen in truth.items():
        factor = 0.5 if step >= 10 else 1.0
        assert seen["muon_lr"] == pytest.approx(0.02 * seen["scheduled"] * factor, rel=1e-9), step
        assert seen["adam_lr"] == pytest.approx(3e-3 * seen["scheduled"] * factor, rel=1e-9), step
    [event] = [r for r in records if r["kind"] == "event" and r["command"] == "lr*=0.5"]
    assert event["status"] == "accepted" and event["effective_step"] == 10
    assert "muon group 0: " in event["reason"] and "adam group 0: " in event["reason"], event["reason"]


def test_a_slower_optimizer_stepping_first_on_the_one_loss_leaves_the_step_its_loss(tmp_path):
    """An autoencoder's decoder optimizer steps every second iteration, before the encoder's (the primary),
    on the same backward: it took the loss, and every second step had none ("Loss -" in the header, the
    wrong last loss in `optwatch runs`). Both optimizers step on the one loss, and the step has it."""
    records, stdout, _ = run(tmp_path, "two_rates")
    assert_as_the_script(steps_of(records), truth_of(stdout), "loss")


@pytest.mark.parametrize("order", ["muon first", "adamw first", "zero_grad after each"])
def test_optimizers_that_split_one_model_step_it_together(tmp_path, order):
    """Muon for the blocks' matrices and AdamW for the rest, both stepping on one backward (modded-nanogpt;
    torch.optim.Muon takes matrices only): the gradient norm was Muon's part alone (0.29 where the script's
    was 0.48), the layers were "(unnamed).0" to ".7" (no module holds Muon's parameters and nothing else),
    AdamW's parameters had no update ratio, and the loss came again as a "muon" loss beside it. From the
    second step on (the first shows the first optimizer to step: the other is not known yet) the step is the
    two optimizers' together, as the script computes its figures. The first step's layers were "(unnamed)",
    a row left empty in the Gradients tab for the whole run."""
    args = {"muon first": [], "adamw first": ["--adam-first"], "zero_grad after each": ["--zero-between"]}[order]
    records, stdout, _ = run(tmp_path, "split_optimizers", *args, options=("--budget", "0"))
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert [s["step"] for s in steps] == sorted(truth)
    assert [s["loss"] for s in steps] == pytest.approx([truth[s["step"]]["loss"] for s in steps], rel=1e-6)
    later = steps[1:]
    assert [s["grad_norm"] for s in later] == pytest.approx([truth[s["step"]]["grad_norm"] for s in later], rel=1e-5)
    assert not [s for s in steps if "losses" in s]
    layers = [r for r in records if r["kind"] == "layers" and r["step"] >= 1]
    assert layers and {tuple(r["names"]) for r in layers} == {tuple(truth[0]["updates"])}
    # The first step's layers (the primary's alone) are named as the model names them, as the later ones.
    [first] = [r for r in records if r["kind"] == "layers" and r["step"] == 0]
    assert set(first["names"]) < set(truth[0]["updates"]) and first["names"], first["names"]
    compared = set()
    for record in layers:
        truth_updates = truth[record["step"]]["updates"]
        for name, norm, at in zip(record["names"], record["update_norm"], record["updated_at"]):
            if norm is not None and at == record["step"]:
                assert norm == pytest.approx(truth_updates[name], rel=1e-4, abs=1e-9), (record["step"], name)
                compared.add(name)
    assert {"embed.weight", "head.weight", "blocks.0.fc.weight", "blocks.1.norm.bias"} <= compared


def test_each_fold_of_a_k_fold_run_is_watched_with_its_new_model_and_optimizer(tmp_path):
    """Three folds, each a new model and a new optimizer: the first fold's optimizer stayed the primary
    (optwatch held it alive), so the run's records stopped after the first fold (114 of 342 steps in a tester's
    run) and the final line was fold 0's. Once the script drops an optimizer, the next one to step takes
    over, and its model is found again for the layers' names."""
    # (Folds of 3 s: a new model is looked for where that walk takes at most a twentieth of the time.)
    records, stdout, _ = run(tmp_path, "k_fold", "--sleep", "0.15", options=("--budget", "0"))
    truth = truth_of(stdout)
    assert_as_the_script(steps_of(records), truth, "loss", "grad_norm", "lr")
    last_fold = min(step for step, t in truth.items() if t["fold"] == 2)
    late = [r for r in records if r["kind"] == "layers" and r["step"] >= last_fold]
    assert late and set(late[-1]["names"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}


@pytest.mark.parametrize("budget", [(), ("--budget", "0")], ids=["default budget", "every check"])
def test_each_trial_of_a_search_is_diagnosed_against_its_own_baselines(tmp_path, budget):
    """A new trial's first losses, against the converged last trial's baselines, read as "exploding" (an error,
    "loss 16.9 is 166x its median 0.102", at the first step of every trial). The first step of a new model
    with a new optimizer, the old ones dropped, says so, and the diagnosis starts over."""
    import json

    records, stdout, _ = run(tmp_path, "trials", "--steps", "200", options=budget)
    starts = [
        json.loads(line.removeprefix("TRIAL "))["first_step"]
        for line in stdout.splitlines()
        if line.startswith("TRIAL ")
    ]
    assert starts == [0, 200, 400]
    assert [s["step"] for s in steps_of(records) if s.get("new_model")] == starts[1:]
    assert [a for a in records if a["kind"] == "alert"] == []


def test_optimizer_in_backward_has_the_whole_models_gradient_norm(tmp_path):
    """One optimizer per parameter stepped from gradient hooks inside backward(), each gradient freed after its
    step (torchtune's optimizer-in-backward): the norm was the first hooked parameter's alone (0.034 for 1.24)
    at every step, and a NaN in another parameter's gradient went unseen until the loss was NaN a step later.
    Each optimizer's share is taken at its own step; the first step, before the optimizers are known to step
    together, has the first one's part, as split optimizers' first step has."""
    records, stdout, _ = run(
        tmp_path, "optimizer_in_backward", "--steps", "40", "--nan-at", "30",
        options=("--budget", "0", "--control", "lr=1e-4@5"),
    )  # fmt: skip
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert [s["step"] for s in steps] == sorted(truth)
    assert_same(steps[:31], {s: t for s, t in truth.items() if s <= 30}, "loss", "loss")  # (NaN after 30)
    assert 0 < steps[0]["grad_norm"] < truth[0]["grad_norm"]
    assert [r for r in records if r["kind"] == "hello"][-1]["device"] == "cpu"  # (announced at the first step)
    assert_same(steps[1:30], {s: t for s, t in truth.items() if 1 <= s < 30}, "grad_norm", "grad_norm")
    [alert] = [a for a in records if a["kind"] == "alert"][:1]
    assert (alert["type"], alert["step"]) == ("nonfinite", 30), alert
    assert "after lr=1e-4" not in alert["message"]  # (a lowered rate is not what blew up)
    # Each optimizer is named after the one parameter it trains (they were "4", "42", "2", "22"...).
    [event] = [e for e in records if e["kind"] == "event"]
    assert event["reason"].startswith("4.bias group 0: 0.001 at step 4 -> 0.0001;"), event["reason"]


@pytest.mark.parametrize("weighted", [False, True])
def test_two_losses_backpropagated_in_one_call_are_the_steps_loss(tmp_path, weighted):
    """torch.autograd.backward([loss_a, loss_b]) backpropagates their sum: it was no loss at all ("loss -"
    on every step). Weighted by the script's grad_tensors, the loss is still not said (what was
    backpropagated is no one number the script has), and the gradient norm is."""
    records, stdout, _ = run(tmp_path, "multi_loss", *(["--weighted"] if weighted else []))
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "grad_norm", "grad_norm")
    if weighted:
        assert [s["loss"] for s in steps] == [None] * len(steps)
    else:
        assert_same(steps, truth, "loss", "loss", rel=1e-6)


@pytest.mark.parametrize("wrapped", [False, True], ids=["AdamW", "AdamW in Lookahead"])
def test_a_step_the_script_skips_leaves_its_loss_and_gradients_out_of_the_next(tmp_path, wrapped):
    """A NaN guard and a spike guard skip the optimizer's step and zero the gradients at the next batch: the
    skipped batch's loss was added to the next step's (a NaN, or 10x), its gradients were that step's
    per-layer norms, and a clean step got the alert. Through a Lookahead wrapper's zero_grad as well (taken
    for SAM's at first: the skipped batch's loss, 100x, went to the next step)."""
    records, stdout, stderr = run(tmp_path, "skipped_steps", *(["--lookahead"] if wrapped else []),
                                  options=("--budget", "0"))  # fmt: skip
    truth = truth_of(stdout)
    skipped = [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("SKIPPED ")]
    assert {s["why"] for s in skipped} == {"nan", "spike"}
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss")
    assert_same(steps, truth, "grad_norm", "grad_norm")
    # Each step's layers are its own gradients: together, the norm the script's clip gave.
    layers = {r["step"]: r for r in records if r["kind"] == "layers"}
    after_a_skip = {s["before_step"] for s in skipped}
    assert after_a_skip <= set(layers)
    for step in after_a_skip:
        together = math.sqrt(sum(n * n for n in layers[step]["grad_norm"]))
        assert together == pytest.approx(truth[step]["grad_norm"], rel=1e-4), step
    assert not [r for r in records if r["kind"] == "alert"], stderr[-2000:]


@pytest.mark.parametrize("where", ["before", "between"])
def test_the_loops_own_work_around_the_forward_is_not_the_forward(tmp_path, where):
    """With no DataLoader, the forward was timed from the step's start to backward(): the loop's own work
    before it (noise drawn, bookkeeping, an EMA update) and after it (nanoGPT's get_batch making the next
    batch: 31.8 ms of a 7.7 ms forward) was "forward", and a loop spending most of its time there was
    "compute-bound: train on a GPU". The forward now runs from the step's first module call to the last return
    of a module the loop calls."""
    args = [] if where == "before" else ["--work", "0", "--between", "60000"]
    records, stdout, _ = run(tmp_path, "loop_work", *args)
    truth = truth_of(stdout)
    detailed = [s for s in steps_of(records) if s["detailed"] and s["step"] >= 2]
    forward = statistics.median(s["forward_s"] for s in detailed)
    script_forward = statistics.median(truth[s["step"]]["forward_s"] for s in detailed)
    script_work = statistics.median(truth[s["step"]]["work_s" if where == "before" else "between_s"] for s in detailed)
    assert script_work > 4 * script_forward  # the loop's own work is most of the step
    assert forward < script_forward + 0.0005, (forward, script_forward, script_work)
    [verdict] = [r for r in records if r["kind"] == "verdict" and r.get("final")][-1:]
    assert verdict["bottleneck"] == "host", verdict["message"]
    assert "outside data loading, forward, backward and optimizer" in verdict["message"]


def test_after_a_batch_the_loop_skips_the_next_ones_wait_is_not_the_forward(tmp_path):
    """A loop that catches its model's exception on a bad batch and takes the next: the failed call's start
    stayed the forward's, so the next batch's wait (3.7 ms) was in forward_s as well as in data_wait_s, and
    the phases added up to more than the step."""
    records, stdout, _ = run(tmp_path, "skipped_batches", options=("--budget", "0"))
    truth = truth_of(stdout)
    steps = {s["step"]: s for s in steps_of(records)}
    after_skip = [step for step, t in truth.items() if t["after_skip"] and step >= 2]
    assert len(after_skip) >= 10
    for step in after_skip:
        assert steps[step]["forward_s"] < truth[step]["forward_s"] + 0.0005, (step, steps[step], truth[step])


def test_a_batch_taken_between_the_forward_and_backward_leaves_the_forward_whole(tmp_path):
    """nanoGPT's order with a DataLoader: the next batch is taken after the forward, before backward(). The
    batch's arrival moved the forward's start: the forward read 0.06 ms of a 2.6 ms one (its time was
    "other"), and a fine-tune spending 90% of its step in the forward was "host-bound". The wait for that
    batch is the data wait's, not the forward's."""
    records, stdout, _ = run(tmp_path, "loop_work", "--prefetch", "--work", "0", "--width", "4096")
    truth = truth_of(stdout)
    detailed = [s for s in steps_of(records) if s["detailed"] and s["step"] >= 2]
    forward = statistics.median(s["forward_s"] for s in detailed)
    script_forward = statistics.median(truth[s["step"]]["forward_s"] for s in detailed)
    assert script_forward > 0.001  # a forward worth the name
    assert 0.8 * script_forward < forward < script_forward + 0.0005, (forward, script_forward)


def test_a_backbone_frozen_on_purpose_does_not_vanish(tmp_path):
    """After the backbone is frozen, zero_grad(set_to_none=False) leaves its layers gradients of zeros: they
    were measured as layers of the step, and the run got "gradients vanish in 5 of 6 layers"."""
    records, stdout, stderr = run(tmp_path, "freeze_later", options=("--budget", "0"))
    truth = truth_of(stdout)
    assert_same(steps_of(records), truth, "grad_norm", "grad_norm")
    assert not [r for r in records if r["kind"] == "alert"], stderr[-2000:]
    frozen = [r for r in records if r["kind"] == "layers" and r["step"] >= 60]
    assert frozen and all(r["names"] == ["10.weight", "10.bias"] for r in frozen)


def test_a_backbone_added_to_the_optimizer_later_is_named_as_the_model_names_it(tmp_path):
    """The head trained first, the backbone added by add_param_group: the model found at the first step was
    the head, and the backbone's layers were '(unnamed).2' ... '(unnamed).5', one row before the head."""
    records, _, _ = run(tmp_path, "head_first", options=("--budget", "0"))
    layers = [r for r in records if r["kind"] == "layers" and r["step"] >= 22]
    assert layers and all(
        r["names"] == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"] for r in layers
    )


def test_every_layer_gets_its_update_ratio_when_the_set_of_gradients_changes(tmp_path):
    """A sparse embedding's gradient made the layout of the measured parameters new at every step, and so did
    experts idle in turn: the update ratios' turn began again at the first chunk each time, and the last
    layers (fc2, two of the experts) never got one in a whole run."""
    records, _, _ = run(tmp_path, "changing_gradients", options=("--budget", "0"))
    measured: dict[str, int] = {}
    for layers in (r for r in records if r["kind"] == "layers"):
        for name, at in zip(layers["names"], layers["updated_at"]):
            if at == layers["step"]:
                measured[name] = measured.get(name, 0) + 1
    dense = ["inp", "experts.0", "experts.1", "experts.2", "experts.3", "out"]
    assert sorted(measured) == sorted(f"{layer}.{kind}" for layer in dense for kind in ("weight", "bias"))
    assert min(measured.values()) >= 10, measured  # 120 steps, the update ratios of about 1/8 at each


@pytest.mark.parametrize("mode", ["zipped", "validation", "autograd.grad"])
def test_a_step_of_two_loaders_counts_both_batches_and_gets_a_verdict(tmp_path, mode):
    """A semi-supervised loop zips a labelled and an unlabelled loader into one backward(): the labelled
    batches were "evaluation" batches at every step, the samples were the unlabelled ones alone, and since the
    verdict leaves out steps with an evaluation, the run never got one. Gradients from torch.autograd.grad
    (no backward()) left every batch unconsumed, with the same result. A validation batch taken every N
    steps with gradients on stays an evaluation's."""
    args = {"zipped": [], "validation": ["--validate-every", "10"], "autograd.grad": ["--autograd-grad"]}[mode]
    records, stdout, _ = run(tmp_path, "two_loaders", *args)
    truth = truth_of(stdout)
    steps = steps_of(records)[1:]  # (the first step cannot tell a second loader from a validation batch)
    assert_same(steps, {s["step"]: truth[s["step"]] for s in steps}, "samples", "samples")
    with_evaluation = [s["step"] for s in steps if s.get("eval_batches")]
    assert with_evaluation == (list(range(10, 150, 10)) if mode == "validation" else [])
    [final] = [r for r in records if r["kind"] == "verdict" and r.get("final")]
    assert final["window"][1] == 149, final


@pytest.mark.parametrize("layout", ["sequence-first", "packed"])
def test_the_samples_of_a_sequence_batch_are_its_sequences(tmp_path, layout):
    """A recurrent layer's default batch is (T, B), and a PackedSequence's data is its tokens: the samples
    were the padded length (0.6x the sequences) or the tokens (16x), and so was the throughput."""
    records, stdout, _ = run(tmp_path, "sequence_batches", *(["--packed"] if layout == "packed" else []))
    steps = steps_of(records)
    truth = truth_of(stdout)
    assert_same(steps, truth, "samples", "samples")
    assert_same(steps, truth, "loss", "loss")


def test_lbfgs_records_the_first_evaluation_of_each_step(tmp_path):
    records, stdout, _ = run(tmp_path, "lbfgs")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss", rel=1e-6)
    assert_same(steps, truth, "grad_norm", "grad_norm")
    assert_same(steps, truth, "samples", "samples")
    assert any(t["evaluations"] > 1 for t in truth.values())  # the closure ran several times a step


@pytest.mark.parametrize("every_micro", [False, True], ids=["clip-at-the-step", "clip-every-micro-batch"])
def test_accumulation_sums_the_loss_and_the_norm_is_the_one_before_clipping(tmp_path, every_micro):
    """With a clip after every micro-batch (a slip accelerate's docs warn of), the step's norm was the first
    clip's, of one micro-batch's gradients (0.46 where the script's last clip said 0.98), and so were the
    layers' norms: they make up the norm the script's last clip gives (by hand: the root of their squares)."""
    records, stdout, _ = run(tmp_path, "accumulate", *(["--clip-every-micro"] if every_micro else []))
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss")
    assert_same(steps, truth, "grad_norm", "grad_norm")
    assert_same(steps, truth, "samples", "samples")
    assert {s["clip_max_norm"] for s in steps} == {0.25}
    assert all(t["grad_norm"] > t["grad_norm_after_clip"] for t in truth.values())  # the clip bites
    layers = {r["step"]: r["grad_norm"] for r in records if r["kind"] == "layers"}
    assert len(layers) >= 10
    for step, norms in layers.items():
        assert math.sqrt(sum(n * n for n in norms)) == pytest.approx(truth[step]["grad_norm"], rel=1e-4), step


@pytest.mark.parametrize("how", ["subset", "parts", "twice", "inf"])
def test_the_norm_is_the_whole_models_before_any_clip_however_the_script_clips(tmp_path, how):
    """A clip of a part only gave that part's norm, two clips of two parts the second part's, a clip after a clip
    the clipped gradients' norm, a clip by the inf-norm none at all: every step, every check on."""
    records, stdout, _ = run(tmp_path, "clip_variants", "--how", how, options=("--budget", "0"))
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert sorted(truth) == list(range(30))
    # Every layer from the first step on, by its name, though the clip (of a part) came before the first
    # optimizer step: the first layers record was the clipped part's, named "(unnamed).0" and on.
    names = {tuple(r["names"]) for r in records if r["kind"] == "layers"}
    assert names == {("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")}
    assert_as_the_script(steps, truth, "grad_norm")
    if how == "twice":
        assert {s["clip_max_norm"] for s in steps} == {0.5}
    else:  # (no one clip of them all: no claim of how often it cut them)
        assert all(s.get("clip_max_norm") is None for s in steps)


@pytest.mark.parametrize("how", ["parts", "other"])
def test_between_detail_steps_a_clips_norm_is_the_steps_only_when_it_is_of_the_steps_gradients(tmp_path, how):
    """Past the first 100 steps most steps take their norm from the script's clip: two clips of two parts give it
    whole at every step; a second model's clip (a critic's) is not the first model's norm."""
    records, stdout, _ = run(tmp_path, "clip_variants", "--how", how, "--steps", "160")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert [s["step"] for s in steps] == list(range(160))
    assert any(s["detail_every"] > 1 for s in steps[100:])  # (thinned: light steps there)
    shown = [s for s in steps if s.get("grad_norm") is not None]
    assert [s["grad_norm"] for s in shown] == pytest.approx([truth[s["step"]]["grad_norm"] for s in shown], rel=1e-5)
    if how == "parts":
        assert len(shown) == 160


def test_evaluation_batches_are_no_steps_samples(tmp_path):
    records, stdout, _ = run(tmp_path, "eval_between")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "samples", "samples")
    assert_same(steps, truth, "loss", "loss")
    evaluated = {s["step"] for s in steps if s.get("eval_batches")}
    assert evaluated == {5, 10, 15}  # the evaluation after step 4 falls in step 5's time, and so on
    assert {s["eval_batches"] for s in steps if s.get("eval_batches")} == {2}


def test_without_an_optimizer_each_step_has_its_own_loss_and_norm_before_clipping(tmp_path):
    records, stdout, _ = run(tmp_path, "no_optimizer")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss")
    assert_same(steps, truth, "grad_norm", "grad_norm")
    hellos = [r for r in records if r["kind"] == "hello" and r.get("device")]
    assert hellos and hellos[-1]["device"] == "cpu"


def test_without_an_optimizer_a_spaced_detail_steps_forward_is_unknown_not_near_zero(tmp_path):
    """Past step 100 the checks are spaced; a step here ends at the next backward(), after the next step's
    forward ran, so a detail step's forward was the microseconds since its start (0.05 ms of a 0.7 ms forward,
    by the script's own clock), and a compute-bound loop read as "host-bound: 51% outside the phases"."""
    records, stdout, _ = run(tmp_path, "no_optimizer", "--steps", "300")
    truth = truth_of(stdout)
    detailed = [s for s in steps_of(records) if s.get("detailed") and s["step"] >= 2]
    assert any(s["step"] > 110 for s in detailed)  # (spaced detail steps past the first 100)
    timed = [s for s in detailed if s["forward_s"] is not None]
    # (The median step's: a busy machine's slice between the script's clock and the forward's own start makes
    # one step's script figure several times the forward's.)
    ratios = [s["forward_s"] / truth[s["step"]]["forward_s"] for s in timed]
    assert timed and statistics.median(ratios) >= 0.8, [
        (s["step"], s["forward_s"], truth[s["step"]]["forward_s"]) for s in timed
    ]


def test_a_scripts_own_learning_rate_schedule_is_recorded_and_an_lr_command_holds_against_it(tmp_path):
    """nanoGPT assigns its warmup/cosine rate to every param group at each iteration: `lr=V@N` makes step N
    use V, and the script's later values are scaled by the same factor (the command holds until the next)."""
    records, stdout, stderr = run(tmp_path, "manual_lr", options=("--control", "lr=0.01@12"))
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert_same(steps, truth, "lr", "lr", rel=1e-12)  # the lr each update used, as the script saw it
    assert all(truth[s]["lr"] == truth[s]["script_lr"] for s in range(12))
    assert truth[12]["lr"] == pytest.approx(0.01, rel=1e-12)
    factor = 0.01 / truth[12]["script_lr"]
    assert [truth[s]["lr"] for s in range(13, 30)] == pytest.approx(
        [truth[s]["script_lr"] * factor for s in range(13, 30)], rel=1e-12
    )
    [event] = [r for r in records if r["kind"] == "event"]
    assert event["effective_step"] == 12 and "rates the script assigns are scaled" in event["reason"]
    # A loop that logs its rate after backward(), before the update, logs the rate used: it logged its own
    # unscaled value at every step from 12 on.
    assert [truth[s]["logged_lr"] for s in range(30)] == pytest.approx([truth[s]["lr"] for s in range(30)], rel=1e-12)


@pytest.mark.parametrize("steps", [1, 6])
def test_every_step_of_a_short_run_reaches_the_record(tmp_path, steps):
    """Runs of a few steps lost their records now and then: each is run twice, and every time the record
    must hold the hello, every step and the end."""
    for attempt in range(2):
        records, stdout, _ = run(tmp_path, "short", "--steps", str(steps))
        truth = truth_of(stdout)
        kinds = [r["kind"] for r in records]
        assert "hello" in kinds and kinds.count("end") == 1, (attempt, kinds)
        assert [r for r in records if r["kind"] == "verdict" and r["final"]], "a run of a few steps gets its verdict"
        assert_same(steps_of(records), truth, "loss", "loss", rel=1e-6)
        assert_same(steps_of(records), truth, "samples", "samples")


def test_a_script_failing_before_its_first_step_returns_at_once_with_its_code(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('starting')\nraise SystemExit(3)\n")
    import time

    started = time.monotonic()
    result = optwatch("run", "--headless", str(script))
    assert result.returncode == 3 and "starting" in result.stdout
    assert time.monotonic() - started < 8  # import torch alone takes a few seconds on this machine


def test_the_script_sees_what_python_gives_it(tmp_path):
    """`__file__`, `sys.argv`, `sys.path[0]` and `__main__` as with `python script.py`; a warning before the
    first step printed once and pointing at the script; a traceback that starts at the script."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "helper_module.py").write_text("VALUE = 7\n")
    script = folder / "look.py"
    script.write_text(
        "import os, sys, warnings, json\n"
        "import helper_module\n"
        "import torch\n"
        "warnings.warn('before the first step')\n"
        "model = torch.nn.Linear(2, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for _ in range(2):\n"
        "    opt.zero_grad(); model(torch.ones(1, 2)).sum().backward(); opt.step()\n"
        "print(json.dumps({'file': __file__, 'argv': sys.argv, 'path0': sys.path[0], 'name': __name__,\n"
        "                  'listing': sorted(os.listdir(os.path.dirname(__file__))), 'helper': helper_module.VALUE,\n"
        "                  'main_is_me': sys.modules['__main__'].__dict__.get('opt') is opt}))\n"
        "raise ValueError('the end')\n"
    )
    bare = subprocess.run(
        [sys.executable, "look.py", "--flag"], cwd=folder, capture_output=True, text=True, env=dict(os.environ)
    )
    watched = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", "look.py", "--flag"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert bare.returncode == watched.returncode == 1
    assert json.loads(watched.stdout.splitlines()[-1]) == json.loads(bare.stdout.splitlines()[-1])

    def script_lines(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if not line.startswith("optwatch:")]

    assert script_lines(watched.stderr) == script_lines(bare.stderr)  # the warning once, the same traceback
    assert script_lines(bare.stderr)[0].startswith(str(script)) and "before the first step" in bare.stderr
    assert "Traceback (most recent call last):" in watched.stderr and "runpy" not in watched.stderr


def test_a_script_that_does_not_compile_is_said_as_python_says_it(tmp_path):
    """A syntax error in the script showed a traceback through optwatch's launcher (launch.py, run_script,
    _run_as_main) before it: a user read it as optwatch failing. python shows the line and the error alone."""
    (tmp_path / "broken.py").write_text("import os\n\ndef f(:\n    pass\n")
    bare = subprocess.run([sys.executable, "broken.py"], cwd=tmp_path, capture_output=True, text=True)
    watched = subprocess.run(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--no-record", "broken.py"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip
    assert bare.returncode == watched.returncode == 1
    shown = [line for line in watched.stderr.splitlines() if not line.startswith("optwatch:")]
    assert shown == bare.stderr.splitlines() and "SyntaxError" in bare.stderr, watched.stderr


@pytest.mark.xdist_group("rollouts")  # (timed: two pure-Python rollouts side by side slow each other)
def test_a_rollouts_policy_calls_are_not_the_training_steps_forward(tmp_path):
    """The rollout's hundreds of policy calls without gradients were timed as the next step's forward (150 ms of
    a 166 ms step), which made a PPO loop "compute-bound": the forward starts at the first call with
    gradients, and the rollout is the step's other work, as long as the script's own clock says."""
    record = tmp_path / "r.jsonl"
    script = [str(SCRIPTS / "rollouts.py"), "--iters", "4", "--env-work", "400"]
    result = optwatch("run", "--headless", "--budget", "0", "--record", str(record), *script)
    assert result.returncode == 0, result.stderr
    steps = {s["step"]: s for s in steps_of(read_jsonl(record))}
    iterations = [json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("ITER ")]
    for iteration in iterations[1:]:  # (the first step's forward is timed from the run's start)
        first = steps[iteration["first_step"]]
        timed = first["forward_s"] + first["backward_s"] + first["optimizer_s"] + (first.get("data_wait_s") or 0)
        assert first["forward_s"] < 0.1 * iteration["rollout_s"], (first["forward_s"], iteration["rollout_s"])
        assert first["step_time_s"] - timed == pytest.approx(iteration["rollout_s"], rel=0.25)


def test_a_distillations_teachers_are_its_forward_however_many(tmp_path):
    """Four teachers, each called once without gradients before the student: past three such calls the
    forward was taken to start at the student's (the teachers' time, most of the step, was "other work").
    A module called again and again without gradients is a loop's (a rollout's); teachers called once, or on
    the batch in halves, are the forward."""
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--budget", "0", "--record", str(record), str(SCRIPTS / "distillation.py"))
    assert result.returncode == 0, result.stderr
    steps = {s["step"]: s for s in steps_of(read_jsonl(record))}
    truth = [json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("STEP ")]
    ratios = sorted(steps[t["step"]]["forward_s"] / t["forward_s"] for t in truth[2:])  # (the first from the start)
    assert 0.8 < ratios[len(ratios) // 2] < 1.25, ratios


@pytest.mark.xdist_group("rollouts")  # (timed: two pure-Python rollouts side by side slow each other)
def test_a_ppo_loops_rollouts_are_named_with_the_share_the_script_itself_times(tmp_path):
    """A real PPO-shaped loop under `optwatch run`: the final verdict says that 1 step in 16 carries a
    rollout, and gives its share of the time as the script's own clock does over the same steps."""
    record = tmp_path / "r.jsonl"
    script = [str(SCRIPTS / "rollouts.py"), "--iters", "20", "--env-work", "800"]
    result = optwatch("run", "--headless", "--record", str(record), *script)
    assert result.returncode == 0, result.stderr
    [final] = [r for r in read_jsonl(record) if r["kind"] == "verdict" and r["final"]]
    first, last = final["window"]
    iterations = [json.loads(line[5:]) for line in result.stdout.splitlines() if line.startswith("ITER ")]
    inside = [i for i in iterations if first <= i["first_step"] and i["first_step"] + i["steps"] - 1 <= last]
    timed_by_script = sum(i["rollout_s"] for i in inside) / sum(i["rollout_s"] + i["update_s"] for i in inside)
    assert final["bottleneck"] == "host" and final["message"].startswith("1 step in 16 takes "), final
    long = [(s["step"], s["step_time_s"], s.get("core_wait_s"), s["optwatch_s"]) for s in steps_of(read_jsonl(record))
            if first <= s["step"] <= last and s["step_time_s"] > 0.01]  # fmt: skip
    assert final["evidence"]["between_share"] == pytest.approx(timed_by_script, abs=0.08), (final["evidence"], long)


@pytest.mark.parametrize("alone", [False, True], ids=["beside a dense head", "SparseAdam alone"])
def test_a_sparse_embeddings_gradient_counts_in_the_norm(tmp_path, alone):
    """SparseAdam's embedding: its sparse gradient was left out of the global norm (1.418 where the dense
    gradients' norm is 1.420), and with SparseAdam alone there was no norm at all. (Beside a head's Adam, the
    first step's norm is SparseAdam's part: the other optimizer is known from its first step, as for Muon.)"""
    records, stdout, _ = run(tmp_path, "sparse_embedding", *(["--alone"] if alone else []))
    steps = steps_of(records)
    assert len(steps) == 20
    assert_as_the_script(steps, truth_of(stdout), "loss")
    truth = {step: seen for step, seen in truth_of(stdout).items() if alone or step > 0}
    assert_as_the_script([s for s in steps if s["step"] in truth], truth, "grad_norm")


@pytest.mark.parametrize("shape, micro", [("1", 1), ("1,1", 1), ("1", 2)])
def test_a_loss_of_one_number_in_a_shape_is_the_steps_loss(tmp_path, shape, micro):
    """`.mean(dim=0)` of a (B, 1) error is a loss of shape (1,), which backward() takes as a scalar: the run
    had no step record at all (the loss went out as a list, which the hub refused), and said nothing."""
    records, stdout, _ = run(tmp_path, "loss_shapes", "--shape", shape, "--micro", str(micro))
    steps = steps_of(records)
    assert len(steps) == 12
    assert_as_the_script(steps, truth_of(stdout), "loss")


@pytest.mark.parametrize("collate", ["list", "detection", "made"])
def test_a_batch_the_scripts_collate_fn_makes_counts_its_samples(tmp_path, collate):
    """`collate_fn=lambda b: b` (variable-length sequences) and a detection model's `tuple(zip(*b))` (images of
    different sizes): `samples` was the first sequence's length, or an image's 3 channels, where the batch
    held 8 samples (samples/s half or a fifth of the truth). The loader's own sampler says how many it drew;
    not for batches made beforehand and unwrapped one at a time (`batch_size=1`), whose shapes say it."""
    records, stdout, _ = run(tmp_path, "custom_collate", "--collate", collate)
    truth = truth_of(stdout)
    assert {t["samples"] for t in truth.values()} == ({8, 2} if collate != "made" else {8, 6})
    assert_as_the_script(steps_of(records), truth, "samples", "loss")


def test_sam_has_its_first_passs_loss_and_the_gradient_its_step_applies(tmp_path):
    """SAM's two passes a step: the loss was the second pass's at step 0 (SAM's zero_grad between them taken
    for a skipped batch) and both passes' sum from step 1 on (3.33 for a loss of 1.65), the chart doubling
    at step 1. It is the first pass's loss, as under SAM's step(closure) and as its users log it."""
    records, stdout, _ = run(tmp_path, "sam")
    steps = steps_of(records)
    assert len(steps) == 30
    assert_as_the_script(steps, truth_of(stdout), "loss", "grad_norm")


def test_sam_in_its_readmes_closure_form_has_its_first_passs_loss(tmp_path):
    """`loss.backward(); optimizer.step(closure)`, the closure the second pass: the loss was both passes' sum
    (3.27 where the script's loss was 1.62)."""
    records, stdout, _ = run(tmp_path, "sam", "--closure")
    steps = steps_of(records)
    assert len(steps) == 30
    assert_as_the_script(steps, truth_of(stdout), "loss", "grad_norm")


def test_a_wgan_critics_loss_takes_the_sign_its_backward_is_weighed_by(tmp_path):
    """caogang/wgan-gp's `D_real.backward(mone)`: optwatch said D_real + D_fake + gp (0.175 where the script's
    D_cost was -0.001), and the generator's loss with its sign turned. What is minimised is -D_real."""
    records, stdout, _ = run(tmp_path, "wgan_gp")
    truth = truth_of(stdout)
    steps = steps_of(records)
    assert len(steps) == 40
    assert_same(steps, truth, "loss", "d_cost")
    generator = {s["step"]: s["losses"]["opt_g"] for s in steps if "opt_g" in (s.get("losses") or {})}
    assert generator == pytest.approx({s: t["g_cost"] for s, t in truth.items() if "g_cost" in t})
    assert sorted(generator) == [4, 9, 14, 19, 24, 29, 34, 39]
