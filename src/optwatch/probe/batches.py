"""A step's batches: the samples a training step consumed and the time it waited for them.

A batch counts for training once a ``backward()`` consumes it (or the optimizer's step, in a step with no
``backward()``: gradients from ``torch.autograd.grad``); the loaders whose batches no backward consumes (an
evaluation loader's) are counted apart (``eval_batches``), and their wait is no part of ``data_wait_s``. A
backward consumes a batch of each loader that feeds training; another loader feeds training too once it gave
exactly one batch, with gradients on, before each of two backward() calls in a row (a semi-supervised loop's
labelled and unlabelled batches, zipped; not a validation batch taken every N steps).
"""

from __future__ import annotations

import collections
import weakref
from typing import Any

import torch
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import BatchSampler
from torch.utils.data._utils.collate import default_collate

MAX_BATCH_TENSORS = 8
"""The tensors of a batch its size is read from (a batch is usually two or three)."""


def batch_size_of(batch: Any) -> int | None:
    """Samples in a DataLoader batch: the leading dimension its tensors share; where they do not share one,
    the one size every tensor has (a sequence-first (T, B) batch with its (B,) lengths: B); a
    PackedSequence's number of sequences."""
    tensors = _tensors_in(batch, [], 0)
    if not tensors:
        return None
    first = tensors[0]
    if isinstance(first, PackedSequence):
        return int(first.batch_sizes[0]) if len(first.batch_sizes) else None  # (batch_sizes: on the CPU)
    leading = [int(t.size(0)) for t in tensors if not isinstance(t, PackedSequence) and t.dim()]  # (nested: size)
    if not leading:
        return None
    if len(set(leading)) == 1 or first.is_nested:
        return leading[0]
    shared = set(first.shape)
    for tensor in tensors[1:]:
        if not isinstance(tensor, PackedSequence) and tensor.dim() and not tensor.is_nested:
            shared &= set(tensor.shape)
    return shared.pop() if len(shared) == 1 else leading[0]


def samples_drawn(iterator: Any) -> int | None:
    """The samples the DataLoader's own ``BatchSampler`` drew for the batch just taken, where the script's
    ``collate_fn`` makes it (a list of per-sample tensors, a detection model's ``tuple(zip(*batch))``): its
    tensors' shapes then say how big a sample is, not how many there are. None where the loader collates by
    default (the shapes say it) or its sampler is another (a bucketing sampler's, accelerate's shards)."""
    sampler = getattr(iterator, "_index_sampler", None)
    if type(sampler) is not BatchSampler or getattr(iterator, "_collate_fn", default_collate) is default_collate:
        return None
    index = getattr(iterator, "_num_yielded", 0) - 1  # (counted on when the batch was yielded)
    try:
        drawn = len(sampler.sampler)  # type: ignore[arg-type]
    except TypeError:
        return None  # (an iterable dataset's: its last batch may be short)
    size = sampler.batch_size
    return max(0, min(size, drawn - index * size)) if index >= 0 else None


def _per_sample(batch: Any, drawn: int) -> bool:
    """Whether ``batch`` holds its samples one by one, as many as were ``drawn``: a list of them, or a tuple of
    such lists (``tuple(zip(*batch))``). Not a batch made beforehand that a ``collate_fn`` unwraps
    (``batch_size=1``, ``lambda b: b[0]``): its tensors' shapes say how many samples it holds."""
    if not isinstance(batch, (list, tuple)) or not batch:
        return False
    return len(batch) == drawn or all(isinstance(part, (list, tuple)) and len(part) == drawn for part in batch)


def _tensors_in(batch: Any, found: list, depth: int) -> list:
    """The batch's tensors (and packed sequences), in order, two levels down at most, a few of them."""
    if isinstance(batch, (torch.Tensor, PackedSequence)):
        found.append(batch)
    elif depth < 2 and len(found) < MAX_BATCH_TENSORS:
        if isinstance(batch, (list, tuple)):
            items: Any = batch
        elif isinstance(batch, dict) or (hasattr(batch, "keys") and hasattr(batch, "values")):  # BatchEncoding
            items = batch.values()
        else:
            return found
        for item in items:
            _tensors_in(item, found, depth + 1)
            if len(found) >= MAX_BATCH_TENSORS:
                break
    return found


class _Fetches:
    """The batches taken in this step from a loader not yet known to feed training: their count and wait."""

    __slots__ = ("count", "wait_s")

    def __init__(self) -> None:
        self.count = 0
        self.wait_s = 0.0


class BatchAccounts:
    """The batches of the step now running, and which DataLoader iterators feed the training."""

    def __init__(self) -> None:
        self.data_wait_s = 0.0
        self.samples = 0
        self.loader: dict[str, Any] = {}
        """Settings of the DataLoader the training iterates, for the verdict's advice (replaced whole)."""
        self._workers_of: weakref.ref[Any] | None = None
        """The iterator of the DataLoader the training iterates, which holds its worker processes."""
        self._training_loaders: list[weakref.ref[Any]] = []
        """DataLoader iterators a backward() consumed a batch of: the training's (few: one an epoch)."""
        self._unconsumed: weakref.WeakKeyDictionary[Any, collections.deque[tuple[int | None, float]]] = (
            weakref.WeakKeyDictionary()
        )
        """Per iterator, the (size, fetch start) of the batches taken and not yet consumed by a backward(), oldest
        first: a loop may take them ahead (accelerate's look-ahead, Lightning's prefetch, the Trainer taking
        every micro-batch of a step first)."""
        self._latest_iterator: weakref.ref[Any] | None = None
        self.other_fetches: dict[int, _Fetches] = {}
        """Per iterator of a loader not known to feed training (an evaluation's), its batches in this step."""
        self._fresh: dict[int, tuple[weakref.ref[Any], int]] = {}
        """Per iterator not known to feed training, the batches taken with gradients on since the last backward."""
        self._one_each: dict[int, int] = {}
        """Per iterator not known to feed training, the backward() calls in a row it gave exactly one batch before."""
        self._missed: dict[int, int] = {}
        """Per iterator known to feed training, the backward() calls in a row that consumed others' batches alone."""
        self.consumed_in_step = 0
        """Batches consumed in this step (none: a step whose gradients came without a backward)."""

    def taken(self, iterator: Any, started: float, finished: float, batch: Any) -> None:
        """The script took ``batch`` from a DataLoader ``iterator``, waiting from ``started`` to ``finished``."""
        queue = self._unconsumed.get(iterator)
        if queue is None:
            queue = self._unconsumed[iterator] = collections.deque(maxlen=4096)
        drawn = samples_drawn(iterator)
        size = drawn if drawn is not None and _per_sample(batch, drawn) else batch_size_of(batch)
        queue.append((size, started))
        self._latest_iterator = weakref.ref(iterator)
        if any(ref() is iterator for ref in self._training_loaders):
            self.data_wait_s += finished - started
        else:
            fetches = self.other_fetches.get(id(iterator))
            if fetches is None:
                fetches = self.other_fetches[id(iterator)] = _Fetches()
            fetches.count += 1
            fetches.wait_s += finished - started
            if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
                ref, count = self._fresh.get(id(iterator), (None, 0))
                self._fresh[id(iterator)] = (ref or weakref.ref(iterator), count + 1)

    def loader_started(self, loader: Any, iterator: Any) -> None:
        """A DataLoader began an iteration: its settings go with the system records (the verdict's advice), and
        its iterator holds its workers' processes."""
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self._workers_of = weakref.ref(iterator)
            self.loader = {
                "num_workers": loader.num_workers,
                "pin_memory": bool(loader.pin_memory),
                "batch_size": loader.batch_size,
                "prefetch_factor": loader.prefetch_factor,
                "persistent_workers": loader.persistent_workers,
            }

    def worker_pids(self) -> list[int] | None:
        """The training DataLoaders' worker processes, from their own iterators (on any thread): with spawn or
        forkserver they are not the training process's children, and other children (multiprocessing's
        resource tracker, a Pool) are no workers. The iterators a backward consumed batches of (a validation
        loader started outside ``no_grad`` is none of them; two zipped loaders are both), else the newest
        started; None when no DataLoader has started."""
        iterators = [it for it in (ref() for ref in list(self._training_loaders)) if it is not None]
        newest = self._workers_of() if self._workers_of is not None else None
        if not iterators and newest is not None:
            iterators = [newest]
        if not iterators:
            return None
        workers = [w for iterator in iterators for w in list(getattr(iterator, "_workers", ()))]
        return [pid for pid in (getattr(w, "pid", None) for w in workers) if pid]

    def consumed(self) -> float | None:
        """A backward() consumed a batch of each loader that feeds training (the oldest it has not consumed), or,
        when none has one, of the loader the newest batch came from, which is then known to feed training; and of
        another loader that gave exactly one batch before this backward and the one before, which is then known
        to feed training too. A loader known to feed training that gave none to two such backward() calls in a
        row no longer does (a validation loader taken for the first step's; an epoch's spent iterator). Returns
        when the earliest of the consumed batches' fetches started (None: no DataLoader batch was waiting)."""
        if self._latest_iterator is None:
            return None  # no DataLoader in this loop
        training = [it for it in (ref() for ref in self._training_loaders) if it is not None]
        iterators = [it for it in training if self._unconsumed.get(it)]
        if not iterators:
            latest = self._latest_iterator()
            if latest is not None and self._unconsumed.get(latest):
                iterators.append(self._promoted(latest))
        one_each = {}
        for key, (ref, count) in self._fresh.items():
            iterator = ref()
            if count != 1 or iterator is None or iterator in iterators or not self._unconsumed.get(iterator):
                continue
            one_each[key] = self._one_each.get(key, 0) + 1
            if one_each[key] >= 2:
                queue = self._unconsumed[iterator]
                while len(queue) > 1:  # (the batch of the first backward in the row: that step has gone)
                    queue.popleft()
                iterators.append(self._promoted(iterator))
        self._one_each = one_each
        self._fresh.clear()
        if not iterators:
            return None  # (a second backward on the same batch: a GAN's, a critic's penalty)
        self.consumed_in_step += 1
        self._missed = {id(it): self._missed.get(id(it), 0) + 1 for it in training if it not in iterators}
        if any(missed >= 2 for missed in self._missed.values()):
            self._training_loaders = [ref for ref in self._training_loaders if self._missed.get(id(ref()), 0) < 2]
        started = None
        for iterator in iterators:
            size, fetched = self._unconsumed[iterator].popleft()
            if size:
                self.samples += size
            started = fetched if started is None else min(started, fetched)
        return started

    def _promoted(self, iterator: Any) -> Any:
        """``iterator`` feeds training from now on: its batches' wait in this step is the training's."""
        self._training_loaders = [ref for ref in self._training_loaders if ref() is not None]
        self._training_loaders.append(weakref.ref(iterator))
        fetches = self.other_fetches.pop(id(iterator), None)
        if fetches is not None:
            self.data_wait_s += fetches.wait_s
        return iterator

    def add_eval_batches(self, record: dict[str, Any]) -> None:
        """The batches of loaders not known to feed training (an evaluation's), if any, into the step record."""
        if self.other_fetches:
            record["eval_batches"] = sum(f.count for f in self.other_fetches.values())
            record["eval_wait_s"] = sum(f.wait_s for f in self.other_fetches.values())

    def clear(self) -> None:
        """The next step begins with no batch of its own."""
        self.data_wait_s = 0.0
        self.samples = 0
        self.consumed_in_step = 0
        self.other_fetches.clear()
