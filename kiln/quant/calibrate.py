"""Calibration: run the FP32 model over the calibration batches and record, for every
float tensor, the statistics its amax is chosen from.

The model runs as read (before fusions) with the reference interpreter, on the build's
device (the GPU when there is one), so every tensor has its ONNX name, as in TensorRT's
caches. Statistics are kept on the device; thresholds are computed on demand, for the
tensors the build quantizes or, when a cache is written, for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.ir import Graph
from kiln.ops.interpreter import compile_graph
from kiln.ops.program import StepError
from kiln.ops.tensors import to_torch
from kiln.quant.calibration_cache import ALGORITHMS, CalibrationTable
from kiln.quant.calibrators import Calibrator, TensorStats
from kiln.quant.data import calibration_batches, count_batches

Progress = Callable[[int, int | None], None]


class CalibrationResult:
    """Statistics of every float tensor; amax per tensor for the calibrator's method."""

    def __init__(self, stats: dict[str, TensorStats], calibrator: Calibrator,
                 batches: int) -> None:
        self.stats = stats
        self.calibrator = calibrator
        self.batches = batches
        self._amax: dict[str, float] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.stats

    def amax(self, name: str) -> float:
        if name not in self._amax:
            self._amax[name] = self.stats[name].amax(self.calibrator.method,
                                                     self.calibrator.percentile)
        return self._amax[name]

    def table(self, names: list[str] | None = None) -> CalibrationTable:
        chosen = names if names is not None else list(self.stats)
        amax = {n: self.amax(n) for n in chosen if n in self.stats}
        return CalibrationTable.from_amax(amax, self.calibrator.method)


def calibrate(graph: Graph, calibrator: Calibrator, device: torch.device,
              on_progress: Progress | None = None) -> CalibrationResult:
    """Runs `graph` (FP32, unfused) over the calibrator's batches."""
    names = [v.name for v in graph.inputs]
    dtypes = {v.name: v.dtype.numpy if v.dtype is not None else None for v in graph.inputs}
    program = compile_graph(graph, device)
    stats: dict[str, TensorStats] = {}
    histogram = calibrator.needs_histogram

    def record(name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            entry = stats.get(name)
            if entry is None:
                entry = stats[name] = TensorStats(histogram)
            entry.add(value)

    total = count_batches(calibrator.data, calibrator.batches, calibrator.batch_size)
    done = 0
    batches = calibration_batches(calibrator.data, names, limit=calibrator.batches,
                                  batch_size=calibrator.batch_size)
    with torch.inference_mode():
        for batch in batches:
            feeds = {k: to_torch(_as_model_type(v, dtypes.get(k)), device)
                     for k, v in batch.items()}
            for name, value in feeds.items():
                record(name, value)
            try:
                program.run(feeds, on_step=lambda _i, step, scope: [
                    record(n, scope[n]) for n in step.outputs if n is not None])
            except StepError as exc:
                raise KilnError(f"calibration batch {done + 1} failed in layer "
                                f"{exc.step_path}: {exc.cause}",
                                hint="check that the calibration data has the shapes and "
                                     "types the model expects") from None
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    return CalibrationResult(stats, calibrator, done)


def _as_model_type(value: Any, dtype: np.dtype | None) -> Any:
    """float64 samples for a float32 input (numpy's default) are converted, not refused."""
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and dtype.kind == "f":
            return value.to(getattr(torch, dtype.name))
        return value
    array = np.asarray(value)
    if array.dtype != dtype and array.dtype.kind in "fiub" and dtype.kind in "fiub" and (
            array.dtype.kind == dtype.kind or dtype.kind == "f"):
        return array.astype(dtype)
    return array


__all__ = ["ALGORITHMS", "CalibrationResult", "calibrate"]
