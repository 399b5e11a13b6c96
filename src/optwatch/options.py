"""Settings that travel from `optwatch run` to the training process, as JSON in its environment.

Neutral ground: the CLI, the probe, the hub and the dashboard all read these, and none of them pays for
torch or textual to do so.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field

ENV_RUN_DIR = "OPTWATCH_RUN_DIR"
ENV_RUN_ID = "OPTWATCH_RUN_ID"
ENV_OPTIONS = "OPTWATCH_OPTIONS"
ENV_HUB = "OPTWATCH_HUB"  # HOST:PORT of the hub's --listen address, for ranks on other nodes
ENV_TOKEN = "OPTWATCH_TOKEN"  # a job's token (multi-node jobs share one; viewers read it instead of --token)
ENV_OUTPUT_PIPES = "OPTWATCH_OUTPUT_PIPES"
"""The pipes `optwatch run` made for the script's stdout and stderr (``wire.logs.OutputPipes``); the probe takes
it out of the environment the script sees."""
ENV_PROBE_PID = "OPTWATCH_PROBE_PID"
"""Set by a running probe for the processes its script starts: a Python started by the script that calls
``optwatch.watch`` is a run of its own, never a second rank 0 of this one."""

FORWARD_CHECK_MODES = ("auto", "always", "off")

DEFAULT_PROFILE_STEPS = 5  # a window from --profile-at START or the dashboard's `p`
PERIODIC_PROFILE_STEPS = 3  # a window from --profile-every N
MAX_PROFILE_STEPS = 50
MAX_PROFILE_DUTY = 0.1  # --profile-every profiles at most this share of the steps, warm-up step included


def _whole(text: str, what: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected {spec}, got {what!r}") from None


def parse_profile_at(text: str) -> list[int]:
    """``START[:COUNT]`` -> ``[start, count]``; ValueError with a message for the user."""
    spec = "START:COUNT such as 10:5"
    start_text, _, count_text = text.partition(":")
    start = _whole(start_text, text, spec)
    count = _whole(count_text, text, spec) if count_text else DEFAULT_PROFILE_STEPS
    if start < 0:
        raise ValueError(f"START is a step number (the first step is 0), got {start}")
    if not 1 <= count <= MAX_PROFILE_STEPS:
        raise ValueError(f"COUNT must be from 1 to {MAX_PROFILE_STEPS} steps, got {count}")
    return [start, count]


def parse_profile_every(text: str) -> list[int]:
    """``N[:COUNT]`` -> ``[period, count]``, refusing a duty cycle above ``MAX_PROFILE_DUTY``."""
    spec = "N or N:COUNT such as 500:3"
    period_text, _, count_text = text.partition(":")
    period = _whole(period_text, text, spec)
    count = _whole(count_text, text, spec) if count_text else PERIODIC_PROFILE_STEPS
    if not 1 <= count <= MAX_PROFILE_STEPS:
        raise ValueError(f"COUNT must be from 1 to {MAX_PROFILE_STEPS} steps, got {count}")
    least = round((count + 1) / MAX_PROFILE_DUTY)
    if period < least:
        raise ValueError(
            f"every {period} steps is too often for {count}-step windows (plus a warm-up step): "
            f"optwatch profiles at most {MAX_PROFILE_DUTY:.0%} of the steps, so N must be at least {least}"
        )
    return [period, count]


@dataclass
class ProbeOptions:
    """Settings that travel from `optwatch run` to the training process (as JSON in the environment)."""

    publish_interval_s: float = 0.25
    system_interval_s: float = 0.5
    script: str = ""
    argv: list[str] = field(default_factory=list)
    listen: str | None = None  # HOST:PORT for a token-protected TCP endpoint (rank 0)
    controls: list[str] = field(default_factory=list)  # COMMAND@STEP, applied at that step
    profile_at: list[list[int]] = field(default_factory=list)
    """Profiler windows ``[first_step, steps]`` asked for with ``--profile-at``."""
    profile_every: list[int] | None = None
    """``[period, steps]``: a profiler window every ``period`` steps (``--profile-every``)."""
    grad_every: int = 1
    """Gradient statistics (and forward checks) every N optimizer steps; 0 turns gradient diagnostics off."""
    grad_budget: float = 0.005
    """Largest share of the step time that the per-layer gradient statistics may take: above it they thin
    themselves to every 2nd, 3rd, 4th detail step (back to every one after a non-finite value).
    0: never thin."""
    grad_full_cadence_steps: int = 100
    """Steps measured at ``grad_every``, and given every diagnostic, whatever they cost, before the budgets
    apply (the diagnosis builds its baselines there). Benchmarks lower it to measure the steady state in
    fewer steps."""
    budget: float = 0.01
    """Largest share of the step time optwatch may take on average (its code on the training thread and its
    threads' CPU time, as the live figure counts them), kept by spacing out the diagnostics it can:
    the forward check, the gradient norms and statistics, and the device's phase timing run on every
    step while they cost less, else on every Nth step ("detail steps"; back to every step after a
    non-finite value). 0: every step, whatever it costs."""
    grad_update_mb: float = 256.0
    """Memory for the weight snapshot behind update ratios (MiB); 0: no update ratios."""
    grad_thresholds: dict[str, float] = field(default_factory=dict)
    """Overrides of ``optwatch.diagnose.gradients.Thresholds``."""
    forward_check: str = "auto"
    """Checking each module's forward output for NaN/Inf, to name where a non-finite value was born: ``auto``
    from the first non-finite loss or gradient norm on (a check costs a hook on every module call),
    ``always`` from the first step, ``off`` never."""
    runs_dir: str | None = ""
    """Where the job's hub records the run (``<runs_dir>/<run_id>/record.jsonl.gz``): "" for the default
    (``$OPTWATCH_RUNS_DIR``, else ``./optwatch-runs``, see ``optwatch.runs``), None for no record."""
    capture_output: bool = False
    """The probe takes the script's stdout and stderr into capped log files in the run directory (``optwatch
    run`` asks for it; a script started with plain ``python`` keeps its terminal)."""

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ProbeOptions:
        raw = os.environ.get(ENV_OPTIONS)
        if not raw:
            return cls(script=sys.argv[0] if sys.argv else "", argv=list(sys.argv[1:]))
        data = json.loads(raw)
        options = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        if options.forward_check not in FORWARD_CHECK_MODES:
            options.forward_check = "auto"
        return options
