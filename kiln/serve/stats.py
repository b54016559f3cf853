"""Per model version counters: what Triton's statistics extension reports and what the
Prometheus metrics are read from, so the two always agree.

Request durations count once per request; compute durations count once per request too
(a request batched with seven others is charged the whole batch's compute time, as Triton
does), and once per execution in the per-batch-size table.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

# why a request failed, Triton's `reason` label of nv_inference_request_failure
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class Timings:
    """Where one request's time went, in nanoseconds, filled in by the batcher."""

    queue: int = 0
    compute_input: int = 0
    compute_infer: int = 0
    compute_output: int = 0


class ModelStats:
    """Thread-safe: the batcher's threads and the event loop both record here."""

    STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.durations = {stage: Duration() for stage in self.STAGES}
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.inference_count = 0  # batch rows of successful requests
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, BatchDurations] = {}

    def record_success(self, rows: int, total_ns: int, timings: Timings) -> None:
        with self._lock:
            d = self.durations
            d["success"].add(total_ns)
            d["queue"].add(timings.queue)
            d["compute_input"].add(timings.compute_input)
            d["compute_infer"].add(timings.compute_infer)
            d["compute_output"].add(timings.compute_output)
            self.inference_count += rows
            self.last_inference_ms = time.time_ns() // 1_000_000

    def record_failure(self, total_ns: int, reason: str) -> None:
        with self._lock:
            self.durations["fail"].add(total_ns)
            self.failures[reason] += 1

    def record_execution(self, rows: int, timings: Timings) -> None:
        with self._lock:
            self.execution_count += 1
            batch = self.batches.setdefault(rows, BatchDurations())
            batch.compute_input.add(timings.compute_input)
            batch.compute_infer.add(timings.compute_infer)
            batch.compute_output.add(timings.compute_output)

    def snapshot(self) -> dict:
        """Counters at one instant, for metrics."""
        with self._lock:
            return {
                "durations": {k: Duration(v.count, v.ns) for k, v in self.durations.items()},
                "failures": dict(self.failures),
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
            }

    def to_json(self, name: str, version: str) -> dict:
        """One entry of Triton's `model_stats` list."""
        with self._lock:
            stats = {stage: d.to_json() for stage, d in self.durations.items()}
            stats.update({"cache_hit": Duration().to_json(), "cache_miss": Duration().to_json()})
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": stats,
                "response_stats": {},
                "batch_stats": [
                    {"batch_size": size,
                     "compute_input": b.compute_input.to_json(),
                     "compute_infer": b.compute_infer.to_json(),
                     "compute_output": b.compute_output.to_json()}
                    for size, b in sorted(self.batches.items())
                ],
                "memory_usage": [],
            }
