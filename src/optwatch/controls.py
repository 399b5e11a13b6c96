"""The control language shared by the dashboard, `optwatch ctl`, `--control` and the probe. No torch.

    lr=V        every param group's learning rate
    lr*=F       scale every group's learning rate by F
    lr[G]=V     one param group
    amp=on|off  autocast (bf16 where supported, else fp16 with loss scaling) around forward and loss
    cudnn_benchmark=on|off
    pause | resume | stop
    profile=N   a profiler window over the next N steps

A command is applied at a step boundary; ``@N`` (in ``--control``) means "in effect for step N".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from optwatch.probe.options import MAX_PROFILE_STEPS  # one limit, however a window is asked for

_LR = re.compile(r"^lr(?:\[(?P<group>[^\]]*)\])?(?P<op>\*?=)(?P<value>.*)$")


class CommandError(ValueError):
    """A command that cannot be applied; the message says why, for the person who typed it."""


@dataclass(frozen=True)
class Command:
    name: str  # lr, amp, cudnn_benchmark, pause, resume, stop, profile
    raw: str
    value: float | bool | int | None = None
    group: int | None = None  # lr[G]
    scale: bool = False  # lr*=F


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CommandError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise CommandError(f"{what} must be a positive finite number, got {text!r}")
    return value


def _switch(text: str, name: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise CommandError(f"{name} takes on or off, got {text!r}")


def parse(text: str) -> Command:
    """A command from its text; raises CommandError with a reason a person can act on."""
    raw = text.strip()
    compact = raw.replace(" ", "")
    if not compact:
        raise CommandError("empty command")
    match = _LR.match(compact)
    if match:
        group_text, op, value_text = match.group("group"), match.group("op"), match.group("value")
        group = None
        if group_text is not None:
            if not group_text.isdigit():
                raise CommandError(f"lr[G]: G must be a param group index (0, 1, ...), got {group_text!r}")
            group = int(group_text)
        if op == "*=":
            if group is not None:
                raise CommandError("lr[G]*=F is not supported; use lr[G]=V")
            return Command("lr", raw, _number(value_text, "lr*= factor"), scale=True)
        return Command("lr", raw, _number(value_text, "lr"), group=group)
    name, sep, value_text = compact.partition("=")
    if name == "amp" and sep:
        return Command("amp", raw, _switch(value_text, "amp"))
    if name in ("cudnn_benchmark", "cudnn.benchmark") and sep:
        return Command("cudnn_benchmark", raw, _switch(value_text, "cudnn_benchmark"))
    if name == "profile" and sep:
        if not value_text.isdigit() or not 0 < int(value_text) <= MAX_PROFILE_STEPS:
            raise CommandError(f"profile=N takes a number of steps from 1 to {MAX_PROFILE_STEPS}, got {value_text!r}")
        return Command("profile", raw, int(value_text))
    if name in ("pause", "resume", "stop") and not sep:
        return Command(name, raw)
    known = "lr=V, lr*=F, lr[G]=V, amp=on|off, cudnn_benchmark=on|off, pause, resume, profile=N, stop"
    raise CommandError(f"unknown command {raw!r}; known: {known}")


def parse_scheduled(text: str) -> tuple[str, int]:
    """``COMMAND@STEP`` -> (command text, step). Only the form is checked here; the command itself is
    judged when its step comes, and refused then (with an event record) if it cannot be applied."""
    command, sep, step_text = text.rpartition("@")
    if not sep or not command:
        raise CommandError(f"--control wants COMMAND@STEP (e.g. lr=0.001@20), got {text!r}")
    if not step_text.isdigit():
        raise CommandError(f"--control {text!r}: the step after @ must be a whole number >= 0")
    return command, int(step_text)


def parse_or_none(text: str) -> Command | None:
    try:
        return parse(text)
    except CommandError:
        return None
