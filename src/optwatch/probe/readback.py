"""Device values read back in batches, never with a host-device sync on the training thread.

Records are built on the training thread with 0-d or 1-d tensors as values. At each publish interval
a CUDA device's values are packed into one flat tensor per dtype and copied to pinned host memory with
``non_blocking=True``; a CUDA event marks completion (CPU values are packed on the publisher thread).
The publisher thread polls the event and only then touches the values, so neither thread ever waits
for the device.

A value may also be a ``DeviceTime``: CUDA event pairs whose elapsed time is read once they completed.
"""

from __future__ import annotations

import collections
from typing import Any

import torch


def _readback_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps a float32 loss bit-exact when it comes back; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


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


def _pack(scalars: list[torch.Tensor], vectors: list[torch.Tensor]) -> torch.Tensor:
    """One flat tensor: the 0-d values (stacked in one call), then the others flattened."""
    parts = [torch.stack(scalars)] if scalars else []
    parts += [v if v.dim() == 1 else v.reshape(-1) for v in vectors]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class _Group:
    """The values of one device and dtype, scalars apart (stacked in one call), and where each goes."""

    def __init__(self) -> None:
        self.scalars: list[torch.Tensor] = []
        self.vectors: list[torch.Tensor] = []
        self.scalar_slots: list[tuple[dict[str, Any], str, int, bool]] = []
        self.vector_slots: list[tuple[dict[str, Any], str, int, bool]] = []

    def add(self, record: dict[str, Any], key: str, value: torch.Tensor) -> None:
        if value.dim() == 0:
            self.scalars.append(value)
            self.scalar_slots.append((record, key, 1, True))
        else:
            self.vectors.append(value)
            self.vector_slots.append((record, key, value.numel(), False))

    def pack(self) -> torch.Tensor:
        with torch.no_grad():  # values are read, never differentiated
            return _pack(self.scalars, self.vectors)

    def slots(self) -> list[tuple[dict[str, Any], str, int, bool]]:
        """Where each value goes (record, key, numel, is_scalar), in the order ``pack`` lays them out."""
        return self.scalar_slots + self.vector_slots


class DeviceBatch:
    """Records whose tensor-valued fields are on their way to the host.

    On the training thread each value is only filed by device and dtype; then a CUDA device's values are
    packed into one tensor per dtype (a few launches per batch, not per value) and copied to the host
    without waiting. CPU values are final already and are packed on the publisher thread.
    """

    def __init__(self, records: list[dict[str, Any]]):
        self._records = records
        groups: dict[tuple[torch.device, torch.dtype], _Group] = {}
        self._times: list[tuple[dict[str, Any], str, DeviceTime]] = []
        for record in records:
            for key, value in record.items():
                if isinstance(value, DeviceTime):
                    self._times.append((record, key, value))
                elif isinstance(value, torch.Tensor):
                    group = groups.get((value.device, value.dtype))
                    if group is None:
                        group = groups[(value.device, value.dtype)] = _Group()
                    group.add(record, key, value)
        self._slots = {key: group.slots() for key, group in groups.items()}
        self._host: dict[tuple[torch.device, torch.dtype], Any] = {}
        self._events: list[Any] = []
        for (device, dtype), group in groups.items():
            if device.type != "cuda":
                # CPU values are final already; other accelerators are copied on the publisher thread.
                self._host[(device, dtype)] = group
                continue
            packed = group.pack().to(_readback_dtype(device))
            self._host[(device, dtype)] = packed.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._events.append(event)

    def ready(self) -> bool:
        return all(event.query() for event in self._events) and all(time.ready() for _, _, time in self._times)

    def records(self) -> list[dict[str, Any]]:
        for group, slots in self._slots.items():
            host = self._host[group]
            if isinstance(host, _Group):
                host = host.pack()
            values = host.cpu().to(_readback_dtype(group[0])).tolist()
            offset = 0
            for record, key, numel, is_scalar in slots:
                chunk = values[offset : offset + numel]
                record[key] = chunk[0] if is_scalar else chunk
                offset += numel
        for record, key, time in self._times:
            record[key] = time.seconds()
        return self._records
