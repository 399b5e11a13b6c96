"""Per-layer gradient statistics, measured when the step's gradients are final and not yet clipped.

Training thread, on each measured step (every detail step, thinned by ``--grad-every N``), with fused
multi-tensor ops and no host sync:
- every parameter's gradient norm (``torch._foreach_norm``): one device vector, whose norm is the step's
  global gradient norm, so the record's ``grad_norm`` and the per-layer figures agree;
- for a chunk of the parameters, in turn: the weight norms, the count of non-zero gradient entries and a
  copy of the weights, which after ``optimizer.step()`` turns into the update (``_foreach_sub_``), whose
  norms give ||Δw||. The parameters are cut into ``ROTATION`` chunks that keep a module's tensors
  together, so a step handles an eighth of them (on a CPU each tensor costs a few microseconds whatever its
  size; on a large model each chunk is as much memory traffic), and each layer's weight norm and update
  ratio are refreshed every ``ROTATION`` measured steps. The copy takes at most ``--grad-update-mb``.
The values travel in a ``layers`` record (fields the hub completes: ``hub.diagnosis.LayerColumns``) and are
read back with the step batch; the hub's diagnosis turns them into alerts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from optwatch import protocol
from optwatch.diagnose.gradients import module_of
from optwatch.options import ProbeOptions
from optwatch.probe import sharding
from optwatch.probe.plugin import ProbeContext, ProbePlugin
from optwatch.probe.vectors import as_vector, norm_dtype, norms_of, sparse_norms, tensors_by_device

ROTATION = 8
"""The weights are measured in this many chunks, one per measured step."""


class _Layout:
    """The parameters measured (those with a dense gradient, in model order) and their chunks."""

    def __init__(self, params: list[torch.Tensor], names: list[str], budget_bytes: float, world_size: int = 1):
        self.params = params
        self.names = names
        self._budget_bytes = budget_bytes
        self.numel = [p.numel() for p in params]
        self.unnamed = all(name.startswith("(unnamed)") for name in names)
        self.device = params[0].device
        groups = tensors_by_device(params)
        self.by_device = groups if len(groups) > 1 else None
        self.dtype = norm_dtype(params)
        self.own_dtype = all(p.dtype == self.dtype for p in params)
        """Every gradient's norm is in its own dtype: ``torch._foreach_norm(grads, 2)`` is what a clip computes."""
        sizes = [p.numel() * p.element_size() for p in params]
        total = sum(sizes)
        chunk_bytes = min(budget_bytes, total / ROTATION)
        self.chunks = self._split(sizes, chunk_bytes)
        self.sharded = sharding.is_sharded(params)
        """Some parameters are DTensors: every figure is measured on this rank's shards, as its part of the
        whole model's (``probe.sharding``), scaled by ``scale`` (per parameter) and ``chunk_scales`` (per
        chunk: the weight norms' and non-zero counts' scales, then the update norms')."""
        self.scale: torch.Tensor | None = None
        self.chunk_scales: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.sharded:
            roots = [math.sqrt(sharding.share(p, world_size)) for p in params]
            self.scale = sharding.device_vector(roots, self.device, self.dtype)
            for chunk in self.chunks:
                weights = [roots[i] for i in chunk]
                both = sharding.device_vector(weights + [r * r for r in weights], self.device, self.dtype)
                self.chunk_scales.append((both, both[: len(chunk)]))
        self.turn = 0
        """The next chunk's turn (counted on: modulo the chunks)."""
        self.source = params
        """The parameters the layout was made for, sparse ones included (what later steps are matched against)."""
        self.dense: list[int] | None = None
        """The indices in ``source`` of the parameters with dense gradients, when some had sparse ones."""
        # Copies kept between steps while all of them fit the budget; made each time otherwise.
        self._keep_copies = total <= budget_bytes
        self._copies: dict[int, list[torch.Tensor]] = {}

    def matches(self, params: list[torch.Tensor]) -> bool:
        return len(params) == len(self.source) and all(a is b for a, b in zip(params, self.source))

    def _split(self, sizes: list[int], chunk_bytes: float) -> list[list[int]]:
        """Chunks of parameter indices of about ``chunk_bytes``, keeping a module's tensors together (a module
        larger than that is a chunk of its own, or its tensors are, up to the copy's budget; a tensor larger
        than the budget gets no update ratio)."""
        modules: dict[str, list[int]] = {}
        for index, name in enumerate(self.names):
            modules.setdefault(module_of(name), []).append(index)
        limit = self._budget_bytes
        chunks: list[list[int]] = []
        current: list[int] = []
        used = 0.0
        for indices in modules.values():
            group = sum(sizes[i] for i in indices)
            pieces = [indices] if group <= limit else [[i] for i in indices if sizes[i] <= limit]
            for piece in pieces:
                piece_size = sum(sizes[i] for i in piece)
                if current and used + piece_size > chunk_bytes:
                    chunks.append(current)
                    current, used = [], 0.0
                current = current + piece
                used += piece_size
        if current:
            chunks.append(current)
        return chunks

    def next_chunk(self) -> tuple[int, list[int]] | None:
        if not self.chunks:
            return None
        turn = self.turn % len(self.chunks)
        self.turn += 1
        return turn, self.chunks[turn]

    def weights(self, chunk: list[int]) -> list[torch.Tensor]:
        """The chunk's parameters as this rank holds them (its shards, when sharded)."""
        weights = [self.params[i] for i in chunk]
        return sharding.local(weights) if self.sharded else weights

    def copies(self, turn: int, weights: list[torch.Tensor]) -> list[torch.Tensor]:
        copies = self._copies.get(turn)
        if copies is None:
            copies = [torch.empty_like(w) for w in weights]
            if self._keep_copies:
                self._copies[turn] = copies
        return copies


@dataclass
class _Measured:
    """What ``on_gradients`` measured, waiting for the update."""

    step: int
    layout: _Layout
    grad_norms: torch.Tensor
    chunk: list[int]
    weight_norms: torch.Tensor | None
    nonzero: torch.Tensor | None
    copies: list[torch.Tensor] | None
    turn: int = 0


class GradientPlugin(ProbePlugin):
    name = "grads"
    between_detail_steps = frozenset()

    def __init__(self, options: ProbeOptions):
        self.every = options.grad_every
        self.budget_bytes = options.grad_update_mb * 2**20
        self._detail_steps = 0
        self._layout: _Layout | None = None
        self._order_key: tuple | None = None
        self._ordered: list[torch.Tensor] = []
        self._order_source: list[torch.Tensor] | None = None
        self._measured: _Measured | None = None
        self._weighed_at: dict[int, int] = {}
        """Per parameter (by id), the measured step its weight and update norms were last taken at."""

    def on_gradients(self, context: ProbeContext, optimizer: torch.optim.Optimizer | None) -> None:
        if self._detail_steps % self.every:
            return
        ordered = self._in_model_order(context)
        # (Each ``.grad`` costs a microsecond: read once.) A frozen parameter's gradient is no gradient, though
        # ``zero_grad(set_to_none=False)`` leaves it zeros: a backbone frozen on purpose does not "vanish".
        grads = [p.grad if p.requires_grad else None for p in ordered]
        if any([g is None for g in grads]):
            params = [p for p, g in zip(ordered, grads) if g is not None]
            grads = [g for g in grads if g is not None]
        else:
            params = ordered  # the same list object step after step: the layout matches at a glance
        if not params:
            return
        layout = self._layout
        sparse: list[torch.Tensor] = []  # (no layer statistics of theirs; they count in the global norm)
        names = context.parameter_names()
        if layout is None or not (layout.source is params or layout.matches(params)) or (layout.unnamed and names):
            # (Before the first optimizer step the model, and so the names, may not be known yet.)
            source, dense = params, None
            if any(g.is_sparse for g in grads):
                dense = [i for i, g in enumerate(grads) if not g.is_sparse]
                sparse = [g for g in grads if g.is_sparse]
                params, grads = [params[i] for i in dense], [grads[i] for i in dense]
                if not params:  # (SparseAdam alone: an embedding model)
                    norms = sparse_norms(sparse)
                    if norms and not context.clip_measures:
                        context.report_grad_norm(torch.linalg.vector_norm(torch.stack(norms)))
                    return
            labels = [names.get(id(p)) or f"(unnamed).{i}" for i, p in enumerate(params)]
            layout = self._layout = _Layout(params, labels, self.budget_bytes, context.world_size)
            layout.source, layout.dense = source, dense
            if self._weighed_at:  # the set of gradients changed (an expert idle, a layer unfrozen): go on in turn
                layout.turn = self._stalest_chunk(layout)
        else:
            params = layout.params  # the same parameters: keep the layout's list
            if layout.dense is not None:  # (the sparse gradients left out, as when it was made)
                sparse = [g for g in grads if g.is_sparse]
                grads = [grads[i] for i in layout.dense]
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(False)  # (cheaper than entering ``torch.no_grad()``: this runs every step)
        try:
            if layout.sharded:
                grads = sharding.local(grads)
            if context.clip_measures and layout.own_dtype and layout.by_device is None and not layout.sharded:
                # The norms the script's clip_grad_norm_ is about to compute, computed as it would: it takes
                # them from here instead of computing them a second time.
                started = time.perf_counter()
                norms = torch._foreach_norm(grads, 2)
                seconds = time.perf_counter() - started
                grad_norms = as_vector(norms)
                context.share_grad_norms(grads, norms, seconds, grad_norms)  # (the clip stacks them no more)
            else:
                grad_norms = as_vector(norms_of(grads, 2, layout.device, layout.by_device, layout.dtype))
            if layout.scale is not None:
                grad_norms = grad_norms * layout.scale
            if not context.clip_measures:
                total = torch.linalg.vector_norm(grad_norms)
                if sparse and not layout.sharded:  # (their layers have no statistics; the norm is the whole's)
                    total = torch.linalg.vector_norm(torch.stack([total, *(n.to(total) for n in sparse_norms(sparse))]))
                    # (on a GPU, sparse_norms gives none: the norm is the dense gradients', as gradients.md says)
                context.report_grad_norm(total, part=layout.sharded)
            measured = _Measured(context.step, layout, grad_norms, [], None, None, None)
            turn_chunk = layout.next_chunk()
            if turn_chunk is not None:
                turn, chunk = turn_chunk
                weights = layout.weights(chunk)
                groups = tensors_by_device(weights) if layout.by_device else None
                measured.chunk = chunk
                for index in chunk:
                    self._weighed_at[id(layout.params[index])] = self._detail_steps
                # Weight norms and non-zero counts in one vector: one stack, not two.
                both = as_vector(
                    norms_of(weights, 2, layout.device, groups, layout.dtype)
                    + norms_of([grads[i] for i in chunk], 0, layout.device, groups, layout.dtype)
                )
                if layout.sharded:
                    both = both * layout.chunk_scales[turn][0]
                    measured.turn = turn
                measured.weight_norms, measured.nonzero = both[: len(chunk)], both[len(chunk) :]
                measured.copies = layout.copies(turn, weights)
                torch._foreach_copy_(measured.copies, weights)
        finally:
            torch.set_grad_enabled(grad_enabled)
        self._measured = measured

    def _stalest_chunk(self, layout: _Layout) -> int:
        """The chunk whose parameters' update ratios are the oldest: where a new layout starts its turns, so that
        a set of gradients that changes at every step (a mixture of experts) still has each one measured."""
        if not layout.chunks:
            return 0
        ages = [min(self._weighed_at.get(id(layout.params[i]), -1) for i in chunk) for chunk in layout.chunks]
        return ages.index(min(ages))

    def _in_model_order(self, context: ProbeContext) -> list[torch.Tensor]:
        """The step's parameters (the primary optimizer's and its partners') in the model's order (param groups
        may split and reorder them)."""
        flat = context.parameters()
        if flat is self._order_source:
            return self._ordered  # the probe's list, the same while the param groups are: known at a glance
        key = tuple(map(id, flat))
        self._order_source = flat
        if key == self._order_key:
            return self._ordered
        position = {pid: i for i, pid in enumerate(context.parameter_names())}
        self._ordered = sorted(flat, key=lambda p: position.get(id(p), len(position)))
        self._order_key = key
        return self._ordered

    def after_step(self, context: ProbeContext, record: dict[str, Any]) -> None:
        measured, self._measured = self._measured, None
        self._detail_steps += context.next_detailed
        if measured is None or measured.step != record["step"] or record.get("amp_overflow"):
            return  # nothing measured, or a step the scaler skipped: no weight changed
        layout, update = measured.layout, None
        if measured.copies is not None:
            grad_enabled = torch.is_grad_enabled()
            torch.set_grad_enabled(False)
            try:
                torch._foreach_sub_(measured.copies, layout.weights(measured.chunk))
                groups = tensors_by_device(measured.copies) if layout.by_device else None
                update = as_vector(norms_of(measured.copies, 2, layout.device, groups, layout.dtype))
                if layout.sharded:
                    update = update * layout.chunk_scales[measured.turn][1]
            finally:
                torch.set_grad_enabled(grad_enabled)
        names = layout.names
        if layout.unnamed:  # (a clip before the first optimizer step: the model's names are known now it stepped)
            known = context.parameter_names()
            names = [known.get(id(p)) or name for p, name in zip(layout.params, names)] if known else names
        # Each vector travels as it is: readback packs a batch's values together anyway.
        layers = protocol.make_record(
            protocol.LAYERS,
            context.rank,
            step=record["step"],
            names=names,
            numel=layout.numel,
            grad_norm=measured.grad_norms,
            _chunk=measured.chunk,
            _weight=measured.weight_norms,
            _update=update,
            _nonzero=measured.nonzero,
            every=self.every * context.detail_every,
        )
        if layout.sharded:
            layers["_sharded"] = True  # parts of the whole model's norms, for the hub to add up
        context.emit(layers)
