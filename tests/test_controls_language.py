"""The control language: what is accepted, and the reasons given for what is not."""

from __future__ import annotations

import pytest

from conftest import SCRIPTS, optwatch
from optwatch.controls import CommandError, big_change, parse, parse_scheduled


@pytest.mark.parametrize(
    ("text", "name", "value", "group", "scale"),
    [
        ("lr=0.001", "lr", 0.001, None, False),
        ("lr = 3e-4", "lr", 3e-4, None, False),
        ("lr*=0.5", "lr", 0.5, None, True),
        ("lr[1]=0.01", "lr", 0.01, 1, False),
        ("amp=on", "amp", True, None, False),
        ("amp=off", "amp", False, None, False),
        ("cudnn_benchmark=on", "cudnn_benchmark", True, None, False),
        ("pause", "pause", None, None, False),
        ("resume", "resume", None, None, False),
        ("stop", "stop", None, None, False),
        ("profile=5", "profile", 5, None, False),
    ],
)
def test_valid_commands(text, name, value, group, scale):
    command = parse(text)
    assert (command.name, command.value, command.group, command.scale) == (name, value, group, scale)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("lr=-1", "lr must be positive and at most 1000, got '-1'"),
        ("lr=0", "lr must be positive and at most 1000, got '0'"),
        ("lr=1e39", "lr must be positive and at most 1000, got '1e39'"),
        ("lr=1e-400", "lr must be positive"),  # 0 once read
        ("lr*=2000", "lr*= factor must be positive and at most 1000, got '2000'"),
        ("lr=banana", "lr must be a number written like 0.001 or 3e-4, got 'banana'"),
        ("lr=inf", "must be a number written like"),
        ("lr=nan", "must be a number written like"),
        ("lr=NaN", "must be a number written like"),
        ("lr=1_0", "must be a number written like"),  # float() reads it as 10
        ("lr=0x10", "must be a number written like"),
        ("lr=１", "must be a number written like"),  # full-width: float() reads it as 1
        ("lr=٠.١", "must be a number written like"),  # Arabic-Indic digits: float() reads them as 0.1
        ("lr=\t0.1", "must be a number written like"),
        ("lr=5!!", "must be a number written like"),
        ("lr[１]=0.1", "G must be a param group index"),
        ("profile=²", "profile=N takes a number of steps from 1 to 50, got '²'"),  # isdigit(), int() fails
        ("profile=１", "profile=N takes a number of steps"),  # isdigit(), int() reads 1
        ("profile=٣", "profile=N takes a number of steps"),
        ("profile=9" * 40, "at most 200 characters"),
        ("amp=on!", "'!' confirms a big learning-rate change; send 'amp=on' without it"),
        ("pause!", "send 'pause' without it"),
        ("!", "empty command"),
        pytest.param("x" * 10_000, "a command is at most 200 characters, this one has 10000", id="10000 chars"),
        ("lr[x]=0.1", "G must be a param group index"),
        ("amp=maybe", "amp takes on or off, got 'maybe'"),
        ("profile=0", "profile=N takes a number of steps"),
        ("warp=9", "unknown command 'warp=9'"),
        ("", "empty command"),
    ],
)
def test_bad_commands_say_why(text, reason):
    with pytest.raises(CommandError, match=None) as error:
        parse(text)
    assert reason in str(error.value)


def test_scheduled_form():
    assert parse_scheduled("lr=0.001@20") == ("lr=0.001", 20)
    assert parse_scheduled("lr=banana@40") == ("lr=banana", 40)  # judged when step 40 comes
    assert parse_scheduled(f"lr=0.1@{10**12}") == ("lr=0.1", 10**12)
    bad_steps = ("x", "٣", "²", "１", "-1", "1_0", " 5", str(10**12 + 1), "9" * 150)
    for bad in ("lr=0.1", "lr=0.1@", "@5", *(f"lr=0.1@{step}" for step in bad_steps), "lr=0.1@" + "9" * 5000):
        with pytest.raises(CommandError, match="--control"):
            parse_scheduled(bad)


@pytest.mark.parametrize(
    "text",
    ["", "lr=0.1@" + "9" * 5000, "\x00" * 50, "lr=" + "1" * 190, "lr=1e99999", "@@@", "lr=\u200b1", None],
    ids=["empty", "5000-digit step", "NULs", "190 digits", "huge exponent", "@@@", "zero-width space", "None"],
)
def test_no_input_raises_anything_but_a_command_error(text):
    for reader in (parse, parse_scheduled):
        try:
            reader(text)
        except CommandError:
            pass


def test_a_trailing_bang_confirms_an_lr_change():
    assert parse("lr=0.5!").confirmed and parse("lr*=200 !").confirmed and parse("lr[1]=3!").confirmed
    assert (parse("lr=0.5!").value, parse("lr*=200!").scale) == (0.5, True)
    assert not parse("lr=0.5").confirmed


@pytest.mark.parametrize(
    ("text", "current_lr", "reason"),
    [
        ("lr=5", 0.005, "lr=5 is 1000x the current 0.005: send lr=5! to confirm"),
        ("lr=0.00001", 0.01, "lr=0.00001 is 1/1000 of the current 0.01: send lr=0.00001! to confirm"),
        ("lr[1]=5", 0.001, "lr[1]=5 is 5000x the current 0.001: send lr[1]=5! to confirm"),
        ("lr*=200", None, "lr*=200 multiplies the learning rate by 200: send lr*=200! to confirm"),
        ("lr*=0.001", 0.1, "lr*=0.001 divides the learning rate by 1000: send lr*=0.001! to confirm"),
        ("lr=5!", 0.005, None),  # confirmed
        ("lr*=200!", None, None),
        ("lr=0.3", 0.003, None),  # exactly 100x is not more than 100x
        ("lr=0.00003", 0.003, None),
        ("lr=0.5", 0.005, None),
        ("lr*=100", None, None),
        ("lr=5", None, None),  # no known rate to judge against: the probe judges with the exact one
        ("lr=5", float("nan"), None),
        ("lr=5", 0.0, None),
        ("amp=on", 0.001, None),
        ("profile=5", 0.001, None),
    ],
)
def test_big_change(text, current_lr, reason):
    assert big_change(parse(text), current_lr) == reason


@pytest.mark.parametrize(
    "control",
    ["lr=0.1@²", "lr=0.1@٣", "lr=0.1@" + "9" * 5000, "lr=0.1@" + "9" * 14],
    ids=["superscript", "arabic-indic", "5000 digits", "past 10**12"],
)
def test_a_control_flag_that_cannot_be_read_is_a_one_line_usage_error(control):
    result = optwatch("run", "--headless", "--control", control, str(SCRIPTS / "plain_train.py"))
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("optwatch: --control") and "Traceback" not in result.stderr


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "0"])
def test_summary_every_must_be_a_positive_number(seconds):
    result = optwatch("run", "--headless", "--summary-every", seconds, str(SCRIPTS / "plain_train.py"))
    assert result.returncode == 2 and f"expected a positive number, got '{seconds}'" in result.stderr


def test_a_well_formed_control_with_a_bad_command_is_warned_about_and_the_run_goes_on():
    result = optwatch("run", "--headless", "--control", "profile=²@3", str(SCRIPTS / "plain_train.py"), "--steps", "5")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    warning = "optwatch: warning: --control profile=²@3 will be refused: profile=N takes a number of steps from 1 to 50"
    assert warning in result.stderr
    assert "step 4 loss" in result.stdout
