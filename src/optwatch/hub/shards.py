"""Norms of a sharded model (FSDP2, tensor parallelism) made whole: the ranks' parts added up, in the hub.

With sharded parameters each rank holds a shard of each gradient and weight, so what it measures is a part
of the whole model's figure (``probe.sharding``). Its ``step`` and ``layers`` records say so with
``_sharded: true``; their norms are then parts: the root of the rank's weighted sum of squares, weighted so
that entries replicated on several ranks are counted once. Here the parts of one step from every rank are
combined, with no collective in the training's process group:

- the step's ``grad_norm``: ``sqrt(sum over ranks of part²)``;
- per parameter, the ``layers`` record's ``grad_norm`` and, for its chunk, ``_weight`` and ``_update`` the
  same way, and ``_nonzero`` (already weighted) summed, over the ranks that hold the parameter.

Every rank's records then carry the whole model's figures (as under DDP, where every rank's gradients are
the same), before the diagnosis and the viewers see them. A figure that some rank did not measure at that
step (a rank that spaced out its detail steps differently, or died) is left out (null), never shown as a
part. A rank's records are held, in order, from its first part until the step is complete: every rank of
the job has sent its record of that step or of a later one, or has ended; at most ``HOLD_S`` seconds or
``HOLD_RECORDS`` records.
"""

from __future__ import annotations

import collections
import math
from typing import Any

from optwatch import protocol

HOLD_S = 10.0
HOLD_RECORDS = 5000
"""Per rank: a rank whose peers are silent (a dead one, a hub restarted mid-run) is not held longer."""

SHARDED = "_sharded"


class ShardedNorms:
    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self._held: dict[int, collections.deque[dict[str, Any]]] = {}
        self._parts: dict[int, dict[int, dict[str, dict[str, Any]]]] = {}
        """step -> rank -> kind (``step`` or ``layers``) -> the record carrying that rank's part."""
        self._first_part_at: dict[int, float] = {}
        self._progress: dict[int, float] = {}
        """rank -> the latest step it sent a record of (infinity once it ended)."""

    def take(self, records: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """``records`` that may go on now, each rank's in its order, those held before them first."""
        out: list[dict[str, Any]] = []
        for record in records:
            rank = record.get("rank")
            if not isinstance(rank, int) or rank < 0:
                out.append(record)
                continue
            self._note(rank, record)
            part = record.get(SHARDED) is True and record.get("kind") in (protocol.STEP, protocol.LAYERS)
            if part and isinstance(record.get("step"), int):
                step = record["step"]
                self._parts.setdefault(step, {}).setdefault(rank, {})[record["kind"]] = record
                self._first_part_at.setdefault(step, now)
            held = self._held.get(rank)
            if part or held:
                if held is None:
                    held = self._held[rank] = collections.deque()
                held.append(record)
            else:
                out.append(record)
        return out + self.release(now)

    def _note(self, rank: int, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == protocol.STEP and isinstance(record.get("step"), int):
            self._progress[rank] = max(self._progress.get(rank, -1), record["step"])
        elif kind == protocol.END:
            self._progress[rank] = math.inf
        elif kind == protocol.HELLO and isinstance(record.get("world_size"), int):
            self.world_size = max(self.world_size, record["world_size"])

    def _complete(self, step: int, now: float) -> bool:
        if now - self._first_part_at.get(step, now) >= HOLD_S:
            return True
        return all(self._progress.get(rank, -1) >= step for rank in range(self.world_size))

    def release(self, now: float) -> list[dict[str, Any]]:
        """What may go on now (the hub's tick calls this too, for parts held too long)."""
        out: list[dict[str, Any]] = []
        for held in self._held.values():
            while held:
                head = held[0]
                step = head.get("step") if head.get(SHARDED) is True else None
                if step in self._parts and not (self._complete(step, now) or len(held) > HOLD_RECORDS):
                    break
                if step in self._parts:
                    self._combine(step)
                out.append(held.popleft())
        for rank in [rank for rank, held in self._held.items() if not held]:
            del self._held[rank]
        return out

    def _combine(self, step: int) -> None:
        """Every part of ``step`` replaced by the whole (or null), in every rank's record of it."""
        parts = self._parts.pop(step)
        self._first_part_at.pop(step, None)
        ranks = range(self.world_size)
        steps = [parts.get(rank, {}).get(protocol.STEP) for rank in ranks]
        whole = _root_of_squares([s.get("grad_norm") if s else None for s in steps])
        for record in steps:
            if record is not None:
                record["grad_norm"] = whole
                record.pop(SHARDED, None)
        layers = [parts.get(rank, {}).get(protocol.LAYERS) for rank in ranks]
        if any(layers):
            _combine_layers(layers)


def _root_of_squares(parts: list[Any]) -> float | None:
    if not parts or not all(isinstance(p, (int, float)) for p in parts):
        return None
    return math.sqrt(math.fsum(p * p for p in parts))


def _combine_layers(records: list[dict[str, Any] | None]) -> None:
    """The ``layers`` records of one step from every rank (None: a rank that sent none) made whole."""
    complete = all(r is not None for r in records)
    present = [r for r in records if r is not None]
    grads: dict[str, list[Any]] = {}
    chunks: dict[str, dict[str, list[Any]]] = {}
    holders: dict[str, int] = {}
    for record in present:
        names = record.get("names") or []
        norms = record.get("grad_norm") or []
        for name, norm in zip(names, norms):
            grads.setdefault(name, []).append(norm)
            holders[name] = holders.get(name, 0) + 1
        columns = {key: record.get(key) or [] for key in ("_weight", "_update", "_nonzero")}
        for position, index in enumerate(record.get("_chunk") or []):
            if isinstance(index, int) and 0 <= index < len(names):
                measured = chunks.setdefault(names[index], {"_weight": [], "_update": [], "_nonzero": []})
                for key, values in columns.items():
                    measured[key].append(values[position] if position < len(values) else None)
    whole_grad = {name: _root_of_squares(parts) if complete else None for name, parts in grads.items()}
    whole_chunk: dict[str, dict[str, Any]] = {}
    for name, measured in chunks.items():
        everyone = complete and len(measured["_weight"]) == holders.get(name)
        nonzero = measured["_nonzero"]
        whole_chunk[name] = {
            "_weight": _root_of_squares(measured["_weight"]) if everyone else None,
            "_update": _root_of_squares(measured["_update"]) if everyone else None,
            "_nonzero": math.fsum(nonzero) if everyone and all(isinstance(n, (int, float)) for n in nonzero) else None,
        }
    for record in present:
        names = record.get("names") or []
        record["grad_norm"] = [whole_grad.get(name) for name in names]
        chunk = [names[i] if isinstance(i, int) and 0 <= i < len(names) else None for i in record.get("_chunk") or []]
        for key in ("_weight", "_update", "_nonzero"):
            if record.get(key) is not None:
                record[key] = [whole_chunk[name][key] if name is not None else None for name in chunk]
        record.pop(SHARDED, None)
