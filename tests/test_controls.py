"""Live controls end to end: scheduled, from `optwatch ctl`, under DDP, and from the dashboard."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import EXAMPLES, ROOT, SCRIPTS, live_jobs, optwatch, read_jsonl, steps_of, wait_for, wait_for_steps
from optwatch import runs
from optwatch.wire import runtime
from test_right_numbers import truth_of


def inside(stdout: str) -> dict[int, dict[str, str]]:
    """What the script saw inside each step: {step: {"lr": ..., "cudnn": ..., "autocast": ...}}."""
    seen = {}
    for line in stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        if "step" in fields:
            seen[int(fields.pop("step"))] = fields
    return seen


def rates_used(stdout: str) -> dict[int, float]:
    """The rate each step used, as ``plain_train.py`` prints it (``lr STEP VALUE``): {step: rate}."""
    lines = (line.split() for line in stdout.splitlines() if line.startswith("lr "))
    return {int(step): float(value) for _, step, value in lines}


def test_scheduled_controls_take_effect_exactly_at_their_steps(tmp_path):
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record),
        "--control", "lr=0.001@20", "--control", "cudnn_benchmark=on@25", "--control", "amp=on@30",
        "--control", "lr=banana@33", "--control", "amp=maybe@34", "--control", "lr[3]=0.1@35",
        str(SCRIPTS / "control_probe.py"), "--steps", "40",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = inside(result.stdout)
    assert [seen[s]["lr"] for s in (18, 19, 20, 21)] == ["0.01", "0.01", "0.001", "0.001"]
    assert [seen[s]["cudnn"] for s in (24, 25)] == ["False", "True"]
    assert [seen[s]["autocast"] for s in (29, 30, 39)] == ["False", "torch.bfloat16", "torch.bfloat16"]
    # The bad ones changed nothing.
    assert {seen[s]["lr"] for s in range(20, 40)} == {"0.001"}

    records = read_jsonl(record)
    events = {r["command"]: r for r in records if r["kind"] == "event"}
    assert events["lr=0.001"]["status"] == "accepted" and events["lr=0.001"]["effective_step"] == 20
    assert events["cudnn_benchmark=on"]["effective_step"] == 25
    assert events["amp=on"]["effective_step"] == 30
    assert events["lr=banana"]["status"] == "rejected" and "must be a number" in events["lr=banana"]["reason"]
    assert events["amp=maybe"]["status"] == "rejected" and "on or off" in events["amp=maybe"]["reason"]
    assert "1 param group" in events["lr[3]=0.1"]["reason"]
    steps = {s["step"]: s for s in steps_of(records)}
    assert (steps[19]["lr"], steps[20]["lr"]) == (0.01, 0.001)
    assert (steps[24]["cudnn_benchmark"], steps[25]["cudnn_benchmark"]) == (False, True)
    assert (steps[29]["amp"], steps[30]["amp"]) == (False, True)
    assert "lr=banana rejected: lr must be a number" in result.stderr
    assert "warning: --control lr=banana@33 will be refused" in result.stderr


def test_an_optimizer_whose_lr_is_not_one_number_trains_and_an_lr_command_is_refused(tmp_path):
    """A learning rate optwatch cannot read as one number (here a pair) is recorded as unknown, and an
    ``lr`` command is refused with the reason instead of writing a float the optimizer cannot use; the
    training runs to its end either way (it crashed at the first step boundary)."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "lr=0.01@3", str(SCRIPTS / "per_axis_lr.py")
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^step=\d+ loss=", result.stdout, re.M)) == 8
    records = read_jsonl(record)
    assert [(s["step"], s["lr"]) for s in steps_of(records)] == [(step, None) for step in range(8)]
    [event] = [r for r in records if r["kind"] == "event"]
    assert event["status"] == "rejected" and "learning rate is tuple (0.1, 0.05), not one number" in event["reason"]


def test_a_scheduler_of_the_scripts_own_that_is_unhashable_trains_and_follows_an_lr_change(tmp_path):
    """optwatch remembers LR schedulers as they are made (so that ``lr=`` carries the schedule along); one
    that defines ``__eq__`` and so is unhashable crashed the script at its construction."""
    result = optwatch("run", "--headless", "--control", "lr=0.05@5", str(SCRIPTS / "unhashable_scheduler.py"))
    assert result.returncode == 0, result.stderr
    lrs = [float(line.split("lr=")[1]) for line in result.stdout.splitlines() if line.startswith("step=")]
    # Each line shows the rate the next step uses: warm-up to 0.1, then 0.05 from step 5 on, with the
    # schedule's base moved along (else its next step() would put 0.1 back).
    assert lrs == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])


def test_amp_covers_every_micro_batch_of_an_accumulated_step():
    """With gradient accumulation, ``amp=on`` autocasts each micro-batch's forward, not only the first
    (backward runs outside autocast, as recommended, and autocast comes back after it)."""
    result = optwatch(
        "run", "--headless", "--control", "amp=on@2", "--control", "amp=off@4", str(SCRIPTS / "accumulate_amp.py")
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    forwards = [line.split("forwards=")[1] for line in result.stdout.splitlines() if line.startswith("step=")]
    f32, bf16 = "float32,float32,float32", "bfloat16,bfloat16,bfloat16"
    assert forwards == [f32, f32, bf16, bf16, f32, f32]


def test_a_malformed_control_flag_is_a_usage_error():
    result = optwatch("run", "--headless", "--control", "lr=0.1", str(SCRIPTS / "plain_train.py"))
    assert result.returncode == 2 and "COMMAND@STEP" in result.stderr


def test_a_stop_of_a_script_that_calls_watch_says_so_in_one_line():
    """A plain ``python`` script calling ``optwatch.watch``, stopped by ``optwatch ctl RUN stop``: the
    interpreter printed 30 lines of traceback through optwatch's hooks, an optwatch crash to the eye."""
    job = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "control_probe.py"), "--watch", "--steps", "100000", "--sleep", "0.02"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        wait_for(lambda: job.poll() is not None or optwatch("ctl", listed["run_id"], "stop").returncode == 0)
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == -signal.SIGINT and out.count("step=") > 0  # the interrupt's status (130 in a shell)
    assert "stopped by request before step" in err and "Traceback" not in err, err[-3000:]


def test_ctl_steers_a_running_job_and_refuses_bad_commands(tmp_path):
    record = tmp_path / "r.jsonl"
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--record", str(record),
         str(SCRIPTS / "control_probe.py"), "--steps", "100000", "--sleep", "0.02"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        [listed] = wait_for(live_jobs)
        run = listed["run_id"]
        wait_for(lambda: record.exists() and len(steps_of(read_jsonl(record))) >= 5)
        result = optwatch("ctl", run, "lr*=0.5", "cudnn_benchmark=on")
        hub_log = Path(listed["run_dir"], "hub.log")
        assert result.returncode == 0, result.stdout + result.stderr + hub_log.read_text(errors="replace")
        lr_line, cudnn_line = result.stdout.splitlines()
        assert "where it changes nothing" in cudnn_line  # (set, but this model trains on the CPU)
        assert (
            lr_line.startswith("lr*=0.5: accepted, in effect from step ")
            and "0.01 at step " in lr_line
            and " -> 0.005;" in lr_line
        )
        lr_step = int(lr_line.split("from step ")[1].split()[0])

        for bad, reason in (("lr=-1", "positive"), ("lr=banana", "must be a number"), ("amp=maybe", "on or off"),
                            ("jump", "unknown command")):  # fmt: skip
            refused = optwatch("ctl", run, bad)
            assert refused.returncode == 1 and f"{bad}: rejected:" in refused.stdout and reason in refused.stdout
        # Answers in the order of the commands, though the hub refuses the second before the job the first.
        both = optwatch("ctl", run, "lr[5]=0.1", "amp=maybe").stdout.splitlines()
        assert [line.split(":")[0] for line in both] == ["lr[5]=0.1", "amp=maybe"], both

        assert optwatch("ctl", run, "pause").returncode == 0
        paused_at = max(s["step"] for s in steps_of(read_jsonl(record)))
        time.sleep(1.0)
        assert max(s["step"] for s in steps_of(read_jsonl(record))) <= paused_at + 1
        resumed = optwatch("ctl", run, "resume")
        assert resumed.returncode == 0, resumed.stdout
        assert optwatch("ctl", run, "resume").stdout.strip().endswith("rejected: the run is not paused")
        assert optwatch("ctl", run, "stop").returncode == 0
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130  # a clean stop is a KeyboardInterrupt at a step boundary
    # Asked for, not a crash: one line, not a traceback through optwatch's hooks.
    assert "stopped by request before step" in err and "Traceback" not in err, err[-3000:]
    [end] = [r for r in read_jsonl(record) if r["kind"] == "end"]
    [entry] = runs.list_runs()
    assert end["exit_code"] == 130 and entry.status == "stopped"  # not "failed (exit 1)"
    seen = inside(out)
    assert seen[lr_step - 1]["lr"] == "0.01" and seen[lr_step]["lr"] == "0.005"
    steps = {s["step"]: s for s in steps_of(read_jsonl(record))}
    assert steps[lr_step]["lr"] == 0.005 and steps[lr_step - 1]["lr"] == 0.01
    # The second the run was held at the boundary is no part of any step's time, nor of optwatch's cost.
    around_pause = [steps[n] for n in range(paused_at, paused_at + 3) if n in steps]
    assert around_pause and all(s["step_time_s"] < 0.5 and s["optwatch_s"] < 0.1 for s in around_pause)


@pytest.mark.slow
def test_under_ddp_past_the_budgets_start_every_rank_records_every_step_and_a_command_lands_together(tmp_path):
    """From step 100 each rank spaces its own checks (``--budget``) by what they cost it; nothing of that
    is collective, so no rank waits on another's detail step, every step is recorded on every rank, and
    a scheduled command lands at its step on both, between two detail steps."""
    record = tmp_path / "r.jsonl"
    # 251: a prime, so no spacing over 1 makes it a detail step.
    result = optwatch(
        "run", "--headless", "--record", str(record), "--nproc-per-node", "2", "--control", "lr=0.05@251",
        str(EXAMPLES / "ddp.py"), "--steps", "400",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_jsonl(record)
    for rank in (0, 1):
        steps = {s["step"]: s for s in steps_of(records, rank)}
        assert sorted(steps) == list(range(400)), rank
        assert steps[399]["detail_every"] > 1 and not steps[251]["detailed"], rank
        assert (steps[250]["lr"], steps[251]["lr"]) == (0.01, 0.05), rank


@pytest.mark.slow
def test_a_stop_under_nproc_per_node_exits_130_as_the_ranks_did():
    """Each rank ends on the stop's KeyboardInterrupt (130); torchrun calls that a failed child and exits 1,
    which `optwatch run` passed on, with its traceback, though the run was stopped as asked."""
    result = optwatch(
        "run", "--headless", "--no-record", "--nproc-per-node", "2", "--control", "stop@15",
        str(EXAMPLES / "ddp.py"), "--steps", "100000",
    )  # fmt: skip
    assert result.returncode == 130, result.stderr[-2000:]


def _stop_lines(output: str, tag: str) -> list[dict]:
    return [json.loads(line.split(tag, 1)[1]) for line in output.splitlines() if line.startswith(tag)]


@pytest.mark.slow
def test_a_stop_under_ddp_lets_rank_0_finish_saving_its_checkpoint(tmp_path):
    """Every rank ends the stop in its own handler; rank 1's is quick, rank 0 writes a checkpoint for 2 s. A
    rank that exits 130 is a failed worker to torchrun, which then sent SIGTERM to rank 0 mid-save: the
    checkpoint was never written. Now each rank's stop ends as a finished worker, and the launch says 130."""
    checkpoint = tmp_path / "last.pt"
    result = optwatch(
        "run", "--headless", "--no-record", "--nproc-per-node", "2", "--control", "stop@20",
        str(SCRIPTS / "ddp_checkpoint.py"), "--out", str(checkpoint),
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 130, output[-3000:]
    assert sorted((s["rank"], s["step"]) for s in _stop_lines(output, "STOPPED ")) == [(0, 20), (1, 20)]
    assert _stop_lines(output, "SAVED ") == [{"step": 20}]
    assert torch.load(checkpoint)["step"] == 20
    assert "SIGTERM" not in output


@pytest.mark.slow
def test_under_plain_torchrun_a_stop_ends_the_job_whole_and_the_run_is_said_stopped(tmp_path):
    """The user's own torchrun, no `--nproc-per-node`: torchrun's exit is 0 (it restarts or tears down a job
    with a failed worker); optwatch's record of the run says it was stopped."""
    checkpoint = tmp_path / "last.pt"
    runs_dir = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "--max-restarts=1",
         "-m", "optwatch", "run", "--control", "stop@20",
         str(SCRIPTS / "ddp_checkpoint.py"), "--out", str(checkpoint)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OPTWATCH_RUNS_DIR": str(runs_dir)},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # One start: --max-restarts=1 would have run the script again after a failed worker.
    assert sorted((s["rank"], s["step"]) for s in _stop_lines(output, "STOPPED ")) == [(0, 20), (1, 20)]
    assert torch.load(checkpoint)["step"] == 20
    # Said as soon as the ranks have ended, while the hub lingers for its last viewers.
    [summary_path] = runs_dir.glob("*/run.json")

    def ended() -> dict | None:
        summary = json.loads(summary_path.read_text())
        return summary if summary["status"] != "running" else None

    summary = wait_for(ended)
    assert (summary["status"], summary["steps"]) == ("stopped", 20), summary
    assert runtime.pid_alive(summary["hub_pid"])


@pytest.mark.slow
def test_under_ddp_a_command_lands_on_every_rank_at_the_same_step(tmp_path):
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "optwatch", "run", str(EXAMPLES / "ddp.py"), "--steps", "100000", "--step-sleep", "0.01"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    record = tmp_path / "r.jsonl"
    try:
        [listed] = wait_for(live_jobs)
        wait_for_steps(listed, 5)
        watcher = subprocess.Popen(
            [sys.executable, "-m", "optwatch", "attach", listed["run_id"], "--headless", "--record", str(record)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(3)
        result = optwatch("ctl", listed["run_id"], "lr=0.005")
        assert result.returncode == 0, result.stdout + result.stderr
        effective = int(result.stdout.split("from step ")[1].split()[0])
        time.sleep(2)
        watcher.send_signal(signal.SIGINT)
        watcher.wait(30)
        optwatch("ctl", listed["run_id"], "stop")
    finally:
        job.communicate(timeout=120)
    records = read_jsonl(record)
    events = [r for r in records if r["kind"] == "event" and r["command"] == "lr=0.005"]
    assert sorted(r["rank"] for r in events) == [0, 1]
    assert {r["effective_step"] for r in events} == {effective}
    for rank in (0, 1):
        lrs = {s["step"]: s["lr"] for s in steps_of(records, rank)}
        assert lrs[effective - 1] == 0.01 and lrs[effective] == 0.005, rank


def test_an_lr_command_at_a_warm_ups_zero_is_refused_not_applied_for_one_step(tmp_path):
    """A warm-up from 0 (the Hugging Face schedules') cannot be scaled from 0: `lr=V@0` was accepted, "the
    schedule goes on from the new level", and step 1 went back to the schedule. Now it is refused, and a
    command at a later step scales the schedule as promised."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "lr=0.01@0", "--control", "lr=0.02@3",
        str(SCRIPTS / "plain_train.py"), "--steps", "8", "--warmup", "5", "--lr", "0.05",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    used = rates_used(result.stdout)
    events = {e["command"]: e for e in read_jsonl(record) if e["kind"] == "event"}
    refused = events["lr=0.01"]
    assert refused["status"] == "rejected" and "learning rate is 0 at this step" in refused["reason"]
    assert "lr=0.01 rejected" in result.stderr
    assert used[0] == 0.0 and used[1] == pytest.approx(0.01) and used[2] == pytest.approx(0.02)  # the schedule's own
    assert events["lr=0.02"]["status"] == "accepted"
    # From step 3 the schedule goes on at 0.02/0.03 of itself: 0.05 * 4/5 * 2/3 at step 4.
    assert used[3] == pytest.approx(0.02) and used[4] == pytest.approx(0.05 * 0.8 * 2 / 3)


@pytest.mark.parametrize(
    ("command", "step_1", "answer"),
    [
        # The boundary before step 1 holds step 0's 0: both were refused ("0 scaled is 0", "a schedule
        # cannot be scaled from 0"), though step 1's own rate is the warm-up's 0.01.
        ("lr*=2@1", 0.02, "group 0: 0 at step 0, scaled x2;"),
        ("lr=0.02@1", 0.02, "group 0: 0.01 -> 0.02;"),
        # A jump of the schedule's own (a restart's, a warm-up's first step): 4000x step 0's 5e-06 was to be
        # confirmed (lr=V!), where it is 2x step 1's own.
        ("lr=0.02@1 --start 0.0001", 0.02, "group 0: 0.01 -> 0.02;"),
    ],
)
def test_an_lr_command_is_judged_against_its_own_steps_rate_not_the_last_ones(tmp_path, command, step_1, answer):
    """`lr=V@N` is weighed against the rate step N would use, which the scheduler sets after the boundary the
    command is taken at; `lr*=F` scales a warm-up's schedule from its 0 too. Step N uses what was asked, and
    the schedule goes on from there: twice its own at step 2 and after."""
    command, *extra = command.split()
    start = float(extra[1]) if extra else 0.0
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", command,
        str(SCRIPTS / "plain_train.py"), "--steps", "8", "--warmup", "5", "--lr", "0.05",
        "--warmup-start", str(start),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    used = rates_used(result.stdout)
    [event] = [e for e in read_jsonl(record) if e["kind"] == "event"]
    assert event["status"] == "accepted" and event["effective_step"] == 1, event
    assert event["reason"].startswith(answer) and "the scheduler's schedule goes on" in event["reason"], event
    assert used[0] == pytest.approx(start * 0.05)
    assert used[1] == pytest.approx(step_1)
    warm_up = {step: 0.05 * max(start, min(1.0, step / 5)) for step in range(8)}  # the script's own schedule
    assert [used[s] for s in range(2, 8)] == pytest.approx([2 * warm_up[s] for s in range(2, 8)])


def test_an_lr_command_on_a_schedule_quotes_the_rate_a_step_used_not_one_no_step_uses(tmp_path):
    """At the boundary the groups still hold the last step's rate: `lr*=0.5@6` on a warm-up said "group 0:
    0.0125 -> 0.00625", the second a rate no step used (step 6 ran at half the schedule's own 0.015). The
    answer quotes the last step's rate as that step's, and the factor."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "lr*=0.5@6", "--control", "lr=0.004@9",
        str(SCRIPTS / "plain_train.py"), "--steps", "12", "--warmup", "20", "--lr", "0.05",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    used = rates_used(result.stdout)
    assert used[6] == pytest.approx(0.5 * 0.05 * 6 / 20)  # the command did what it says
    events = {e["command"]: e["reason"] for e in read_jsonl(record) if e["kind"] == "event"}
    # (the script reads its rate after step(), where the command already applied: the warm-up's own by hand)
    assert events["lr*=0.5"].startswith(f"group 0: {0.05 * 5 / 20:.3g} at step 5, scaled x0.5;"), events["lr*=0.5"]
    assert used[9] == pytest.approx(0.004)
    assert events["lr=0.004"].startswith(f"group 0: {0.5 * 0.05 * 8 / 20:.3g} at step 8 -> 0.004;"), events["lr=0.004"]


def test_an_lr_command_to_adafactor_computing_its_own_rate_is_refused(tmp_path):
    """Adafactor with relative_step=True never reads the group's lr, which its AdafactorSchedule fills in: an
    lr command was accepted, recorded as applied, and changed nothing (the losses were the same bits)."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "lr=0.001!@4", "--control", "lr*=2@6",
        str(SCRIPTS / "adafactor_relative.py"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = {e["command"]: e for e in read_jsonl(record) if e["kind"] == "event"}
    for command in ("lr=0.001!", "lr*=2"):
        assert events[command]["status"] == "rejected", events[command]
        assert "relative_step=True" in events[command]["reason"]
    bare = subprocess.run([sys.executable, str(SCRIPTS / "adafactor_relative.py")], capture_output=True, text=True)
    assert result.stdout == bare.stdout  # the training as without optwatch


def test_an_lr_command_in_a_gan_says_which_optimizer_it_moved(tmp_path):
    """Two optimizers: `lr=V` moves the primary's (the first to step, DCGAN's optD) and says so; it read
    "group 0: ..." as if it were the run's only rate."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "lr=0.0001@5", str(SCRIPTS / "gan.py"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [event] = [e for e in read_jsonl(record) if e["kind"] == "event"]
    assert event["status"] == "accepted", event
    assert event["reason"].startswith("optD group 0: 0.002 at step 4 -> 0.0001"), event["reason"]
    assert "the run's other optimizers keep theirs" in event["reason"]


def test_a_command_scheduled_past_the_last_step_is_said_to_be_never_applied(tmp_path):
    """`--control lr=0.001@50` on a 10-step run: the run ends, and the command is a rejected event with the
    reason in the record and on the headless output, not silently dropped."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "lr=0.001@50", "--control", "amp=on@3",
        str(SCRIPTS / "plain_train.py"), "--steps", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = {e["command"]: e for e in read_jsonl(record) if e["kind"] == "event"}
    assert events["amp=on"]["status"] == "accepted" and events["amp=on"]["effective_step"] == 3
    late = events["lr=0.001"]
    assert late["status"] == "rejected" and late["effective_step"] is None
    assert late["reason"] == "never applied: it was due at step 50, and the run was watched to step 9"
    assert "lr=0.001 rejected: never applied" in result.stdout + result.stderr
    assert all(s["lr"] == 0.05 for s in steps_of(read_jsonl(record)))


def _rates(output: str, field: str = "lr") -> dict[int, Any]:
    lines = (json.loads(line[6:]) for line in output.splitlines() if line.startswith("TRUTH "))
    return {line["step"]: line[field] for line in lines}


@pytest.mark.parametrize("schedule", ["swa", "cyclic", "onecycle", "cosine"])
def test_lr_times_f_scales_the_rest_of_a_torch_schedule(schedule):
    """`lr*=0.5` says "the scheduler's schedule goes on from the new level": under SWALR the rate went back
    to swa_lr at its next step, CyclicLR cycled up to its unscaled peak, and a cosine ended at its unscaled
    floor (with two param groups it still did: x0.53 twenty steps on, x1.0 at the end). Every rate from the
    command's step on is half the one the same script uses without optwatch, in every group."""
    script = [str(SCRIPTS / "schedules.py"), "--schedule", schedule]
    bare = subprocess.run([sys.executable, *script], capture_output=True, text=True, check=True)
    steered = optwatch("run", "--headless", "--no-record", "--control", "lr*=0.5@30", *script)
    assert steered.returncode == 0, steered.stderr[-2000:]
    before, after = _rates(bare.stdout), _rates(steered.stdout)
    assert sorted(before) == sorted(after) == list(range(80))
    assert [after[s] for s in range(30)] == [before[s] for s in range(30)]
    assert [after[s] / before[s] for s in range(30, 80)] == pytest.approx([0.5] * 50)
    if schedule == "cosine":
        groups_before, groups_after = _rates(bare.stdout, "lrs"), _rates(steered.stdout, "lrs")
        assert [groups_after[s][1] / groups_before[s][1] for s in range(30, 80)] == pytest.approx([0.5] * 50)


def test_ctl_says_a_command_the_job_never_reached_a_step_boundary_for_and_exits_1(tmp_path):
    """A command sent while the job evaluated (no step boundary within --timeout), or as its last step had
    ended, printed "queued" and exited 0, where ctl exits 1 unless every command was accepted; on a job that
    had ended it waited the whole timeout."""
    job = subprocess.Popen(
        [sys.executable, "-m", "optwatch", "run", "--headless", "--no-record", str(SCRIPTS / "slow_start.py"),
         "--steps", "5", "--evaluate-after", "4", "--evaluate-s", "5"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in job.stdout:
            if line.startswith("EVALUATING"):  # (after its last step: no boundary will come)
                break
        [listed] = wait_for(live_jobs)
        queued = optwatch("ctl", listed["run_id"], "lr=0.01", "--timeout", "1")
        assert (
            queued.returncode == 1
            and queued.stdout.strip() == "lr=0.01: queued, not applied within 1s (is the job between steps?)"
        ), queued.stdout
        # (Nor a resume of a run that is not paused: the hub knows, and says so at once.)
        resumed = optwatch("ctl", listed["run_id"], "resume", "--timeout", "10")
        assert resumed.returncode == 1 and resumed.stdout.strip() == "resume: rejected: the run is not paused", (
            resumed.stdout
        )
        sent = optwatch("ctl", listed["run_id"], "lr=0.02", "--no-wait")
        assert sent.returncode == 0 and "queued" in sent.stdout, sent.stdout
        started = time.monotonic()
        ended = optwatch("ctl", listed["run_id"], "lr=0.03", "--timeout", "60")
        assert ended.returncode == 1 and ended.stdout.strip() == "lr=0.03: not applied: the run ended first", (
            ended.stdout
        )
        assert time.monotonic() - started < 30  # told when the run ended, not after the whole timeout
        job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0


@pytest.mark.parametrize("ending", [[], ["--exit-zero"]], ids=["falls off the end", "sys.exit(0)"])
def test_stop_ends_a_training_thread_in_one_line_and_the_run_with_130(tmp_path, ending):
    """A script that trains in a thread of its own: `stop` printed "Exception in thread trainer" and a
    traceback through optwatch's hooks, and the run ended 0. One line, as in the main thread, and 130 (in the
    run's end record too, whatever exit the script makes after); the main thread goes on as the script has it."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), "--control", "stop@20", str(SCRIPTS / "thread_training.py"),
        "--steps", "500", *ending,
    )  # fmt: skip
    assert result.returncode == 130, result.stderr[-2000:]
    printed = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert printed[-1] == "step 19" and result.stdout.splitlines()[-1] == "main: done"
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if "stopped by request" in line]
    assert said == ["optwatch: stopped by request before step 20: the steps before it are complete (thread trainer)"]
    [end] = [r for r in read_jsonl(record) if r["kind"] == "end"]
    assert end["exit_code"] == 130


def test_an_explosion_in_the_scripts_own_warm_up_names_the_rise_of_the_rate(tmp_path):
    """A warm-up to 5 over 100 steps diverges on the way up: the alert said how far the norm went and
    nothing of the rate, which the script raised twentyfold meanwhile. It names the rise, by the rates the
    script itself prints (its own lowest since, and the one its step used), and what to change."""
    record = tmp_path / "r.jsonl"
    result = optwatch(
        "run", "--headless", "--record", str(record), str(SCRIPTS / "plain_train.py"), "--steps", "40",
        "--lr", "5", "--warmup", "100",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    used = rates_used(result.stdout)
    [first] = [a for a in read_jsonl(record) if a["kind"] == "alert"][:1]
    step = first["step"]
    assert first["type"] in ("exploding", "nonfinite"), first
    said = re.search(
        r"; the learning rate rose (\S+)× in (\d+) steps \((\S+) at step 1, (\S+) now\): ", first["message"]
    )
    assert said, first["message"]
    assert float(said[3]) == pytest.approx(used[1], rel=1e-2) and float(said[4]) == pytest.approx(used[step], rel=1e-2)
    assert int(said[2]) == step - 1 and float(said[1]) == pytest.approx(used[step] / used[1], rel=1e-2)
    assert first["message"].endswith("a lower peak or a longer warm-up (`lr*=0.1` lowers it now)")


DECAYS = """
import sys, torch
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD([{"params": [model.weight], "lr": 0.01}, {"params": [model.bias], "lr": 0.1}])
for step in range(32):
    if sys.argv[1] == "in-place" and step and step % 10 == 0:
        for group in opt.param_groups:
            group["lr"] *= 0.5  # a decay made on the rate in use
    if sys.argv[1] == "per-epoch" and step % 4 == 0:
        for group, base in zip(opt.param_groups, (0.01, 0.1)):
            group["lr"] = base * 0.5 ** (step // 10)  # adjust_learning_rate(), each epoch of 4 steps
    if sys.argv[1] == "per-rollout" and step % 4 == 0:
        for group, base in zip(opt.param_groups, (0.01, 0.1)):
            group["lr"] = base * (1 - step // 4 / 8)  # CleanRL's anneal, once a rollout of 4 steps
    if sys.argv[1] == "tensor-per-epoch":
        if step == 0:
            for group in opt.param_groups:
                group["lr"] = torch.tensor(group["lr"], dtype=torch.float64)
        if step % 4 == 0:
            for group, base in zip(opt.param_groups, (0.01, 0.1)):
                group["lr"].fill_(base * 0.3 ** (step // 10))  # a tensor rate, filled: its value tells
    opt.zero_grad(); model(torch.randn(8, 4)).pow(2).mean().backward()
    print(f"step={step} lr0={float(opt.param_groups[0]['lr'])!r} lr1={float(opt.param_groups[1]['lr'])!r}")
    opt.step()
"""


@pytest.mark.parametrize("style", ["in-place", "per-epoch", "per-rollout", "tensor-per-epoch"])
def test_a_held_rate_follows_the_scripts_own_decays_once(tmp_path, style):
    """`lr*=0.5@5` on a script that halves its rates in place every 10 steps (`group["lr"] *= 0.5`): each
    decay, made on the rate held, was scaled again: 8x too low at step 30 (16x for group 1 after `lr=V`). A
    script that assigns its own rates each epoch (`adjust_learning_rate`) has them scaled, as before. One that
    anneals them once a rollout had them scaled until an anneal's step came nearer the held rate than its own
    last one (0.25 after 0.375, at step 24): that one was taken for a decay in place and the hold was lost."""
    script = tmp_path / "decays.py"
    script.write_text(DECAYS)
    result = optwatch("run", "--headless", "--no-record", "--control", "lr*=0.5@5", str(script), style)
    assert result.returncode == 0, result.stderr[-2000:]
    seen = inside(result.stdout)
    for step in (4, 5, 9, 10, 19, 20, 24, 28, 30, 31):
        # The script's own schedule, by hand: halved at 10, 20 and 30 (per epoch: at 12, 20 and 28).
        own = {
            "in-place": 0.5 ** (step // 10),
            "per-epoch": 0.5 ** (step // 4 * 4 // 10),
            "per-rollout": 1 - step // 4 / 8,
            "tensor-per-epoch": 0.3 ** (step // 4 * 4 // 10),  # (0.3: never the held rate, which no test tells)
        }[style]
        held = 0.5 if step >= 5 else 1.0
        assert float(seen[step]["lr0"]) == pytest.approx(0.01 * own * held, rel=1e-9), (step, seen[step])
        assert float(seen[step]["lr1"]) == pytest.approx(0.1 * own * held, rel=1e-9), (step, seen[step])


def test_a_command_for_every_group_leaves_a_frozen_group_at_0(tmp_path):
    """A backbone frozen at lr 0 beside a head at 0.01: `lr*=0.5` was refused ("a warm-up's start?"), and
    `lr=V` would have set the backbone training. Both now move the head alone."""
    script = tmp_path / "frozen.py"
    script.write_text(
        "import torch\ntorch.manual_seed(0)\nbackbone, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)\n"
        "opt = torch.optim.SGD([{'params': backbone.parameters(), 'lr': 0.0},\n"
        "                       {'params': head.parameters(), 'lr': 0.01}])\n"
        "for step in range(16):\n"
        "    opt.zero_grad(); head(backbone(torch.randn(8, 4))).pow(2).mean().backward()\n"
        "    print(f\"step={step} lr0={opt.param_groups[0]['lr']!r} lr1={opt.param_groups[1]['lr']!r}\")\n"
        "    opt.step()\n"
    )
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), "--control", "lr*=0.5@5",
                      "--control", "lr=0.02@10", str(script))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    seen = inside(result.stdout)
    assert {float(seen[step]["lr0"]) for step in range(16)} == {0.0}
    assert [float(seen[step]["lr1"]) for step in (4, 5, 9, 10, 15)] == pytest.approx([0.01, 0.005, 0.005, 0.02, 0.02])
    events = [r for r in read_jsonl(record) if r["kind"] == "event"]
    assert [(e["command"], e["status"], e["effective_step"]) for e in events] == [
        ("lr*=0.5", "accepted", 5), ("lr=0.02", "accepted", 10)
    ]  # fmt: skip


def test_an_lr_command_moves_a_scheduler_made_before_watch(tmp_path):
    """`optwatch.watch()` called after the script made its scheduler (Lightning's callback watches at the
    training's start): optwatch never saw the scheduler made, held the rate against it instead, and the
    scheduler went on reporting its old schedule (LearningRateMonitor logged 0.044 for a step that used
    0.022). The schedule itself now goes on from the command's rate."""
    env = {**os.environ, "OPTWATCH_RUNS_DIR": str(tmp_path / "runs"), "OPTWATCH_OPTIONS": '{"controls": ["lr*=0.5@5"]}'}
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "scheduler_before_watch.py")], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    truth = truth_of(result.stdout)
    for step, seen in truth.items():
        scheduled = 0.01 * (1 + 0.1 * step) * (0.5 if step >= 5 else 1.0)
        assert seen["used"] == pytest.approx(scheduled, rel=1e-9), step
        assert seen["reported"] == pytest.approx(seen["used"], rel=1e-9), step
