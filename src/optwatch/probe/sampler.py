"""System telemetry sampled on the probe's background thread (never the training thread).

The collectors do the measuring; this module adds what only torch knows (the training device's
allocator counters and UUID, intra-op threads), assembles the fields of a ``system`` record, and runs the
thread that makes one every few tenths of a second with what the plugins add to it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from optwatch import protocol
from optwatch.collectors import allocator
from optwatch.collectors.host import HostCollector
from optwatch.collectors.nvml import GpuCollector
from optwatch.probe.channel import Channel
from optwatch.probe.plugin import ProbeContext

log = logging.getLogger(__name__)

_host = HostCollector()
_gpus = GpuCollector()
_device_facts: dict[int, tuple[int, str | None]] = {}


def _total_and_uuid(device: int) -> tuple[int, str | None]:
    if device not in _device_facts:
        properties = torch.cuda.get_device_properties(device)
        uuid = getattr(properties, "uuid", None)
        _device_facts[device] = (properties.total_memory, str(uuid) if uuid is not None else None)
    return _device_facts[device]


def sample_system(
    device: torch.device | None = None,
    torch_threads: int | None = None,
    worker_pids: list[int] | None = None,
    thread: int | None = None,
) -> dict[str, Any]:
    """The fields of a ``system`` record; ``device`` is where the model trains (None until known);
    ``torch_threads`` as the training thread reads them, None until it has (this thread's own count can
    differ: OpenMP keeps one per thread, fixed once a thread has asked, before a script's later
    ``torch.set_num_threads``: a short run's verdict said "2 threads" for a script that set 1). ``thread``:
    the training thread's native id, whose wait for a core is measured."""
    sample = _host.sample(worker_pids, thread)
    sample["torch_threads"] = torch_threads
    current_uuid = None
    # The allocator counters are host-side (no sync). CUDA is initialised by then (the parameters
    # live there); the index must come from ``device``: the current device is per thread.
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        index = device.index if device.index is not None else torch.cuda.current_device()
        total, current_uuid = _total_and_uuid(index)
        sample.update(allocator.summarise(torch.cuda.memory_stats(index), total, index))
    sample.update(_gpus.sample(current_uuid=current_uuid))
    return sample


def _native_id(context: ProbeContext) -> int | None:
    """The training thread's id in the kernel's terms (the one the probe started in before it is known)."""
    ident = context.training_thread or context.started_in
    return next((thread.native_id for thread in threading.enumerate() if thread.ident == ident), None)


class Sampler:
    """The probe's sampler thread: every ``interval_s`` a ``system`` record (with the DataLoader's settings,
    ``loader()``) and what each plugin's ``sample`` callback adds. A collector that fails is logged once and
    switched off; the others and the training go on. Its CPU time is charged to optwatch's background cost."""

    def __init__(
        self,
        context: ProbeContext,
        channel: Channel,
        callbacks: Callable[[], list[tuple[str, Callable[..., Any]]]],
        loader: Callable[[], dict[str, Any]],
        interval_s: float,
        tick: Callable[[], None] | None = None,
        worker_pids: Callable[[], list[int] | None] = lambda: None,
    ) -> None:
        self._worker_pids = worker_pids
        """The training DataLoader's worker processes, where it is known (else the process's children)."""
        self._tick = tick
        """Called at each sample, on this thread (the probe's check for steps held back in a pause)."""
        self._context = context
        self._channel = channel
        self._callbacks = callbacks
        self._loader = loader
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="optwatch-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop, and wait for a sample under way (a few milliseconds): after this no thread of the sampler
        holds the probe, which a closed probe must let go of with its model."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        context, channel = self._context, self._channel
        failed: set[str] = set()
        while not self._stop.wait(self._interval_s):
            started = time.thread_time()
            records = []
            try:
                system = protocol.make_record(
                    protocol.SYSTEM,
                    context.rank,
                    step=context.step,
                    **sample_system(context.device, context.torch_threads, self._worker_pids(), _native_id(context)),
                )
                system["dropped"] = channel.dropped
                if context.held:
                    system["held"] = True  # (a pause: its idle CPU is no step's, as its time is not)
                loader = self._loader()
                if loader:
                    system["loader"] = loader
                records.append(system)
            except Exception:
                if "system" not in failed:
                    log.exception("optwatch: system sampling failed; training goes on")
                    failed.add("system")
                system = {}
            for name, callback in self._callbacks():
                if name in failed:
                    continue
                try:
                    records.extend(callback(context, system))
                except Exception:
                    # Logged once and switched off: a broken collector must not spam or stop the others.
                    log.exception("optwatch: %s sampling failed; it is switched off", name)
                    failed.add(name)
            if records:
                channel.submit_records(records)
            if self._tick is not None and "tick" not in failed:
                try:
                    self._tick()
                except Exception:
                    log.exception("optwatch: its idle check failed; it is switched off")
                    failed.add("tick")
            channel.add_cpu(time.thread_time() - started)
