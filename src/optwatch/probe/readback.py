"""Device values read back in batches, never with a host-device sync on the training thread.

Records are built on the training thread with 0-d or 1-d tensors as values. At each publish interval
a CUDA device's values are packed into one flat tensor per dtype and copied to pinned host memory with
``non_blocking=True``; a CUDA event marks completion (CPU values are read in place on the publisher thread).
The publisher thread polls the event and only then touches the values, so neither thread ever waits
for the device.

A value may also be a ``DeviceTime``: CUDA event pairs whose elapsed time is read once they completed.
"""

from __future__ import annotations

import collections
from typing import Any

import torch

from optwatch.probe.losses import LossSum


def _readback_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps a float32 loss bit-exact when it comes back; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


# Types of record values that are never device values (most of a record's), skipped at a glance.
_PLAIN = frozenset({float, int, str, bool, type(None), list, tuple, dict})


class DeviceTime:
    """Seconds on a device's timeline between pairs of CUDA events, summed; read once all have completed.

    The training thread only records events; the publisher thread asks ``ready()`` (a non-blocking
    query) and then reads ``seconds()``, so measuring device time never waits for the device. Read
    events go back to a pool the training thread takes its next ones from (creating events per step
    costs more than recording them).
    """

    pool: collections.deque[Any] = collections.deque(maxlen=256)

    def __init__(self) -> None:
        self.spans: list[tuple[Any, Any]] = []

    @classmethod
    def recorded_event(cls, stream: Any) -> Any:
        """A timing event recorded on ``stream`` now (training thread)."""
        try:
            event = cls.pool.pop()
        except IndexError:
            event = torch.cuda.Event(enable_timing=True)
        event.record(stream)
        return event

    def add(self, start: Any, end: Any) -> None:
        self.spans.append((start, end))

    def ready(self) -> bool:
        return all(end.query() for _, end in self.spans)

    def seconds(self) -> float:
        seconds = sum(start.elapsed_time(end) for start, end in self.spans) / 1000.0
        for start, end in self.spans:
            self.pool.extend((start, end))
        self.spans = []
        return seconds


class _Group:
    """The values of one device and dtype, and where each goes: 0-d values apart, stacked in one call."""

    def __init__(self) -> None:
        self.scalars: list[torch.Tensor] = []
        self.vectors: list[torch.Tensor] = []
        self.scalar_slots: list[tuple[Any, Any]] = []  # (a record or a LossSum's values, key or index)
        self.vector_slots: list[tuple[Any, Any]] = []

    def add(self, record: Any, key: Any, value: torch.Tensor) -> None:
        if value.dim() == 0:
            self.scalars.append(value)
            self.scalar_slots.append((record, key))
        else:
            self.vectors.append(value)
            self.vector_slots.append((record, key))

    def pack(self) -> torch.Tensor:
        """One flat tensor: the 0-d values, then the others flattened, in the order ``fill`` reads them."""
        with torch.no_grad():  # values are read, never differentiated
            parts = [torch.stack(self.scalars)] if self.scalars else []
            parts += [v if v.dim() == 1 else v.reshape(-1) for v in self.vectors]
            return torch.cat(parts) if len(parts) > 1 else parts[0]

    def fill(self, values: list[float]) -> None:
        """Put the host values of ``pack``'s tensor into their records."""
        for (record, key), value in zip(self.scalar_slots, values):
            record[key] = value
        offset = len(self.scalars)
        for (record, key), vector in zip(self.vector_slots, self.vectors):
            numel = vector.numel()
            record[key] = values[offset : offset + numel]
            offset += numel


class DeviceBatch:
    """Records whose tensor-valued fields are on their way to the host.

    On the training thread each value is only filed by device and dtype; then a CUDA device's values are
    packed into one tensor per dtype (a few launches per batch, not per value) and copied to the host
    without waiting. CPU values are final already and are read in place on the publisher thread.
    """

    def __init__(self, records: list[dict[str, Any]], on_host: bool = False):
        """``on_host``: the training runs on the CPU, so the values are final already and even reading
        them is left to the publisher thread (``records``)."""
        self._records = records
        self._groups: dict[tuple[torch.device, torch.dtype], _Group] = {}
        self._times: list[tuple[dict[str, Any], str, DeviceTime]] = []
        self._sums: list[tuple[dict[str, Any], str, LossSum]] = []
        self._copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._events: list[Any] = []
        self._filed = not on_host
        if self._filed:
            self._file()
        # CUDA values on their way to the host; CPU values are final already, and other accelerators'
        # are copied on the publisher thread.
        for (device, dtype), group in self._groups.items():
            if device.type == "cuda":
                packed = group.pack().to(_readback_dtype(device))
                self._copies[(device, dtype)] = packed.to("cpu", non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))
                self._events.append(event)

    def _file(self) -> None:
        """Each tensor value into its device's and dtype's group, each device time into its list."""
        for record in self._records:
            self._file_values(record)
            for value in record.values():
                if type(value) is dict:  # a map of values (a step's losses per optimizer, ow.log's metrics)
                    self._file_values(value)

    def _file_values(self, values: dict[str, Any]) -> None:
        plain = _PLAIN
        for key, value in values.items():
            kind = type(value)
            if kind in plain:
                continue
            if kind is DeviceTime:
                self._times.append((values, key, value))
            elif kind is LossSum:
                self._sums.append((values, key, value))
                for index, part in enumerate(value.parts):
                    self._file_value(value.values, index, part)
            elif isinstance(value, torch.Tensor):
                self._file_value(values, key, value)

    def _file_value(self, values: dict[str, Any] | list[Any], key: str | int, value: torch.Tensor) -> None:
        group = self._groups.get((value.device, value.dtype))
        if group is None:
            group = self._groups[(value.device, value.dtype)] = _Group()
        group.add(values, key, value)

    def _read_on_host(self) -> list[dict[str, Any]]:
        """CPU values read in place: ``tolist()`` per value (about 1 µs; a 0-d tensor gives a number)
        costs a fraction of filing, stacking and copying them for the few values of a record."""
        self._filed = True
        plain = _PLAIN
        for record in self._records:
            for values in (record, *[v for v in record.values() if type(v) is dict]):
                for key, value in values.items():
                    if type(value) is LossSum:
                        value.values = [part.item() for part in value.parts]
                        values[key] = value.total()
                    elif type(value) not in plain and isinstance(value, torch.Tensor):
                        values[key] = value.detach().tolist() if value.requires_grad else value.tolist()
        return self._records

    def ready(self) -> bool:
        return all(event.query() for event in self._events) and all(time.ready() for _, _, time in self._times)

    def records(self) -> list[dict[str, Any]]:
        if not self._filed:
            return self._read_on_host()
        for (device, dtype), group in self._groups.items():
            host = self._copies.get((device, dtype))
            if host is None:
                host = group.pack()
            group.fill(host.cpu().to(_readback_dtype(device)).tolist())
        for record, key, time in self._times:
            record[key] = time.seconds()
        for record, key, losses in self._sums:
            record[key] = losses.total()
        return self._records
