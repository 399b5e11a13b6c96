"""System telemetry sampled on the probe's background thread (never the training thread).

The collectors do the measuring; this module adds what only torch knows (the training device's
allocator counters and UUID, intra-op threads) and assembles the fields of a ``system`` record.
"""

from __future__ import annotations

from typing import Any

import torch

from optwatch.collectors import allocator
from optwatch.collectors.host import HostCollector
from optwatch.collectors.nvml import GpuCollector

_host = HostCollector()
_gpus = GpuCollector()
_device_facts: dict[int, tuple[int, str | None]] = {}


def _total_and_uuid(device: int) -> tuple[int, str | None]:
    if device not in _device_facts:
        properties = torch.cuda.get_device_properties(device)
        uuid = getattr(properties, "uuid", None)
        _device_facts[device] = (properties.total_memory, str(uuid) if uuid is not None else None)
    return _device_facts[device]


def sample_system(device: torch.device | None = None) -> dict[str, Any]:
    """The fields of a ``system`` record; ``device`` is where the model trains (None until known)."""
    sample = _host.sample()
    sample["torch_threads"] = torch.get_num_threads()
    current_uuid = None
    # The allocator counters are host-side (no sync). CUDA is initialised by then (the parameters
    # live there); the index must come from ``device``: the current device is per thread.
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        index = device.index if device.index is not None else torch.cuda.current_device()
        total, current_uuid = _total_and_uuid(index)
        sample.update(allocator.summarise(torch.cuda.memory_stats(index), total, index))
    sample.update(_gpus.sample(current_uuid=current_uuid))
    return sample
