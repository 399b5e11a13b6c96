"""The precision a run trains in, as the script itself sees it: its own autocast, 16-bit weights, or
optwatch's ``amp=on``; and advice that does not tell it to turn on what it already uses."""

from __future__ import annotations

import pytest

from conftest import SCRIPTS, optwatch, read_jsonl, steps_of


def run(tmp_path, *args: str, options: tuple[str, ...] = ()) -> tuple[list[dict], dict[int, str]]:
    """The run's step records, and each step's forward output dtype as the script printed it."""
    record = tmp_path / "r.jsonl"
    script = str(SCRIPTS / "own_precision.py")
    result = optwatch("run", "--headless", "--record", str(record), *options, script, *args)
    assert result.returncode == 0, result.stderr
    printed = dict(line.split()[:2] for line in result.stdout.splitlines() if line.startswith("step="))
    forwards = {int(step.removeprefix("step=")): dtype.removeprefix("forward=") for step, dtype in printed.items()}
    return steps_of(read_jsonl(record)), forwards


@pytest.mark.parametrize(
    "args, precision",
    [
        (("--autocast", "bfloat16"), "bfloat16 autocast"),  # nanoGPT's `with ctx:` around forward and loss
        (("--weights", "bfloat16"), "bfloat16"),  # the model itself in bf16
        # Compiled in, never entered again: 30 steps of 40 ms span several system samples.
        (("--autocast", "bfloat16", "--compile", "--sleep", "0.04"), "bfloat16 autocast"),
        ((), "float32"),
        (("--eval-every", "5", "--eval-autocast"), "float32"),  # an evaluation's autocast is not the training's
    ],
)
def test_each_step_says_the_precision_the_script_trains_in(tmp_path, args, precision):
    steps, forwards = run(tmp_path, "--steps", "30", *args)
    assert len(steps) == 30
    assert {forwards[s["step"]] for s in steps} == {precision.split()[0]}  # what the script itself saw
    assert [s["step"] for s in steps if s.get("precision") != precision] == []  # from the first step on
    assert not any(s.get("amp") for s in steps)  # optwatch's own control stays off


def test_amp_turned_on_and_off_mid_run_shows_at_the_very_steps(tmp_path):
    """`amp=on@10`, `amp=off@50`: the script's forward is bfloat16 from step 10 to 49, and the records say so
    for exactly those steps (the end of autocast was seen a system sample late, beside `amp: false`)."""
    options = ("--control", "amp=on@10", "--control", "amp=off@50")
    steps, forwards = run(tmp_path, "--steps", "80", options=options)
    assert [forwards[s] for s in range(80)] == ["float32"] * 10 + ["bfloat16"] * 40 + ["float32"] * 30
    assert [s.get("precision") for s in steps] == ["float32"] * 10 + ["bfloat16 autocast"] * 40 + ["float32"] * 30
    assert [s["amp"] for s in steps] == [False] * 10 + [True] * 40 + [False] * 30


def test_amp_commands_on_a_script_with_its_own_autocast_say_they_do_not_change_it(tmp_path):
    """A Trainer with bf16=True: `amp=off` answered "autocast off" while its steps went on in bfloat16 (its
    own autocast, which optwatch's does not undo). The answers now say the script's own decides."""
    record = tmp_path / "r.jsonl"
    result = optwatch("run", "--headless", "--record", str(record), "--control", "amp=on@5", "--control", "amp=off@10",
                      str(SCRIPTS / "own_precision.py"), "--steps", "15", "--autocast", "bfloat16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_jsonl(record)
    assert {s["precision"] for s in steps_of(records)} == {"bfloat16 autocast"}
    reasons = {e["command"]: e["reason"] for e in records if e["kind"] == "event"}
    assert reasons["amp=on"].endswith("but the script's own, entered inside it, decides the forward's"), reasons
    assert reasons["amp=off"].startswith("optwatch's autocast off; the script's own stays"), reasons
