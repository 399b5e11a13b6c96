"""The control language: what is accepted, and the reasons given for what is not."""

from __future__ import annotations

import pytest

from optwatch.controls import CommandError, parse, parse_scheduled


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
        ("lr=-1", "lr must be a positive finite number, got '-1'"),
        ("lr=banana", "lr must be a number, got 'banana'"),
        ("lr=inf", "positive finite"),
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
    for bad in ("lr=0.1", "lr=0.1@", "lr=0.1@x", "@5"):
        with pytest.raises(CommandError, match="--control"):
            parse_scheduled(bad)
