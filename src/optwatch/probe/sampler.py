"""Host and allocator figures sampled on the probe's background thread (never the training thread)."""

from __future__ import annotations

import os
from typing import Any

import psutil
import torch

_process = psutil.Process(os.getpid())


def sample_system() -> dict[str, Any]:
    with _process.oneshot():
        sample: dict[str, Any] = {
            "cpu_percent": _process.cpu_percent(None),
            "rss_bytes": _process.memory_info().rss,
        }
    memory = psutil.virtual_memory()
    sample["host_mem_used_bytes"] = memory.total - memory.available
    sample["host_mem_total_bytes"] = memory.total
    # Only read allocator counters if the script already initialised CUDA: they are host-side
    # counters (no sync), and initialising CUDA from here would cost the user a context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        sample["mem_allocated_bytes"] = torch.cuda.memory_allocated(device)
        sample["mem_reserved_bytes"] = torch.cuda.memory_reserved(device)
        sample["mem_peak_bytes"] = torch.cuda.max_memory_allocated(device)
        sample["mem_total_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return sample
