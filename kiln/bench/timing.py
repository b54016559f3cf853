"""Wall-clock timing of a callable, synchronizing CUDA so device work is counted."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_calls(fn: Callable[[], object], *, warmup_s: float = 0.2, min_runs: int = 10,
               min_s: float = 0.5, max_runs: int = 10_000) -> list[float]:
    """Milliseconds per call: warm up for `warmup_s`, then run at least `min_runs` calls
    and at least `min_s` seconds."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        fn()
    _sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or
                                     time.perf_counter() - started < min_s):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times) if times else float("nan")
