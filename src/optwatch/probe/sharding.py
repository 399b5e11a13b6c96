"""Parameters sharded across ranks (FSDP2's ``fully_shard``, tensor parallelism): DTensors, of which each rank
holds its local shard only.

A norm measured on a rank's shards is a part of the whole model's, so each rank measures its own local
shards (``to_local()``: no collective in the training's process group, no host sync) and sends the parts to
the hub, which adds them up across ranks (``hub.shards``). Each part is weighted so that the sum over all
ranks counts every entry once: a tensor replicated over R ranks (a ``Replicate`` placement on mesh
dimensions of R ranks in all) contributes 1/R of its squared norm from each. A part is sent as the root of
its weighted sum of squares, so the hub combines norms as ``sqrt(sum over ranks of part²)`` and counts as
plain sums.

Only a script that has imported ``torch.distributed.tensor`` can hold DTensors: until then nothing here
costs more than a dictionary lookup.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)


def dtensor_class() -> type | None:
    """``DTensor`` if the script has imported it, else None (then no tensor is one)."""
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def is_sharded(tensors: Sequence[torch.Tensor | None]) -> bool:
    """Whether any of ``tensors`` is a DTensor."""
    dtensor = dtensor_class()
    return dtensor is not None and any(isinstance(t, dtensor) for t in tensors)


def local(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's shard on this rank (a plain tensor is its own)."""
    dtensor = dtensor_class()
    return [t.to_local() if isinstance(t, dtensor) else t for t in tensors]  # type: ignore[arg-type]


def replicated_value(tensor: torch.Tensor) -> torch.Tensor | None:
    """A value every rank holds whole (``clip_grad_norm_``'s total norm of DTensor gradients is replicated)
    as a plain tensor; None for a part of one (no collective here to complete it)."""
    dtensor = dtensor_class()
    if dtensor is None or not isinstance(tensor, dtensor):
        return tensor
    if all(placement.is_replicate() for placement in tensor.placements):
        return tensor.to_local()
    return None


_told_partial = False


def share(tensor: torch.Tensor, world_size: int) -> float:
    """The weight of this rank's squared norm of ``tensor``'s local shard in the whole tensor's: 1 over the
    number of ranks that hold the same entries. A plain tensor in a sharded model is taken to be replicated
    on every rank of the job (as DDP keeps it)."""
    global _told_partial
    dtensor = dtensor_class()
    if dtensor is None or not isinstance(tensor, dtensor):
        return 1.0 / max(world_size, 1)
    mesh = tensor.device_mesh
    replicas = 1
    for dim, placement in enumerate(tensor.placements):
        if placement.is_replicate():
            replicas *= mesh.size(dim)
        elif placement.is_partial() and not _told_partial:
            _told_partial = True
            log.warning(
                "optwatch: a gradient or weight with a Partial placement (not yet reduced) is measured as if it "
                "were sharded: its norm is not exact"
            )
    return 1.0 / replicas


def device_vector(values: list[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``values`` as a vector on ``device``, without the host waiting for the device: a list made into a CUDA
    tensor directly is a copy from pageable memory, which waits for the stream; from pinned memory it is not."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def scales(tensors: Sequence[torch.Tensor], world_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The square roots of the tensors' shares, as one vector on ``device``: norms of local shards times
    it are the parts the hub adds up."""
    return device_vector([math.sqrt(share(t, world_size)) for t in tensors], device, dtype)


class NormPart:
    """This rank's part of the global norm of sharded gradients: the root of its weighted sum of squares.

    The scales go to the device once per set of gradients (a list made into a device tensor is a copy the
    host waits for), not at every step."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._scales: torch.Tensor | None = None

    def __call__(self, params: Sequence[torch.Tensor], world_size: int) -> torch.Tensor | None:
        """The part for the gradients of ``params`` (those that have a dense one)."""
        pairs = [(p, p.grad) for p in params if p.grad is not None and not p.grad.is_sparse]
        if not pairs:
            return None
        shards = local([g for _, g in pairs])
        device = shards[0].device
        key = (tuple(id(p) for p, _ in pairs), device)
        if key != self._key:
            self._scales = scales([g for _, g in pairs], world_size, device, torch.float32)
            self._key = key
        norms = torch._foreach_norm(shards, 2, dtype=torch.float32)
        stacked = torch.stack([n.to(device, non_blocking=True) for n in norms])
        return torch.linalg.vector_norm(stacked * self._scales)
