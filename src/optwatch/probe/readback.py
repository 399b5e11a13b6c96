"""Device values read back in batches, never with a host-device sync on the training thread.

Records are built on the training thread with 0-d or 1-d tensors as values. At each publish interval
they are packed into one flat tensor per device and copied to pinned host memory with
``non_blocking=True``; a CUDA event marks completion. The publisher thread polls the event and only
then touches the values, so neither thread ever waits for the device.

A value may also be a ``DeviceTime``: CUDA event pairs whose elapsed time is read once they completed.
"""

from __future__ import annotations

from typing import Any

import torch


def _readback_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps a float32 loss bit-exact when it comes back; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


class DeviceTime:
    """Seconds on a device's timeline between pairs of CUDA events, summed; read once all have completed.

    The training thread only records events; the publisher thread asks ``ready()`` (a non-blocking
    query) and then reads ``seconds()``, so measuring device time never waits for the device.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[Any, Any]] = []

    def add(self, start: Any, end: Any) -> None:
        self.spans.append((start, end))

    def ready(self) -> bool:
        return all(end.query() for _, end in self.spans)

    def seconds(self) -> float:
        return sum(start.elapsed_time(end) for start, end in self.spans) / 1000.0


class DeviceBatch:
    """Records whose tensor-valued fields are on their way to the host."""

    def __init__(self, records: list[dict[str, Any]]):
        self._records = records
        # (record, key, numel, is_scalar) in the order the values were packed, per device
        self._slots: dict[torch.device, list[tuple[dict[str, Any], str, int, bool]]] = {}
        self._times: list[tuple[dict[str, Any], str, DeviceTime]] = []
        parts: dict[torch.device, list[torch.Tensor]] = {}
        for record in records:
            for key, value in record.items():
                if isinstance(value, DeviceTime):
                    self._times.append((record, key, value))
                elif isinstance(value, torch.Tensor):
                    flat = value.detach().reshape(-1)
                    self._slots.setdefault(flat.device, []).append((record, key, flat.numel(), value.dim() == 0))
                    parts.setdefault(flat.device, []).append(flat.to(_readback_dtype(flat.device)))
        self._host: dict[torch.device, torch.Tensor] = {}
        self._events: list[Any] = []
        for device, tensors in parts.items():
            packed = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
            if device.type == "cuda":
                self._host[device] = packed.to("cpu", non_blocking=True)
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))
                self._events.append(event)
            else:
                # CPU values are final already; other accelerators are copied on the publisher thread.
                self._host[device] = packed

    def ready(self) -> bool:
        return all(event.query() for event in self._events) and all(time.ready() for _, _, time in self._times)

    def records(self) -> list[dict[str, Any]]:
        for device, slots in self._slots.items():
            values = self._host[device].cpu().tolist()
            offset = 0
            for record, key, numel, is_scalar in slots:
                chunk = values[offset : offset + numel]
                record[key] = chunk[0] if is_scalar else chunk
                offset += numel
        for record, key, time in self._times:
            record[key] = time.seconds()
        return self._records
