"""Per-layer times (trtexec's --dumpProfile and --exportProfile).

The engine's Program calls `on_step` after each layer; the profiler marks the time there
(CUDA events on a GPU, read once the query has synchronized, so layers are not
serialized by the profiler; the host clock on the CPU). A layer's time runs from the
previous layer's mark to its own, so the table sums to the compute time of the query.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


class LayerProfiler:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.names: list[str] = []
        self.times: dict[str, list[float]] = {}
        self._marks: list[tuple[str, Any]] = []
        self._start: Any = None
        self.queries = 0

    def reset(self) -> None:
        self.names, self.times, self.queries = [], {}, 0

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._marks = []
        self._start = self._mark()

    def on_step(self, index: int, step: Any, scope: Any) -> None:
        self._marks.append((step.name, self._mark()))

    def finish(self) -> None:
        """After the query synchronized: turn marks into per-layer milliseconds."""
        previous = self._start
        for name, mark in self._marks:
            ms = previous.elapsed_time(mark) if self.cuda else (mark - previous) * 1000.0
            if name not in self.times:
                self.names.append(name)
                self.times[name] = []
            self.times[name].append(ms)
            previous = mark
        self.queries += 1
        self._marks = []

    def rows(self) -> list[dict[str, Any]]:
        """trtexec's profile records: name, timeMs (total), averageMs, medianMs, percentage."""
        total = sum(sum(v) for v in self.times.values()) or 1.0
        count = max(self.queries, 1)
        return [{"name": name, "timeMs": sum(self.times[name]),
                 "averageMs": sum(self.times[name]) / count,
                 "medianMs": statistics.median(self.times[name]),
                 "percentage": sum(self.times[name]) / total * 100.0}
                for name in self.names]

    def table_lines(self) -> list[str]:
        """The table trtexec prints for --dumpProfile."""
        rows = self.rows()
        head = f"{'Time(ms)':>11}{'Avg.(ms)':>13}{'Median(ms)':>13}{'Time(%)':>10}   Layer"
        out = [f"=== Profile ({self.queries} iterations ) ===", head]
        for r in rows:
            out.append(f"{r['timeMs']:11.2f}{r['averageMs']:13.4f}{r['medianMs']:13.4f}"
                       f"{r['percentage']:10.1f}   {r['name']}")
        total = sum(r["timeMs"] for r in rows)
        medians = sum(r["medianMs"] for r in rows)
        out.append(f"{total:11.2f}{total / max(self.queries, 1):13.4f}{medians:13.4f}"
                   f"{100.0 if rows else 0.0:10.1f}   Total")
        return out

    def to_json(self) -> list[dict[str, Any]]:
        """--exportProfile: `[{"count": N}, {"name", "timeMs", "averageMs", "medianMs",
        "percentage"}, ...]`, as trtexec writes it."""
        return [{"count": self.queries}] + self.rows()
