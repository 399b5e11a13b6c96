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


class DeviceBatch:
    """Records whose tensor-valued fields are on their way to the host.

    On the training thread, the values of a CUDA device are packed into one tensor per dtype (a few
    launches per batch, not per value) and copied to the host without waiting; CPU values are final
    already and are packed on the publisher thread.
    """

    def __init__(self, records: list[dict[str, Any]]):
        self._records = records
        # Per device and dtype: the values, and where each goes (record, key, numel, is_scalar), in order.
        values: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        self._slots: dict[tuple[torch.device, torch.dtype], list[tuple[dict[str, Any], str, int, bool]]] = {}
        self._times: list[tuple[dict[str, Any], str, DeviceTime]] = []
        for record in records:
            for key, value in record.items():
                if isinstance(value, DeviceTime):
                    self._times.append((record, key, value))
                elif isinstance(value, torch.Tensor):
                    flat = value.detach().reshape(-1)
                    group = (flat.device, flat.dtype)
                    values.setdefault(group, []).append(flat)
                    self._slots.setdefault(group, []).append((record, key, flat.numel(), value.dim() == 0))
        self._host: dict[tuple[torch.device, torch.dtype], Any] = {}
        self._events: list[Any] = []
        for group, tensors in values.items():
            device = group[0]
            if device.type != "cuda":
                # CPU values are final already; other accelerators are copied on the publisher thread.
                self._host[group] = tensors
                continue
            packed = (torch.cat(tensors) if len(tensors) > 1 else tensors[0]).to(_readback_dtype(device))
            self._host[group] = packed.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            self._events.append(event)

    def ready(self) -> bool:
        return all(event.query() for event in self._events) and all(time.ready() for _, _, time in self._times)

    def records(self) -> list[dict[str, Any]]:
        for group, slots in self._slots.items():
            host = self._host[group]
            if isinstance(host, list):
                host = torch.cat(host) if len(host) > 1 else host[0]
            values = host.cpu().to(_readback_dtype(group[0])).tolist()
            offset = 0
            for record, key, numel, is_scalar in slots:
                chunk = values[offset : offset + numel]
                record[key] = chunk[0] if is_scalar else chunk
                offset += numel
        for record, key, time in self._times:
            record[key] = time.seconds()
        return self._records
