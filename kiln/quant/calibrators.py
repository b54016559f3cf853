"""Calibration methods: how a tensor's statistics become its amax (threshold).

- minmax: the largest |x| seen;
- percentile: that percentile of |x| (99.99 by default), from a 2048-bin histogram;
- entropy: TensorRT's EntropyCalibration2 (see kiln.quant.histogram).

`Calibrator` is what a user hands the builder: the data, the method and the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kiln.errors import KilnError
from kiln.quant.histogram import Histogram, entropy_amax, percentile_amax

METHODS = ("entropy", "minmax", "percentile")
DEFAULT_PERCENTILE = 99.99


@dataclass
class Calibrator:
    """Post-training quantization settings for `BuilderConfig(calibrator=...)`.

    data: a folder of .npz files (one batch each, keyed by input name), one .npz whose
        arrays stack the samples along the first axis, or an iterable of batches (dicts
        keyed by input name, tuples in input order, or single tensors; a torch
        DataLoader is one).
    method: "entropy" (TensorRT's EntropyCalibration2), "minmax" or "percentile".
    batches: use at most this many batches.
    cache: a TensorRT-format calibration cache: read when it exists (calibration is then
        skipped), written after calibrating otherwise.
    percentile: for method "percentile", the percentile of |x| taken as amax.
    batch_size: samples per batch when `data` is one stacked .npz.
    """

    data: Any = None
    method: str = "entropy"
    batches: int | None = None
    cache: str | None = None
    percentile: float = DEFAULT_PERCENTILE
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise KilnError(f"unknown calibration method {self.method!r}",
                            hint=f"use one of {', '.join(METHODS)}")
        if not 0 < self.percentile <= 100:
            raise KilnError(f"the calibration percentile must be in (0, 100], got "
                            f"{self.percentile}", hint="e.g. 99.99")
        if self.batches is not None and self.batches < 1:
            raise KilnError(f"--calibBatches must be at least 1, got {self.batches}")
        if self.batch_size is not None and self.batch_size < 1:
            raise KilnError(f"--calibBatchSize must be at least 1, got {self.batch_size}")

    @property
    def needs_histogram(self) -> bool:
        return self.method != "minmax"


class TensorStats:
    """Running statistics of one tensor over the calibration batches."""

    def __init__(self, histogram: bool) -> None:
        self.max = 0.0
        self.histogram = Histogram() if histogram else None

    def add(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        magnitudes = x.detach().abs()
        if magnitudes.dtype != torch.float32:
            magnitudes = magnitudes.float()
        batch_max = float(magnitudes.max())
        if batch_max != batch_max or batch_max == float("inf"):  # NaN/inf: ignore those values
            magnitudes = torch.nan_to_num(magnitudes, nan=0.0, posinf=0.0)
            batch_max = float(magnitudes.max())
        self.max = max(self.max, batch_max)
        if self.histogram is not None:
            self.histogram.add(magnitudes, batch_max)

    def amax(self, method: str, percentile: float = DEFAULT_PERCENTILE) -> float:
        if method == "minmax" or self.histogram is None:
            return self.max
        counts, edges = self.histogram.numpy()
        if method == "percentile":
            return min(percentile_amax(counts, edges, percentile), self.max)
        return min(entropy_amax(counts, edges), self.max)
