"""What a peer costs besides time: host memory, device memory, GPU utilization.

Host memory is the process's resident set, sampled by a thread while the peer builds
and runs; a peer's figure is its peak above the resident set before it started (what it
added). Device memory is torch's peak allocation on the device (kiln and PyTorch
peers; ONNX Runtime's own allocator is invisible to it, so NVML's per-process figure is
used for it when NVML is present; that figure includes the CUDA context). GPU
utilization comes from NVML (nvidia-ml-py) when it is installed and a driver answers;
otherwise it is reported as n/a.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
from typing import Any

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """The current resident set size (Linux /proc), else None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def max_rss_bytes() -> int:
    """The process's lifetime peak resident set (getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class _Sampler(threading.Thread):
    def __init__(self, period_s: float, read) -> None:
        super().__init__(daemon=True)
        self.period_s, self.read = period_s, read
        self.values: list[float] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            value = self.read()
            if value is not None:
                self.values.append(value)
            self._stop_event.wait(self.period_s)

    def stop(self) -> list[float]:
        self._stop_event.set()
        self.join()
        value = self.read()
        if value is not None:
            self.values.append(value)
        return self.values


class ResourceMonitor:
    """Samples host RSS (and GPU utilization with NVML) between `start()` and `stop()`."""

    def __init__(self, device: torch.device, *, torch_allocates: bool = True,
                 period_s: float = 0.01) -> None:
        self.device = device
        self.torch_allocates = torch_allocates
        self.baseline = rss_bytes()
        self._rss = _Sampler(period_s, rss_bytes)
        self._nvml = Nvml.open(device)
        self._util = _Sampler(0.05, self._nvml.utilization) if self._nvml else None
        self.result: dict[str, Any] = {}

    def start(self) -> ResourceMonitor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._rss.start()
        return self

    def start_timing(self) -> None:
        """Utilization counts from the first timed query on, not while building (called
        once per batch size; the sampler starts with the first)."""
        if self._util is not None and self._util.ident is None:
            self._util.start()

    def stop(self) -> dict[str, Any]:
        rss = self._rss.stop()
        util = self._util.stop() if self._util is not None and self._util.is_alive() else []
        peak = max(rss) if rss else None
        self.result = {
            "host_peak_bytes": peak,
            "host_added_bytes": (peak - self.baseline) if peak is not None and
            self.baseline is not None else None,
            "device_peak_bytes": self._device_peak(),
            "gpu_utilization_percent": (sum(util) / len(util)) if util else None,
        }
        if self._nvml is not None:
            self._nvml.close()
        return self.result

    def _device_peak(self) -> int | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        if self.torch_allocates:
            return torch.cuda.max_memory_allocated(self.device)
        # another runtime's allocator: the process's device memory, as NVML sees it now
        return self._nvml.process_memory() if self._nvml is not None else None


class Nvml:
    """A thin, optional handle on NVML for one device."""

    def __init__(self, module: Any, handle: Any) -> None:
        self.nvml, self.handle = module, handle

    @classmethod
    def open(cls, device: torch.device) -> Nvml | None:
        if device.type != "cuda":
            return None
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            return cls(pynvml, pynvml.nvmlDeviceGetHandleByIndex(index))
        except Exception:  # no driver, no permission: utilization is simply not reported
            return None

    def utilization(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        except Exception:
            return None

    def process_memory(self) -> int | None:
        try:
            for proc in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                    return int(proc.usedGpuMemory)
        except Exception:
            return None
        return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.nvml.nvmlShutdown()


def nvml_available() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True
