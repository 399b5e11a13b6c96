"""NVIDIA GPUs through NVML (package nvidia-ml-py, module ``pynvml``), the way nvitop does it.

NVML is initialised lazily, once, under a lock, by the first ``sample``. Every query goes through
``_query``, which returns None ("not available") instead of raising and logs each failing query once,
so callers never special-case a missing GPU, an old driver or a field a board does not support.
Without a driver ``sample`` reports ``gpu_status: "no NVIDIA GPU (...)"`` and an empty device list,
quietly (one debug line): most machines that train on the CPU have no NVIDIA driver, and that is fine.

Torch-free: devices are NVML's, limited to ``CUDA_VISIBLE_DEVICES`` when it is set.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

OK = "ok"
NO_GPU = "no NVIDIA GPU"

# Why clocks are held down (NVML clock event / throttle reasons), by the bit's name in pynvml.
_THROTTLE_REASONS = {
    "GpuIdle": "idle",
    "ApplicationsClocksSetting": "app_clocks",
    "SwPowerCap": "power_cap",
    "HwSlowdown": "hw_slowdown",
    "SyncBoost": "sync_boost",
    "SwThermalSlowdown": "sw_thermal",
    "HwThermalSlowdown": "hw_thermal",
    "HwPowerBrakeSlowdown": "power_brake",
    "DisplayClockSetting": "display_clocks",
}


def _text(value: Any) -> Any:
    """Older nvidia-ml-py releases return names and UUIDs as bytes."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _normalise_uuid(uuid: str) -> str:
    uuid = uuid.strip().lower()
    return uuid[4:] if uuid.startswith("gpu-") else uuid


class GpuCollector:
    """Per-device GPU figures for one process; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: str | None = None  # None until NVML was tried; then OK or why there is no GPU
        self._nvml: Any = None
        self._handles: list[tuple[int, Any]] = []
        self._static: dict[int, dict[str, Any]] = {}
        self._failed: set[str] = set()

    # --- initialisation -------------------------------------------------------------------------
    def status(self) -> str:
        """``"ok"``, or a one-line reason why no GPU can be shown. Initialises NVML on first call."""
        with self._lock:
            if self._status is None:
                self._status = self._init()
            return self._status

    def _init(self) -> str:
        try:
            import pynvml
        except ImportError:
            return f"{NO_GPU} (nvidia-ml-py is not installed)"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, OSError...
            log.debug("optwatch: NVML unavailable: %s", exc)
            return f"{NO_GPU} ({exc})"
        self._nvml = pynvml
        count = self._query("device count", pynvml.nvmlDeviceGetCount) or 0
        for index in _visible_indices(count, self._uuid_of):
            handle = self._query("device handle", pynvml.nvmlDeviceGetHandleByIndex, index)
            if handle is not None:
                self._handles.append((index, handle))
                self._static[index] = self._static_info(handle)
        if not self._handles:
            return f"{NO_GPU} (NVML sees no visible device)"
        return OK

    def _uuid_of(self, index: int) -> str | None:
        handle = self._query("device handle", self._nvml.nvmlDeviceGetHandleByIndex, index)
        return _text(self._query("uuid", self._nvml.nvmlDeviceGetUUID, handle)) if handle is not None else None

    def _static_info(self, handle: Any) -> dict[str, Any]:
        nvml = self._nvml
        memory = self._query("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        limit_mw = self._query("power limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return {
            "name": _text(self._query("name", nvml.nvmlDeviceGetName, handle)),
            "uuid": _text(self._query("uuid", nvml.nvmlDeviceGetUUID, handle)),
            "mem_total_bytes": memory.total if memory is not None else None,
            "power_limit_w": limit_mw / 1000 if limit_mw is not None else None,
            "sm_clock_max_mhz": self._query("max clock", nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM),
        }

    # --- queries --------------------------------------------------------------------------------
    def _query(self, what: str, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)``, or None when NVML cannot say; each kind of failure is logged once."""
        try:
            return function(*args)
        except self._nvml.NVMLError as exc:
            if what not in self._failed:
                self._failed.add(what)
                # Unsupported fields (power on some boards, processes in containers) are normal.
                quiet = getattr(exc, "value", None) in (
                    self._nvml.NVML_ERROR_NOT_SUPPORTED,
                    self._nvml.NVML_ERROR_NO_PERMISSION,
                )
                log.log(logging.DEBUG if quiet else logging.WARNING, "optwatch: NVML %s unavailable: %s", what, exc)
            return None

    def sample(self, pid: int | None = None, current_uuid: str | None = None) -> dict[str, Any]:
        """``gpu_status`` and ``gpus``: one dict per visible device (see docs/telemetry.md).

        ``current_uuid`` is the UUID of the device this process trains on, when torch knows it;
        that device is marked ``current``.
        """
        status = self.status()
        if status != OK:
            return {"gpu_status": status, "gpus": []}
        pid = os.getpid() if pid is None else pid
        current = _normalise_uuid(current_uuid) if current_uuid else None
        with self._lock:
            gpus = [self._device(index, handle, pid, current) for index, handle in self._handles]
        return {"gpu_status": OK, "gpus": gpus}

    def _device(self, index: int, handle: Any, pid: int, current: str | None) -> dict[str, Any]:
        nvml = self._nvml
        static = self._static[index]
        utilization = self._query("utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._query("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = self._query("power", nvml.nvmlDeviceGetPowerUsage, handle)
        uuid = static["uuid"]
        return {
            "index": index,
            "name": static["name"],
            "uuid": uuid,
            "current": bool(current and uuid and _normalise_uuid(uuid) == current),
            "util_percent": utilization.gpu if utilization is not None else None,
            "mem_util_percent": utilization.memory if utilization is not None else None,
            "mem_used_bytes": memory.used if memory is not None else None,
            "mem_total_bytes": static["mem_total_bytes"],
            "process_mem_bytes": self._process_memory(handle, pid),
            "temperature_c": self._query(
                "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
            ),
            "power_w": power_mw / 1000 if power_mw is not None else None,
            "power_limit_w": static["power_limit_w"],
            "sm_clock_mhz": self._query("clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
            "sm_clock_max_mhz": static["sm_clock_max_mhz"],
            "throttle": self._throttle_reasons(handle),
        }

    def _process_memory(self, handle: Any, pid: int) -> int | None:
        """This process's memory on the device; None when NVML cannot tell (e.g. another PID namespace)."""
        processes = self._query("processes", self._nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        for process in processes or ():
            if process.pid == pid:
                return process.usedGpuMemory
        return None

    def _throttle_reasons(self, handle: Any) -> list[str] | None:
        nvml = self._nvml
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        mask = self._query("throttle reasons", reasons or nvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle)
        if mask is None:
            return None
        return [
            label
            for name, label in _THROTTLE_REASONS.items()
            if mask & getattr(nvml, f"nvmlClocksThrottleReason{name}", 0)
        ]


def _visible_indices(count: int, uuid_of: Callable[[int], str | None]) -> list[int]:
    """NVML indices of the devices ``CUDA_VISIBLE_DEVICES`` lets this process see (all when unset or unreadable)."""
    everything = list(range(count))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return everything
    indices: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry.startswith("-"):
            break  # "" and "-1" hide every device
        if entry.isdigit():
            index = int(entry)
            if index >= count:
                break  # CUDA stops at the first invalid entry
            indices.append(index)
        elif entry.lower().startswith("gpu-"):
            matches = [i for i in everything if (uuid_of(i) or "").lower().startswith(entry.lower())]
            if len(matches) != 1:
                break
            indices.append(matches[0])
        else:
            return everything  # MIG instances and other forms: show the whole board rather than guess
    return indices
