"""A probe in the benchmark's own process, with a real hub process beside it, as `optwatch run` sets them up.

probe = instrument(model, optimizer, {"budget": 0.0})
... train ...
records = published(probe)   # closes the probe, then reads what its hub kept
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from optwatch import hub
from optwatch.options import ProbeOptions
from optwatch.probe.channel import Channel
from optwatch.probe.probe import Probe
from optwatch.probe.start import build_plugins
from optwatch.wire import runtime

_runs = itertools.count()


def instrument(model: Any, optimizer: Any, settings: dict[str, Any]) -> Probe:
    """A started probe watching ``model`` with ``settings`` over the benchmarks' defaults (``ProbeOptions``
    fields), its hub a process of its own."""
    run_dir = runtime.make_run_dir(f"bench-{os.getpid()}-{next(_runs)}")
    # The steady state at once: the first steps, checked whatever they cost before the budget applies, are a
    # transient a benchmark's short rounds would otherwise never leave.
    options = ProbeOptions(script="bench", **{"grad_full_cadence_steps": 0, **settings})
    hub.spawn(run_dir, run_dir.name, job_pid=os.getpid())
    probe = Probe(run_dir, run_dir.name, options, Channel(run_dir), build_plugins(options)).start()
    probe.attach(model=model, optimizer=optimizer)
    return probe


def published(probe: Probe) -> list[dict[str, Any]]:
    """Close ``probe`` and return every record its hub kept (it stays a few seconds after the end)."""
    from optwatch.wire.subscriber import Feed

    probe.close()
    feed = Feed(f"ipc://{probe.run_dir / 'pub.sock'}", f"ipc://{probe.run_dir / 'ctl.sock'}")
    try:
        return feed.history()
    finally:
        feed.close()
