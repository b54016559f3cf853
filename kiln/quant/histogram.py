"""Histograms of |x| and the thresholds chosen from them (entropy, percentile).

`Histogram` keeps NUM_BINS (2048) bins of equal width over [0, top). The first batch
with a non-zero maximum sets top to that maximum; a later batch that goes beyond it
doubles the width (merging neighbouring bins pairwise, which is exact) until it fits,
so the histogram always has 2048 bins, as TensorRT's calibrators do.

`entropy_amax` is TensorRT's EntropyCalibration2 threshold search, as NVIDIA published
it (pytorch-quantization / ModelOpt `_compute_amax_entropy`): bin 0 takes the count of
bin 1 (ReLU zeros would otherwise dominate); for every candidate i from 128 to 2048 bins,
P is the first i bins with everything beyond folded into the last one, Q merges those i
bins into 128 levels and spreads each level evenly over its non-empty bins; the
threshold is the upper edge of bin i for the i with the smallest KL(P || Q) (the last one
on ties). It is computed for all i at once from prefix sums instead of a loop over i.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_BINS = 2048
START_BIN = 128
QUANT_LEVELS = 128  # 8-bit signed: 128 magnitudes


class Histogram:
    """Counts of |x| in NUM_BINS bins of equal width, kept on x's device."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # int64 [NUM_BINS]
        self.width = 0.0
        self.pending_zeros = 0  # elements seen while every value so far was zero

    @property
    def top(self) -> float:
        return self.width * NUM_BINS

    def add(self, magnitudes: torch.Tensor, amax: float) -> None:
        """Adds |x| (already absolute, float) whose maximum is `amax`."""
        if self.counts is None:
            if amax <= 0:
                self.pending_zeros += magnitudes.numel()
                return
            self.width = amax / NUM_BINS
            self.counts = torch.zeros(NUM_BINS, dtype=torch.int64, device=magnitudes.device)
            self.counts[0] += self.pending_zeros
        while amax > self.top:
            self._double_width()
        self.counts += _bin_counts(magnitudes.reshape(-1), self.width).to(self.counts.device)

    def _double_width(self) -> None:
        assert self.counts is not None
        merged = self.counts.view(NUM_BINS // 2, 2).sum(dim=1)
        self.counts = torch.cat([merged, torch.zeros_like(merged)])
        self.width *= 2

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) as numpy; an all-zero tensor gives one bin [0, 0]."""
        if self.counts is None:
            return np.array([self.pending_zeros], dtype=np.float64), np.zeros(2)
        counts = self.counts.cpu().numpy().astype(np.float64)
        return counts, np.arange(NUM_BINS + 1, dtype=np.float64) * self.width


def _bin_counts(values: torch.Tensor, width: float) -> torch.Tensor:
    """Counts of floor(value / width), the last bin taking everything at or above its edge
    (numpy's bincount on the CPU is several times faster than torch's; histc on the GPU)."""
    if values.device.type == "cpu":
        index = (values.numpy() * np.float32(1.0 / width)).astype(np.int32)
        np.minimum(index, NUM_BINS - 1, out=index)
        return torch.from_numpy(np.bincount(index, minlength=NUM_BINS).astype(np.int64))
    counts = torch.histc(values, bins=NUM_BINS, min=0.0, max=width * NUM_BINS)
    return counts.round().to(torch.int64)


def entropy_amax(counts: np.ndarray, edges: np.ndarray, start: int = START_BIN,
                 levels: int = QUANT_LEVELS) -> float:
    """The threshold minimizing KL(P || Q) (see the module docstring)."""
    bins = np.asarray(counts, dtype=np.float64).copy()
    n = len(bins)
    if n <= start or bins.sum() == 0:
        return float(edges[-1])
    bins[0] = bins[1]
    kl = kl_divergences(bins, start, levels)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))  # the last minimum
    return float(edges[start + best])


def kl_divergences(bins: np.ndarray, start: int = START_BIN,
                   levels: int = QUANT_LEVELS) -> np.ndarray:
    """KL(P_i || Q_i) for i = start .. len(bins), vectorized over i."""
    n = len(bins)
    total = bins.sum()
    i = np.arange(start, n + 1)
    cum = np.concatenate([[0.0], np.cumsum(bins)])
    nonzero = np.concatenate([[0], np.cumsum(bins > 0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(bins > 0, bins * np.log(bins), 0.0)
    cum_plogp = np.concatenate([[0.0], np.cumsum(plogp)])

    # level g of candidate i covers bins [ceil(g*i/levels), ceil((g+1)*i/levels)), i.e. bin j
    # is in level floor(j*levels/i), as np.digitize over np.linspace(0, i, levels+1) gives
    bounds = (np.arange(levels + 1)[None, :] * i[:, None] + levels - 1) // levels
    group_sum = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    group_nonzero = nonzero[bounds[:, 1:]] - nonzero[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        level_q = np.where(group_nonzero > 0, group_sum / np.maximum(group_nonzero, 1), 0.0)
        log_q = np.where(level_q > 0, np.log(np.where(level_q > 0, level_q, 1.0)), 0.0)
    # sum over kept bins of bins_j * log q_j: each level contributes group_sum * log(q)
    plogq = (group_sum * log_q).sum(axis=1)

    last = bins[i - 1]
    outliers = total - cum[i]
    last_q = level_q[:, -1]  # bin i-1 always lies in the last level
    last_logq = log_q[:, -1]
    p_last = last + outliers
    with np.errstate(divide="ignore", invalid="ignore"):
        sum_plogp = cum_plogp[i - 1] + np.where(p_last > 0, p_last * np.log(p_last), 0.0)
    sum_plogq = plogq + outliers * last_logq
    kept = cum[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (sum_plogp - sum_plogq) / total - np.log(total) + np.log(kept)
    impossible = ((last == 0) & (outliers > 0)) | (kept == 0) | (last_q == 0) & (p_last > 0)
    return np.where(impossible, np.inf, kl)


def percentile_amax(counts: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """The `percentile` (0..100) of |x|, interpolated linearly inside its bin."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return float(edges[-1])
    target = total * percentile / 100.0
    cum = np.cumsum(counts)
    index = int(np.searchsorted(cum, target, side="left"))
    index = min(index, len(counts) - 1)
    before = cum[index - 1] if index > 0 else 0.0
    inside = counts[index]
    fraction = (target - before) / inside if inside > 0 else 1.0
    return float(edges[index] + fraction * (edges[index + 1] - edges[index]))
