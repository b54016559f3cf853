"""Calibration statistics: histograms of |x|, the entropy (KL) threshold search against a
one-candidate-at-a-time implementation of the published algorithm and against KL values
worked out by hand, percentiles against numpy, minmax."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kiln.errors import KilnError
from kiln.quant.calibrators import Calibrator, TensorStats
from kiln.quant.histogram import (
    NUM_BINS,
    Histogram,
    entropy_amax,
    kl_divergences,
)


def loop_entropy_amax(hist: np.ndarray, edges: np.ndarray, start: int = 128,
                      levels: int = 128) -> float:
    """EntropyCalibration2 as NVIDIA describes it, one candidate i at a time."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences = []
    for i in range(start, len(bins) + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        level = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        level[bins[:i] == 0] = -1
        kept = level >= 0  # each level's count, spread evenly over its non-empty bins
        sums = np.bincount(level[kept], weights=bins[:i][kept], minlength=levels)
        sizes = np.bincount(level[kept], minlength=levels)
        q = np.where(kept, sums[level] / np.maximum(sizes[level], 1), 0.0)
        p, q = p / p.sum(), q / q.sum()
        if np.any((p > 0) & (q == 0)):
            divergences.append(math.inf)
            continue
        keep = p > 0
        divergences.append(float(np.sum(p[keep] * np.log(p[keep] / q[keep]))))
    divergences = np.array(divergences)
    best = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return float(edges[start + best])


def _samples(kind: str, rng: np.random.Generator, n: int = 200_000) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal(n)
    if kind == "laplace":
        return rng.laplace(size=n)
    if kind == "relu":
        return np.maximum(rng.standard_normal(n) * 2 + 0.5, 0)
    if kind == "uniform":
        return rng.uniform(-3, 3, n)
    if kind == "outliers":
        x = rng.standard_normal(n)
        x[:20] *= 40
        return x
    return rng.lognormal(0, 1, n)


@pytest.mark.parametrize("kind", ["gaussian", "laplace", "relu", "uniform", "outliers",
                                  "lognormal"])
def test_entropy_threshold_matches_the_published_algorithm(kind):
    x = np.abs(_samples(kind, np.random.default_rng(len(kind))))
    hist, edges = np.histogram(x, bins=NUM_BINS, range=(0, x.max()))
    assert entropy_amax(hist, edges) == loop_entropy_amax(hist, edges)


def test_entropy_on_reduced_histograms_matches_the_loop():
    """Fewer bins (a fast check of every candidate, including the KL values themselves)."""
    rng = np.random.default_rng(3)
    for trial in range(5):
        x = np.abs(rng.standard_normal(5000) * (trial + 1))
        hist, edges = np.histogram(x, bins=300, range=(0, x.max()))
        assert entropy_amax(hist, edges, start=40, levels=16) == loop_entropy_amax(
            hist, edges, start=40, levels=16)


def test_kl_values_worked_out_by_hand():
    bins = np.array([3.0, 1.0, 2.0, 2.0])
    ln = math.log
    # i = 2: P = [3, 1+2+2]/8; two levels of one bin each: Q = [3, 1]/4
    kl2 = 3 / 8 * ln((3 / 8) / (3 / 4)) + 5 / 8 * ln((5 / 8) / (1 / 4))
    # i = 3: P = [3, 1, 4]/8; bins 0,1 form level 0 (2 each), bin 2 level 1: Q = [2, 2, 2]/6
    kl3 = 3 / 8 * ln((3 / 8) / (1 / 3)) + 1 / 8 * ln((1 / 8) / (1 / 3)) + 4 / 8 * ln(
        (4 / 8) / (1 / 3))
    # i = 4: P = [3, 1, 2, 2]/8; levels {0, 1} and {2, 3}: Q = [2, 2, 2, 2]/8
    kl4 = 3 / 8 * ln(3 / 2) + 1 / 8 * ln(1 / 2)
    np.testing.assert_allclose(kl_divergences(bins, start=2, levels=2), [kl2, kl3, kl4],
                               rtol=1e-12)


def test_kl_is_infinite_when_outliers_fall_on_an_empty_last_bin():
    bins = np.array([5.0, 0.0, 0.0, 3.0])
    kl = kl_divergences(bins, start=2, levels=2)
    assert kl[0] == math.inf and np.isfinite(kl[-1])


def test_entropy_suppresses_outliers_and_keeps_plain_ranges():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal(400_000))
    x[:10] = 60.0  # a few huge values: minmax would waste the range on them
    hist, edges = np.histogram(x, bins=NUM_BINS, range=(0, x.max()))
    assert 2.0 < entropy_amax(hist, edges) < 10.0
    uniform = rng.uniform(0, 1, 400_000)
    hist, edges = np.histogram(uniform, bins=NUM_BINS, range=(0, uniform.max()))
    assert entropy_amax(hist, edges) > 0.9


def test_histogram_doubles_its_width_exactly():
    """The first batch sets the range [0, 1]; a batch reaching 3.5 makes it [0, 4] by
    merging bins pairwise twice. Counts agree with numpy on the final edges."""
    rng = np.random.default_rng(1)
    fine = 1.0 / NUM_BINS
    first = (rng.integers(0, NUM_BINS, 5000) + 0.5) * fine  # bin centres: no edge ambiguity
    first[0] = 1.0
    hist = Histogram()
    hist.add(torch.tensor(first, dtype=torch.float64), float(first.max()))
    assert hist.width == fine
    second = rng.uniform(0, 3.5, 5000)
    hist.add(torch.tensor(second, dtype=torch.float64), float(second.max()))
    assert hist.top == 4.0 and hist.width == 4 * fine
    counts, edges = hist.numpy()
    first_counts, _ = np.histogram(first, bins=edges)
    second_counts, _ = np.histogram(second, bins=edges)
    assert counts.sum() == 10_000
    assert np.abs(counts - first_counts - second_counts).sum() <= 4  # edge rounding only


def test_histogram_of_zeros_then_values_keeps_the_zeros():
    hist = Histogram()
    hist.add(torch.zeros(100), 0.0)
    hist.add(torch.full((10,), 2.0), 2.0)
    counts, _ = hist.numpy()
    assert counts[0] == 100 and counts[-1] == 10 and counts.sum() == 110


@pytest.mark.parametrize("percentile", [99.0, 99.9, 99.99])
def test_percentile_matches_numpy_within_a_bin(percentile):
    rng = np.random.default_rng(int(percentile * 100))
    x = np.abs(rng.standard_normal(300_000)).astype(np.float32)
    stats = TensorStats(histogram=True)
    for chunk in np.array_split(x, 3):
        stats.add(torch.from_numpy(chunk))
    got = stats.amax("percentile", percentile)
    width = stats.histogram.width
    assert abs(got - np.percentile(x, percentile)) <= width


def test_minmax_is_the_largest_magnitude_and_ignores_nan():
    stats = TensorStats(histogram=False)
    stats.add(torch.tensor([1.0, -7.5, 3.0]))
    stats.add(torch.tensor([float("nan"), 2.0, -4.0]))
    assert stats.amax("minmax") == 7.5


def test_entropy_stats_over_batches_match_one_histogram():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(100_000).astype(np.float32)
    stats = TensorStats(histogram=True)
    stats.add(torch.from_numpy(x))
    hist, edges = np.histogram(np.abs(x), bins=NUM_BINS, range=(0, np.abs(x).max()))
    assert stats.amax("entropy") == pytest.approx(loop_entropy_amax(hist, edges), rel=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "kl"}, "unknown calibration method"),
    ({"percentile": 0}, "percentile"),
    ({"batches": 0}, "calibBatches"),
])
def test_calibrator_settings_are_checked(kwargs, message):
    with pytest.raises(KilnError, match=message):
        Calibrator(data=[], **kwargs)
