"""The probe's plugins, in the order their callbacks run. Each capability adds its plugin here."""

from __future__ import annotations

from optwatch.probe.options import ProbeOptions
from optwatch.probe.plugin import ProbePlugin
from optwatch.probe.profiler import ProfilerPlugin


def enabled(options: ProbeOptions) -> list[ProbePlugin]:
    from optwatch.probe.controls import ControlPlugin
    from optwatch.probe.telemetry import TelemetryPlugin

    plugins: list[ProbePlugin] = [ControlPlugin(options.controls), TelemetryPlugin()]
    plugins.append(ProfilerPlugin(options))  # always on for `p`; idle, it costs one comparison per step
    if options.grad_every > 0:
        from optwatch.probe.grads import GradientPlugin

        plugins.append(GradientPlugin(options))
    return plugins
