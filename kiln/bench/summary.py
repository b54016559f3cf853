"""trtexec's performance summary: the same statistics, labels and warnings.

    === Performance summary ===
    Throughput: 1520.61 qps
    Latency: min = 0.637 ms, max = 0.758 ms, mean = 0.651 ms, median = 0.650 ms,
             percentile(90%) = 0.655 ms, percentile(95%) = 0.656 ms, percentile(99%) = 0.661 ms
    Enqueue Time / H2D Latency / GPU Compute Time / D2H Latency: the same fields
    Total Host Walltime: 3.00156 s
    Total GPU Compute Time: 1.90461 s

Statistics follow trtexec's definitions (sampleReporting.cpp): the median of an even
count is the mean of the middle two; percentile p is the sorted value at index
`n - 1 - int((1 - p/100) * n)`; Latency is H2D + compute + D2H; throughput is queries
over the host walltime. Numbers print with 6 significant digits, as C++ streams do.

On the CPU there is no device: "GPU Compute Time", the transfer lines and "Total GPU
Compute Time" say `n/a` (with the reason) instead of numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kiln.bench.trace import InferenceTrace, RunTrace

ENQUEUE_BOUND = 0.8  # trtexec: enqueue median above 80% of GPU compute median
UNSTABLE_CV_PERCENT = 1.0  # trtexec: coefficient of variance of GPU compute above 1%
METRICS = ("Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency")


@dataclass
class Stat:
    """min/max/mean/median and percentiles of one metric, in ms."""

    min: float
    max: float
    mean: float
    median: float
    percentiles: dict[float, float]
    stddev: float

    @classmethod
    def of(cls, values: list[float], percentiles: tuple[float, ...]) -> Stat:
        ordered = sorted(values)
        n = len(ordered)
        if n == 0:
            inf = math.inf
            return cls(inf, inf, inf, inf, {p: inf for p in percentiles}, 0.0)
        mean = sum(ordered) / n
        middle = n // 2
        median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        var = sum((v - mean) ** 2 for v in ordered) / n
        return cls(ordered[0], ordered[-1], mean, median,
                   {p: percentile(ordered, p) for p in percentiles}, math.sqrt(var))

    def text(self) -> str:
        parts = [f"min = {fmt(self.min)} ms", f"max = {fmt(self.max)} ms",
                 f"mean = {fmt(self.mean)} ms", f"median = {fmt(self.median)} ms"]
        parts += [f"percentile({fmt(p)}%) = {fmt(v)} ms" for p, v in self.percentiles.items()]
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max, "mean": self.mean, "median": self.median,
                "percentiles": {fmt(p): v for p, v in self.percentiles.items()},
                "stddev": self.stddev}


def percentile(ordered: list[float], p: float) -> float:
    """trtexec's findPercentile over an ascending list: the value at index
    `n - 1 - int((1 - p/100) * n)`, computed exactly (in binary floating point
    `1 - 0.9` is a hair under 0.1, which would move p90 of 100 values one place)."""
    n = len(ordered)
    exclude = math.floor((100 - Fraction(str(p))) * n / 100)
    return ordered[max(n - 1 - exclude, 0)]


def fmt(value: float) -> str:
    """A number as C++'s default ostream prints a float (6 significant digits)."""
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:g}"


@dataclass
class PerformanceSummary:
    queries: int
    batch: int
    throughput_qps: float
    walltime_s: float
    device: str  # "cpu" or "cuda"
    transfers: str  # "measured", "disabled" or "n/a"
    stats: dict[str, Stat | None]  # None: not applicable here
    na_reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def latency(self) -> Stat:
        stat = self.stats["Latency"]
        assert stat is not None
        return stat

    @property
    def total_gpu_compute_s(self) -> float | None:
        gpu = self.stats.get("GPU Compute Time")
        return None if gpu is None else gpu.mean * self.queries / 1000.0

    def lines(self) -> list[str]:
        """The block's lines, as trtexec prints them (without the log prefix)."""
        out = ["=== Performance summary ===", f"Throughput: {fmt(self.throughput_qps)} qps"]
        for name in METRICS:
            stat = self.stats.get(name)
            out.append(f"{name}: {stat.text()}" if stat is not None
                       else f"{name}: n/a ({self.na_reasons.get(name, 'not measured')})")
        out.append(f"Total Host Walltime: {fmt(self.walltime_s)} s")
        total = self.total_gpu_compute_s
        out.append(f"Total GPU Compute Time: {fmt(total)} s" if total is not None
                   else f"Total GPU Compute Time: n/a "
                        f"({self.na_reasons.get('GPU Compute Time', 'not measured')})")
        return out

    def to_json(self) -> dict[str, Any]:
        """trtexec's labels as keys; `null` where a line says n/a."""
        data: dict[str, Any] = {
            "Throughput": self.throughput_qps,
            "Total Host Walltime": self.walltime_s,
            "Total GPU Compute Time": self.total_gpu_compute_s,
            "queries": self.queries, "batch": self.batch, "device": self.device,
            "transfers": self.transfers,
        }
        for name in METRICS:
            stat = self.stats.get(name)
            data[name] = None if stat is None else stat.to_json()
        data["warnings"] = self.warnings
        return data


def summarize(run: RunTrace, percentiles: tuple[float, ...], batch: int = 1,
              cuda_graph_hint: bool = True) -> PerformanceSummary:
    traces = run.traces
    walltime_ms = run.walltime_ms
    qps = len(traces) / walltime_ms * 1000.0 if walltime_ms > 0 else math.inf

    def stat(attr: str) -> Stat:
        return Stat.of([getattr(t, attr) for t in traces], percentiles)

    stats: dict[str, Stat | None] = {"Latency": stat("latency"), "Enqueue Time": stat("enqueue")}
    reasons: dict[str, str] = {}
    if run.device == "cpu":
        reason = "CPU engine: no device, no host-device transfers"
        stats.update({"H2D Latency": None, "GPU Compute Time": None, "D2H Latency": None})
        reasons.update({"H2D Latency": reason, "GPU Compute Time": reason,
                        "D2H Latency": reason})
    else:
        stats["GPU Compute Time"] = stat("compute")
        if run.transfers == "n/a":
            reason = "this runtime copies inside its compute call"
            stats.update({"H2D Latency": None, "D2H Latency": None})
            reasons.update({"H2D Latency": reason, "D2H Latency": reason})
        else:
            stats.update({"H2D Latency": stat("h2d"), "D2H Latency": stat("d2h")})
    summary = PerformanceSummary(len(traces), batch, qps, walltime_ms / 1000.0, run.device,
                                 run.transfers, stats, reasons)
    summary.warnings = _warnings(summary, cuda_graph_hint)
    return summary


def _warnings(s: PerformanceSummary, cuda_graph_hint: bool) -> list[str]:
    """trtexec's warnings: enqueue-bound, transfer-bound, unstable."""
    out: list[str] = []
    gpu = s.stats.get("GPU Compute Time")
    enqueue, h2d, d2h = s.stats["Enqueue Time"], s.stats.get("H2D Latency"), \
        s.stats.get("D2H Latency")
    if gpu is not None and enqueue is not None and enqueue.median > ENQUEUE_BOUND * gpu.median:
        out.append("* Throughput may be bound by Enqueue Time rather than GPU Compute and the "
                   "GPU may be under-utilized.")
        if cuda_graph_hint:
            out.append("  If not already in use, --useCudaGraph (utilize CUDA graphs where "
                       "possible) may increase the throughput.")
    if gpu is not None and h2d is not None and s.transfers == "measured" and \
            h2d.median >= gpu.median:
        out.append("* Throughput may be bound by host-to-device transfers for the inputs rather "
                   "than GPU Compute and the GPU may be under-utilized.")
        out.append("  Add --noDataTransfers flag to disable data transfers.")
    if gpu is not None and d2h is not None and s.transfers == "measured" and \
            d2h.median >= gpu.median:
        out.append("* Throughput may be bound by device-to-host transfers for the outputs "
                   "rather than GPU Compute and the GPU may be under-utilized.")
        out.append("  Add --noDataTransfers flag to disable data transfers.")
    timed = gpu if gpu is not None else s.stats["Latency"]
    if timed is not None and timed.mean > 0 and s.queries > 1:
        cv = timed.stddev / timed.mean * 100.0
        if cv > UNSTABLE_CV_PERCENT:
            if gpu is not None:
                out.append(f"* GPU compute time is unstable, with coefficient of variance = "
                           f"{fmt(cv)}%.")
                out.append("  If not already in use, locking GPU clock frequency or adding "
                           "--useSpinWait may improve the stability.")
            else:
                out.append(f"* Latency is unstable, with coefficient of variance = {fmt(cv)}%.")
                out.append("  Other programs on the machine, CPU frequency scaling or too few "
                           "iterations (--duration, --iterations) may cause this.")
    return out


def prolog_lines(run: RunTrace, batch: int = 1) -> list[str]:
    """trtexec's "Warmup completed ..." and "Timing trace has ..." lines."""
    return [f"Warmup completed {run.warmup_queries * batch} queries over "
            f"{fmt(run.warmup_ms)} ms",
            f"Timing trace has {len(run.traces) * batch} queries over "
            f"{fmt(run.walltime_ms / 1000.0)} s"]


def trace_detail_lines(traces: list[InferenceTrace], avg_runs: int, device: str) -> list[str]:
    """trtexec's "=== Trace details ===": averages over each `avg_runs` queries."""
    out = ["=== Trace details ===", f"Trace averages of {avg_runs} runs:"]
    for start in range(0, len(traces) - avg_runs + 1, avg_runs):
        chunk = traces[start:start + avg_runs]
        gpu = (fmt(sum(t.compute for t in chunk) / avg_runs) + " ms"
               if device == "cuda" else "n/a")
        host = sum(t.latency for t in chunk) / avg_runs
        enqueue = sum(t.enqueue for t in chunk) / avg_runs
        out.append(f"Average on {avg_runs} runs - GPU latency: {gpu} - Host latency: "
                   f"{fmt(host)} ms (enqueue {fmt(enqueue)} ms)")
    return out


EXPLANATIONS = [
    "=== Explanations of the performance metrics ===",
    "Total Host Walltime: the host walltime from when the first query (after warmups) is "
    "enqueued to when the last query is completed.",
    "GPU Compute Time: the GPU latency to execute the kernels for a query (n/a on the CPU).",
    "Total GPU Compute Time: the summation of the GPU Compute Time of all the queries. If this "
    "is significantly shorter than Total Host Walltime, the GPU may be under-utilized because "
    "of host-side overheads or data transfers.",
    "Throughput: the observed throughput computed by dividing the number of queries by the "
    "Total Host Walltime. If this is significantly lower than the reciprocal of GPU Compute "
    "Time, the GPU may be under-utilized because of host-side overheads or data transfers.",
    "Enqueue Time: the host latency to enqueue a query (on the CPU the query runs inside the "
    "call, so this is its latency). If this is longer than GPU Compute Time, the GPU may be "
    "under-utilized.",
    "H2D Latency: the latency for host-to-device data transfers for input tensors of a single "
    "query.",
    "D2H Latency: the latency for device-to-host data transfers for output tensors of a single "
    "query.",
    "Latency: the summation of H2D Latency, GPU Compute Time, and D2H Latency. This is the "
    "latency to infer a single query.",
]
