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


def tensors_by_device(tensors: Sequence[torch.Tensor]) -> dict[torch.device, list[int]]:
    """The indices of ``tensors`` per device."""
    groups: dict[torch.device, list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tensor.device, []).append(index)
    return groups


def norm_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """float32 (half precision would overflow), float64 for float64 tensors (a norm may widen a dtype, never
    narrow it)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def norms_of(
    tensors: Sequence[torch.Tensor],
    order: int,
    device: torch.device,
    by_device: dict[torch.device, list[int]] | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Norms of ``tensors`` (ord 0 counts non-zero entries, a complex one as one entry), as 0-d tensors on
    ``device``, in ``dtype`` (by default ``norm_dtype``'s). ``by_device``: the tensors' indices per device when
    they are on several (model parallel), else None."""
    dtype = dtype or norm_dtype(tensors)
    given = tensors
    complex_entries = [i for i, t in enumerate(tensors) if t.is_complex()]
    if complex_entries:
        # (A complex tensor's 2-norm is its real view's; a real dtype for it made the norm raise, and the
        # per-layer statistics of every layer were switched off for the run.)
        tensors = [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
    if by_device is None:
        result = list(torch._foreach_norm(list(tensors), order, dtype=dtype))
    else:
        result = [None] * len(tensors)  # type: ignore[list-item]
        for indices in by_device.values():
            norms = torch._foreach_norm([tensors[i] for i in indices], order, dtype=dtype)
            for index, norm in zip(indices, norms):
                result[index] = norm.to(device, non_blocking=True)
    if order == 0:
        # A complex entry is zero when both its parts are: counted on the real view, its parts made a count of
        # up to twice its entries (a zero fraction of -1.0, an RMS gradient √2 too small).
        for index in complex_entries:
            entries = torch.count_nonzero(given[index])
            result[index] = entries.to(device=device, dtype=dtype, non_blocking=True)
    return result


def sparse_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norms of sparse gradients (an ``nn.Embedding(sparse=True)``'s, for SparseAdam), each the dense
    gradient's: the values of an index that came more than once summed first, as the optimizer sums them. On
    the CPU only: on a GPU, summing them (``coalesce``) needs their count on the host, a sync."""
    return [torch.linalg.vector_norm(g.coalesce()._values().float()) for g in grads if g.is_sparse and not g.is_cuda]
