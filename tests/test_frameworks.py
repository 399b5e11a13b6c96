"""The real Hugging Face Trainer and PyTorch Lightning under `optwatch run`, and started with plain `python`
with optwatch's callback: optwatch's numbers per step are the ones the framework itself logs (its loss, its
pre-clip gradient norm) and sees (the samples of its training batches), however it accumulates, clips,
evaluates and prefetches.

The frameworks come with the ``frameworks`` extra (``scripts/setup.sh`` installs it).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import SCRIPTS, live_jobs, optwatch, read_jsonl, steps_of, wait_for
from test_right_numbers import assert_same, truth_of


def run_framework(
    tmp_path, script: str, *options: str, args: tuple[str, ...] = ()
) -> tuple[list[dict], dict[int, dict], str]:
    record = tmp_path / f"{script}.jsonl"
    script_path = str(SCRIPTS / f"{script}.py")
    result = optwatch("run", "--headless", "--record", str(record), *options, script_path, *args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_jsonl(record), truth_of(result.stdout, "FRAMEWORK_STEP"), result.stdout


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the frameworks extra is not installed")
def test_the_hugging_face_trainer_with_accumulation_clipping_and_evaluation(tmp_path):
    records, truth, stdout = run_framework(tmp_path, "hf_trainer")
    steps = steps_of(records)
    assert len(truth) == 20
    assert_same(steps, truth, "loss", "loss")  # the sum of 4 micro-batches, as the Trainer logs it
    assert_same(steps, truth, "grad_norm", "grad_norm")  # before accelerate clips (get_total_norm path)
    assert_same(steps, truth, "samples", "samples")  # 4 x 4: no evaluation batch, no look-ahead twice
    assert_same(steps, truth, "lr", "lr", rel=1e-9)
    assert {s["clip_max_norm"] for s in steps} == {1.0}
    assert any(t["grad_norm"] > 1.0 for t in truth.values())  # clipping bites at some steps
    evaluated = [json.loads(line.split(" ", 1)[1])["after_step"] for line in stdout.splitlines()
                 if line.startswith("FRAMEWORK_EVAL ")]  # fmt: skip
    assert evaluated and {s["step"] for s in steps if s.get("eval_batches")} >= {a + 1 for a in evaluated if a < 19}


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the frameworks extra is not installed")
def test_an_lr_command_moves_the_trainers_own_schedule_and_what_it_logs(tmp_path):
    """The Trainer makes its scheduler on accelerate's AcceleratedOptimizer, around the optimizer that steps:
    optwatch did not see that scheduler drive it, so the rate used at step 5 was 0.001 while the Trainer
    logged its old schedule, and a checkpoint carried that schedule on."""
    records, truth, _ = run_framework(tmp_path, "hf_trainer", "--control", "lr=0.001@5")
    steps = steps_of(records)
    assert truth[5]["lr"] == pytest.approx(0.001, rel=1e-9)  # the Trainer's own log
    assert_same(steps, truth, "lr", "lr", rel=1e-9)  # every step: what was used is what the Trainer logs
    [event] = [r for r in records if r["kind"] == "event"]
    assert "the scheduler's schedule goes on from the new level" in event["reason"]


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the frameworks extra is not installed")
def test_a_trainer_run_that_mostly_evaluates_is_said_so_with_the_share_the_trainer_times(tmp_path):
    """The verdict left out every step with an evaluation in its time: a Trainer spending most of its time
    evaluating was "compute-bound: train on a GPU". Now the evaluations' share is named, and it agrees with
    the Trainer's own eval_runtime over its train_runtime."""
    records, truth, stdout = run_framework(tmp_path, "hf_trainer", args=("--eval-sequences", "1600"))
    evaluations = [json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines()
                   if line.startswith("FRAMEWORK_EVAL ")]  # fmt: skip
    [verdict] = [r for r in records if r["kind"] == "verdict" and r.get("final")]
    first, last = verdict["window"]
    # By the Trainer's clocks over the verdict's steps: its log of each step comes before that step's
    # evaluation, which optwatch counts in the next step's time.
    spent = truth[last]["logged_at"] - truth[first - 1]["logged_at"]
    evaluating = sum(e["eval_runtime"] for e in evaluations if first - 1 <= e["after_step"] < last)
    assert evaluating / spent > 0.5  # the run mostly evaluates
    assert verdict["bottleneck"] == "host" and verdict["message"].startswith("evaluation takes "), verdict["message"]
    assert verdict["evidence"]["evaluation_share"] == pytest.approx(evaluating / spent, abs=0.08)


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_lightning_with_a_closure_clipping_and_validation(tmp_path):
    records, truth, _ = run_framework(tmp_path, "lightning_train")
    steps = steps_of(records)
    assert len(truth) == 24
    assert_same(steps, truth, "loss", "loss")
    assert_same(steps, truth, "grad_norm", "grad_norm")  # this step's, before gradient_clip_val cuts it
    assert_same(steps, truth, "samples", "samples")  # the sanity check and validation batches are not
    assert {s["clip_max_norm"] for s in steps} == {0.5}


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_a_stop_under_lightning_is_stopped_not_failed(tmp_path):
    """Lightning catches the stop's KeyboardInterrupt, shuts down gracefully and exits 1: the run was
    recorded "failed (exit 1)" and `optwatch run` exited 1, though it stopped as asked."""
    record = tmp_path / "r.jsonl"
    runs_dir = tmp_path / "runs"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "stop@10", str(SCRIPTS / "lightning_train.py"),
        env={**os.environ, "OPTWATCH_RUNS_DIR": str(runs_dir)}, timeout=240,
    )  # fmt: skip
    assert result.returncode == 130, result.stderr[-3000:]
    [end] = [r for r in read_jsonl(record) if r["kind"] == "end"]
    assert (end["steps"], end["exit_code"]) == (10, 130)
    [summary] = [json.loads(path.read_text()) for path in runs_dir.glob("*/run.json")]
    assert summary["status"] == "stopped", summary


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_a_resumed_lightning_gan_goes_on_at_the_step_lightning_logs(tmp_path):
    """Manual optimization with two optimizers: Lightning's global_step counts both (two a batch), its loggers
    count batches. Resumed after 10 batches, the callback started at global_step 20: every step 10 past the
    one Lightning logged, a gap of 10 in the curve, and `--control ...@N` landing elsewhere. Each optimizer's
    loss is named after the network it trains (both were "GAN", the LightningModule's class: "GAN" and
    "GAN2", which swapped with the callback)."""
    script = str(SCRIPTS / "lightning_gan.py")
    checkpoint = tmp_path / "gan.ckpt"
    first = optwatch("run", "--headless", "--no-record", script, "--callback", "--logs", str(tmp_path / "a"),
                     "--save", str(checkpoint), timeout=240)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    record = tmp_path / "resumed.jsonl"
    resumed = optwatch("run", "--headless", "--record", str(record), script, "--callback",
                       "--logs", str(tmp_path / "b"), "--resume", str(checkpoint), timeout=240)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open(tmp_path / "b" / "metrics.csv") as handle:
        logged = {int(row["step"]): row for row in csv.DictReader(handle) if row.get("d_loss")}
    assert sorted(logged) == list(range(10, 20))  # Lightning's own count of the resumed batches
    steps = steps_of(read_jsonl(record))
    assert [s["step"] for s in steps] == sorted(logged)
    assert [s["loss"] for s in steps] == pytest.approx([float(logged[s["step"]]["d_loss"]) for s in steps], rel=1e-5)
    assert [sorted(s["losses"]) for s in steps] == [["discriminator", "generator"]] * len(steps)
    assert [s["losses"]["generator"] for s in steps] == pytest.approx(
        [float(logged[s["step"]]["g_loss"]) for s in steps], rel=1e-5
    )


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_a_lightning_gan_that_toggles_its_optimizers_names_each_loss_after_its_network(tmp_path):
    """Lightning's toggle_optimizer sets the other network's parameters to requires_grad=False while one
    steps: the discriminator's loss was named "model" (the LightningModule's global name), its generator's
    "generator". Both are named after the network they train, as without the toggle."""
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), str(SCRIPTS / "lightning_gan.py"),
                      "--logs", str(tmp_path / "logs"), "--toggle", "--batches", "6", timeout=240)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "logs" / "metrics.csv") as handle:
        logged = {int(row["step"]): float(row["d_loss"]) for row in csv.DictReader(handle) if row.get("d_loss")}
    steps = steps_of(read_jsonl(record))
    assert [s["loss"] for s in steps] == pytest.approx([logged[s["step"]] for s in steps], rel=1e-5)
    assert {tuple(sorted(s["losses"])) for s in steps} == {("discriminator", "generator")}


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_an_lr_command_under_lightning_is_the_rate_its_own_monitor_logs(tmp_path):
    """Lightning's LearningRateMonitor reads the rate at the batch's start, before the optimizer's step where
    the command's rate was set: it logged 0.018 for a step that used 0.05. Now the rate is set when the
    step's first batch arrives, and from step 8 the schedule goes on from 0.05."""
    logs = tmp_path / "logs"
    records, truth, _ = run_framework(
        tmp_path, "lightning_train", "--control", "lr=0.05@8", args=("--schedule", "--logs", str(logs))
    )
    with open(logs / "metrics.csv") as handle:
        monitored = {int(row["step"]): float(row["lr-Adam"]) for row in csv.DictReader(handle) if row.get("lr-Adam")}
    steps = steps_of(records)
    assert truth[8]["lr"] == pytest.approx(0.05)  # what the optimizer used, read in on_before_optimizer_step
    assert_same(steps, truth, "lr", "lr", rel=1e-9)
    for step in range(len(truth)):
        assert monitored[step] == pytest.approx(truth[step]["lr"], rel=1e-9), step
    assert truth[9]["lr"] == pytest.approx(0.05 * 1.9 / 1.8)  # the schedule, scaled to pass through 0.05


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_a_validation_in_the_middle_of_an_accumulated_step_is_at_the_step_lightning_logs_it(tmp_path):
    """Three batches a step, a validation every 8 batches: most fall in the middle of a step, which
    Lightning's loggers tag with the step under way; optwatch tagged them with the one before. And the step's
    loss is its three batches' mean: Lightning runs the last in the optimizer's closure, which was taken for a
    second pass over the same batch (SAM's), so the loss left it out (1.43 for 1.97)."""
    logs = tmp_path / "logs"
    args = ("--callback", "--accumulate", "3", "--logs", str(logs), "--log-train")
    records, truth, _ = run_framework(tmp_path, "lightning_train", args=args)
    steps = steps_of(records)
    assert_same(steps, truth, "loss", "loss")
    assert_same(steps, truth, "grad_norm", "grad_norm")
    with open(logs / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    # Each value as often, and at the step, Lightning's own logger has it: the validation after an epoch
    # published the epoch's train_loss_epoch again, at its own step (a new tensor of the same value).
    for name in ("val_loss", "train_loss_epoch"):
        logged = [(int(row["step"]), float(row[name])) for row in rows if row.get(name)]
        published = [(r["step"], r["values"][name]) for r in records if r["kind"] == "metric" and name in r["values"]]
        assert len(logged) >= 2, name
        assert [step for step, _ in published] == [step for step, _ in logged], name
        assert [value for _, value in published] == pytest.approx([value for _, value in logged], rel=1e-6), name


def watched_with_the_callback(tmp_path, script: str) -> tuple[list[dict], dict[int, dict], str]:
    """``python SCRIPT --callback --bf16`` (no `optwatch run`; bfloat16 mixed precision, as people train), watched
    from another process with `optwatch attach`."""
    job = subprocess.Popen(
        [sys.executable, str(SCRIPTS / f"{script}.py"), "--callback", "--bf16"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        [listed] = wait_for(live_jobs, timeout_s=120)
        assert listed["script"].endswith(f"{script}.py")
        record = tmp_path / "attached.jsonl"
        attached = optwatch("attach", listed["run_id"], "--headless", "--record", str(record), timeout=180)
        assert attached.returncode == 0, attached.stderr[-2000:]
    finally:
        stdout, stderr = job.communicate(timeout=180)
    assert job.returncode == 0, stderr[-3000:]
    return read_jsonl(record), truth_of(stdout, "FRAMEWORK_STEP"), stdout


def framework_info(stdout: str) -> dict:
    return next(json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("FRAMEWORK_INFO "))


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="the frameworks extra is not installed")
def test_a_trainer_run_started_with_python_is_watchable_with_one_callback(tmp_path):
    records, truth, stdout = watched_with_the_callback(tmp_path, "hf_trainer")
    steps = steps_of(records)
    assert len(truth) == 20
    assert_same(steps, truth, "loss", "loss")  # attached from the start: the history holds every step
    assert_same(steps, truth, "grad_norm", "grad_norm")
    assert framework_info(stdout)["bf16"] and {s.get("precision") for s in steps} == {"bfloat16 autocast"}
    evaluations = [
        json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("FRAMEWORK_EVAL ")
    ]
    published = [r for r in records if r["kind"] == "metric" and "eval_loss" in r["values"]]
    expected = [e["eval_loss"] for e in evaluations]
    assert [r["values"]["eval_loss"] for r in published] == pytest.approx(expected, rel=1e-6)
    # At the step the evaluation followed (the step the Trainer logs it at, less one), not the one after it.
    assert [r["step"] for r in published] == [e["after_step"] for e in evaluations]
    # The step's own figures travel in the step record, not again as metrics.
    assert not any("loss" in r["values"] or "epoch" in r["values"] for r in records if r["kind"] == "metric")


@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="the frameworks extra is not installed")
def test_a_lightning_run_started_with_python_is_watchable_with_one_callback(tmp_path):
    records, truth, stdout = watched_with_the_callback(tmp_path, "lightning_train")
    steps = steps_of(records)
    assert len(truth) == 24
    assert_same(steps, truth, "loss", "loss")
    assert_same(steps, truth, "grad_norm", "grad_norm")
    assert framework_info(stdout)["precision"] == "bf16-mixed"
    assert {s.get("precision") for s in steps} == {"bfloat16 autocast"}
    evaluations = [
        json.loads(line.split(" ", 1)[1]) for line in stdout.splitlines() if line.startswith("FRAMEWORK_EVAL ")
    ]
    validated = [e["val_loss"] for e in evaluations if not e["sanity"]]
    metrics = [r for r in records if r["kind"] == "metric" and "val_loss" in r["values"]]
    published = [r["values"]["val_loss"] for r in metrics]
    # After each validation (the sanity check's is not published), and again at the epoch's end, at the step
    # the validation followed (as Lightning's loggers put it), not the one after it.
    assert validated and published[: len(validated)] == pytest.approx(validated, rel=1e-6)
    after = [e["after_step"] for e in evaluations if not e["sanity"]]
    assert [r["step"] for r in metrics[: len(validated)]] == after
    assert max(r["step"] for r in metrics) <= steps[-1]["step"]
