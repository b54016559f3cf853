"""The timing loop: trtexec's warm-up, then queries until both the iteration count and the
duration are reached, each query timed phase by phase.

A query is H2D (inputs to the device), compute (the enqueue, timed on the host as
"Enqueue Time" and on the device as "GPU Compute Time"), then D2H (outputs back). On
CUDA the phases are timed with CUDA events, so device time is device time; on the CPU a
query is one synchronous call and there are no transfers. Times are milliseconds from
the start of the run, as in trtexec's --exportTimes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from kiln.bench.options import InferenceOptions


class Runner(Protocol):
    """What the loop drives; see kiln.bench.runners for the implementations."""

    name: str
    device: torch.device
    separate_transfers: bool  # False: H2D and D2H happen inside compute (ONNX Runtime)

    def h2d(self) -> None: ...

    def compute(self, on_step: Callable[..., None] | None = None) -> None: ...

    def d2h(self) -> None: ...


@dataclass
class InferenceTrace:
    """One query, in ms from the start of the run (trtexec's InferenceTrace)."""

    enq_start: float
    enq_end: float
    h2d_start: float
    h2d_end: float
    compute_start: float
    compute_end: float
    d2h_start: float
    d2h_end: float

    @property
    def enqueue(self) -> float:
        return self.enq_end - self.enq_start

    @property
    def h2d(self) -> float:
        return self.h2d_end - self.h2d_start

    @property
    def compute(self) -> float:
        return self.compute_end - self.compute_start

    @property
    def d2h(self) -> float:
        return self.d2h_end - self.d2h_start

    @property
    def latency(self) -> float:
        """H2D + compute + D2H: trtexec's "Latency"."""
        return self.h2d + self.compute + self.d2h

    @property
    def end_to_end(self) -> float:
        return self.d2h_end - self.h2d_start


@dataclass
class RunTrace:
    """A timed run: the measured queries, and what the warm-up did."""

    traces: list[InferenceTrace]
    warmup_queries: int
    warmup_ms: float
    device: str  # "cpu" or "cuda"
    transfers: str  # "measured", "disabled" (--noDataTransfers) or "n/a"
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def walltime_ms(self) -> float:
        """From the first measured query's start to the last one's end."""
        if not self.traces:
            return 0.0
        return self.traces[-1].d2h_end - self.traces[0].h2d_start


class _HostTimeline:
    def __init__(self) -> None:
        self.origin = time.perf_counter()

    def mark(self) -> Any:
        return time.perf_counter()

    def ms(self, token: Any) -> float:
        return (token - self.origin) * 1000.0

    def sync(self) -> None:
        pass


class _CudaTimeline:
    """Device marks are CUDA events, read after the query's synchronize."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        torch.cuda.synchronize(device)
        self.origin = torch.cuda.Event(enable_timing=True)
        self.origin.record()

    def mark(self) -> Any:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, token: Any) -> float:
        return self.origin.elapsed_time(token)

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)


def timeline_for(device: torch.device) -> _HostTimeline | _CudaTimeline:
    return _CudaTimeline(device) if device.type == "cuda" else _HostTimeline()


class Query:
    """Runs one query of a runner and times its phases."""

    def __init__(self, runner: Runner, transfers: bool,
                 profiler: Any | None = None) -> None:
        self.runner = runner
        self.transfers = transfers
        self.profiler = profiler
        self.device_clock = timeline_for(runner.device)
        self.host = _HostTimeline()
        if isinstance(self.device_clock, _HostTimeline):
            self.host = self.device_clock  # one clock on the CPU

    def __call__(self) -> InferenceTrace:
        clock, runner, profiler = self.device_clock, self.runner, self.profiler
        h2d_start = clock.mark()
        if self.transfers:
            runner.h2d()
        h2d_end = clock.mark()
        if profiler is not None:
            profiler.start()
        enq_start = self.host.mark()
        compute_start = clock.mark()
        runner.compute(profiler.on_step if profiler is not None else None)
        compute_end = clock.mark()
        enq_end = self.host.mark()
        d2h_start = clock.mark()
        if self.transfers:
            runner.d2h()
        d2h_end = clock.mark()
        clock.sync()
        if profiler is not None:
            profiler.finish()
        return InferenceTrace(
            self.host.ms(enq_start), self.host.ms(enq_end),
            clock.ms(h2d_start), clock.ms(h2d_end), clock.ms(compute_start),
            clock.ms(compute_end), clock.ms(d2h_start), clock.ms(d2h_end))


def measure(runner: Runner, options: InferenceOptions, *, profiler: Any | None = None,
            warmup: bool = True,
            on_progress: Callable[[float], None] | None = None) -> RunTrace:
    """Warm up, then time queries until iterations and duration are both reached."""
    transfers = runner.separate_transfers and not options.no_data_transfers
    query = Query(runner, transfers, profiler)
    warm, warm_started = 0, time.perf_counter()
    warmup_s = options.warmup_ms / 1000.0 if warmup else 0.0
    while time.perf_counter() - warm_started < warmup_s:
        query()
        warm += 1
    warm_ms = (time.perf_counter() - warm_started) * 1000.0
    if profiler is not None:
        profiler.reset()  # the profile counts measured queries only
    traces: list[InferenceTrace] = []
    started = time.perf_counter()
    interrupted = False
    try:
        while True:
            traces.append(query())
            elapsed = time.perf_counter() - started
            if on_progress is not None:
                on_progress(_progress(len(traces), elapsed, options))
            if options.duration_s >= 0 and len(traces) >= options.iterations and \
                    elapsed >= options.duration_s:
                break
    except KeyboardInterrupt:
        if not traces:
            raise
        interrupted = True  # --duration=-1: stop on Ctrl-C and report what ran
    kind = "cuda" if runner.device.type == "cuda" else "cpu"
    state = "measured" if transfers else (
        "disabled" if options.no_data_transfers and runner.separate_transfers else "n/a")
    if kind == "cpu":
        state = "n/a"
    return RunTrace(traces, warm, warm_ms, kind, state, interrupted)


def _progress(done: int, elapsed: float, options: InferenceOptions) -> float:
    if options.duration_s < 0:
        return 0.0
    by_count = done / options.iterations
    by_time = elapsed / options.duration_s if options.duration_s > 0 else 1.0
    return min(1.0, min(by_count, by_time))
