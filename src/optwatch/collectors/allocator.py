"""PyTorch's CUDA caching allocator, summarised from ``torch.cuda.memory_stats()``.

The probe's sampler reads the counters (host-side, no sync) and hands them here; this module stays
torch-free so the arithmetic is testable anywhere. Keys absent from an older torch read as None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def summarise(stats: Mapping[str, Any], total_bytes: int | None, device: int | None = None) -> dict[str, Any]:
    """The ``mem_*`` fields of a ``system`` record (see docs/telemetry.md)."""
    allocated = stats.get("allocated_bytes.all.current")
    reserved = stats.get("reserved_bytes.all.current")
    return {
        "mem_device": device,
        "mem_allocated_bytes": allocated,
        "mem_reserved_bytes": reserved,
        "mem_peak_bytes": stats.get("allocated_bytes.all.peak"),
        # Held by the allocator but not handed out: cached blocks and the split remainders of
        # fragmented ones. Large and growing while allocations fail means fragmentation.
        "mem_fragmentation_bytes": reserved - allocated if reserved is not None and allocated is not None else None,
        "mem_total_bytes": total_bytes,
        "mem_headroom_bytes": total_bytes - reserved if total_bytes is not None and reserved is not None else None,
        # cudaMalloc failed, the allocator freed its cache and tried again: a full device-wide stall.
        "mem_alloc_retries": stats.get("num_alloc_retries"),
        "mem_ooms": stats.get("num_ooms"),
    }
