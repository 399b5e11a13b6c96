"""The control language shared by the dashboard, `optwatch ctl`, `--control` and the probe. No torch.

    lr=V        every param group's learning rate
    lr*=F       scale every group's learning rate by F
    lr[G]=V     one param group
    amp=on|off  autocast (bf16 where supported, else fp16 with loss scaling) around forward and loss
    cudnn_benchmark=on|off
    pause | resume | stop
    pause=S     pause for at most S seconds (a lease: a viewer that paused and went away holds nothing)
    profile=N   a profiler window over the next N steps

A command is applied at a step boundary; ``@N`` (in ``--control``) means "in effect for step N".

What is accepted, whoever sends it (a peer, a typo):
- a command is at most 200 characters (with its ``@STEP``); nothing longer is looked at;
- numbers are ASCII decimals, ``0.001``, ``3e-4``, ``.5``: no underscores, no ``nan``/``inf``, no other
  digits (``²``, ``１``, ``٣``); a step is a whole number from 0 to 10**12;
- a learning rate V is positive and at most 1000 (> 0, <= 1000), and so is a factor F;
- a change of the learning rate by more than 100x, up or down, must be confirmed with a trailing ``!``
  (``lr=5!``, ``lr*=200!``); see ``big_change``. ``!`` on any other command is an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from optwatch.options import MAX_PROFILE_STEPS  # one limit, however a window is asked for

MAX_COMMAND_CHARS = 200
MAX_STEP = 10**12
MAX_LR = 1000.0
MAX_PAUSE_S = 7 * 24 * 3600.0
BIG_CHANGE = 100.0
"""A learning-rate change by more than this factor, up or down, needs a ``!``."""

_LR = re.compile(r"lr(?:\[(?P<group>[^\]]*)\])?(?P<op>\*?=)(?P<value>.*)", re.DOTALL)
_WHOLE = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class CommandError(ValueError):
    """A command that cannot be applied; the message says why, for the person who typed it."""


@dataclass(frozen=True)
class Command:
    name: str  # lr, amp, cudnn_benchmark, pause, resume, stop, profile
    raw: str
    value: float | bool | int | None = None
    group: int | None = None  # lr[G]
    scale: bool = False  # lr*=F
    confirmed: bool = False  # a trailing "!": a big learning-rate change is meant


def _check_length(text: object, what: str = "a command") -> str:
    if not isinstance(text, str):
        raise CommandError(f"{what} is text, got {type(text).__name__}")
    if len(text) > MAX_COMMAND_CHARS:
        raise CommandError(f"{what} is at most {MAX_COMMAND_CHARS} characters, this one has {len(text)}")
    return text


def _whole(text: str) -> int | None:
    """A whole number written in ASCII digits, else None (``str.isdigit`` also takes ``²`` and ``١``)."""
    return int(text) if _WHOLE.fullmatch(text) else None


def _learning_rate(text: str, what: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise CommandError(f"{what} must be a number written like 0.001 or 3e-4, got {text!r}")
    value = float(text)
    if not 0 < value <= MAX_LR:
        raise CommandError(f"{what} must be positive and at most {MAX_LR:g}, got {text!r}")
    return value


def _switch(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise CommandError(f"{name} takes on or off, got {text!r}")


def parse(text: str) -> Command:
    """A command from its text; raises CommandError with a reason a person can act on, and nothing else."""
    raw = _check_length(text).strip()
    compact = raw.replace(" ", "")
    confirmed = compact.endswith("!")
    if confirmed:
        compact = compact[:-1]
    if not compact:
        raise CommandError("empty command")
    match = _LR.fullmatch(compact)
    if match:
        group_text, op, value_text = match.group("group"), match.group("op"), match.group("value")
        group = None
        if group_text is not None:
            group = _whole(group_text)
            if group is None:
                raise CommandError(f"lr[G]: G must be a param group index (0, 1, ...), got {group_text!r}")
        if op == "*=":
            if group is not None:
                raise CommandError("lr[G]*=F is not supported; use lr[G]=V")
            return Command("lr", raw, _learning_rate(value_text, "lr*= factor"), scale=True, confirmed=confirmed)
        return Command("lr", raw, _learning_rate(value_text, "lr"), group=group, confirmed=confirmed)
    if confirmed:
        raise CommandError(f"'!' confirms a big learning-rate change; send {raw[:-1].strip()!r} without it")
    name, sep, value_text = compact.partition("=")
    if name == "amp" and sep:
        return Command("amp", raw, _switch(value_text, "amp"))
    if name in ("cudnn_benchmark", "cudnn.benchmark") and sep:
        return Command("cudnn_benchmark", raw, _switch(value_text, "cudnn_benchmark"))
    if name == "profile" and sep:
        steps = _whole(value_text)
        if steps is None or not 0 < steps <= MAX_PROFILE_STEPS:
            raise CommandError(f"profile=N takes a number of steps from 1 to {MAX_PROFILE_STEPS}, got {value_text!r}")
        return Command("profile", raw, steps)
    if name in ("pause", "resume", "stop") and not sep:
        return Command(name, raw)
    if name == "pause" and sep:
        seconds = float(value_text) if _DECIMAL.fullmatch(value_text) else math.nan
        if not 0 < seconds <= MAX_PAUSE_S:
            raise CommandError(f"pause=S takes a number of seconds, more than 0 and at most a week, got {value_text!r}")
        return Command("pause", raw, seconds)
    known = "lr=V, lr*=F, lr[G]=V, amp=on|off, cudnn_benchmark=on|off, pause, pause=S, resume, profile=N, stop"
    raise CommandError(f"unknown command {raw!r}; known: {known}")


def parse_scheduled(text: str) -> tuple[str, int]:
    """``COMMAND@STEP`` -> (command text, step). Only the form is checked here; the command itself is
    judged when its step comes, and refused then (with an event record) if it cannot be applied."""
    command, sep, step_text = _check_length(text, "--control COMMAND@STEP").rpartition("@")
    if not sep or not command:
        raise CommandError(f"--control wants COMMAND@STEP (e.g. lr=0.001@20), got {text!r}")
    step = _whole(step_text)
    if step is None or step > MAX_STEP:
        raise CommandError(f"--control {text!r}: the step after @ must be a whole number from 0 to 10**12")
    return command, step


def parse_or_none(text: str) -> Command | None:
    try:
        return parse(text)
    except CommandError:
        return None


def big_change(command: Command, current_lr: float | None) -> str | None:
    """Why ``command`` must be confirmed before it is applied, or None when it need not be.

    An unconfirmed learning-rate change by more than ``BIG_CHANGE`` times, up or down, against
    ``current_lr`` (the rate of the group or groups it changes); ``lr*=F`` is judged by F alone. With no
    current rate known (None, or not a positive finite number), ``lr=V`` needs no confirmation here.
    """
    if command.name != "lr" or command.confirmed or not isinstance(command.value, float):
        return None
    # A hair of slack, so that an exact 100x (0.3 from 0.003) is not pushed over by rounding.
    limit = BIG_CHANGE * (1 + 1e-9)
    if command.scale:
        factor = command.value
        if factor > limit:
            return f"{command.raw} multiplies the learning rate by {factor:.4g}: send {command.raw}! to confirm"
        if 1 / factor > limit:
            return f"{command.raw} divides the learning rate by {1 / factor:.4g}: send {command.raw}! to confirm"
        return None
    if current_lr is None or isinstance(current_lr, bool) or not math.isfinite(current_lr) or current_lr <= 0:
        return None
    if command.value / current_lr > limit:
        size = f"{command.value / current_lr:.4g}x"
    elif current_lr / command.value > limit:
        size = f"1/{current_lr / command.value:.4g} of"
    else:
        return None
    return f"{command.raw} is {size} the current {current_lr:.3g}: send {command.raw}! to confirm"
