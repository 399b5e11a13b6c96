"""Per-tensor statistics gathered into one vector with as few operator calls as the device allows.

Every operator called from Python costs the training thread a few microseconds on a GPU box, whatever
its size; on a host-bound step that is the whole of optwatch's cost. Stacking N 0-d results is one call
from Python but 2N view operators inside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def as_vector(scalars: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 0-d tensors ``scalars`` as one 1-d tensor.

    Where a fused multi-tensor op (CUDA's ``torch._foreach_norm`` in some torch versions) returns its N
    results as views of one buffer of N, that buffer is the vector already, at no operator call. Anything
    else is stacked (torch 2.11's CUDA build allocates each result apart). Only the ends are compared: the
    results of one call are either all views of its buffer, in order, or none are.
    """
    first, last = scalars[0], scalars[-1]
    base = first._base
    if (
        base is not None
        and last._base is base
        and base.dim() == 1
        and base.numel() == len(scalars)
        and base.stride(0) == 1
        and first.storage_offset() == base.storage_offset()
        and last.storage_offset() == base.storage_offset() + len(scalars) - 1
    ):
        return base
    return torch.stack(list(scalars))
