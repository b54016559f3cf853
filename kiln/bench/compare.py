"""Output comparison with Polygraphy's semantics (`CompareFunc.simple`) and defaults.

For each output (of the run under test, `out`, against the reference, `ref`):

    absdiff = |out - ref|            (XOR for two boolean outputs)
    reldiff = absdiff / |ref|        (zeros of a float reference get +2.22e-16 first)

`check_error_stat` picks what must stay within tolerance (default "elemwise"):

- elemwise: an element fails only when it is outside BOTH tolerances
  (absdiff > atol or NaN) and (reldiff > rtol or NaN); the output fails if any element does;
- max / mean / median / quantile: that statistic of absdiff and of reldiff; the output fails
  when both exceed their tolerance (or are NaN).

Defaults: atol = rtol = 1e-5, error quantile 0.99, matching infinities compare unequal
(their difference is NaN). Tolerances and the statistic may be given per output as a dict
whose "" key is the default for outputs not named. Outputs of different shapes fail
without comparing values. The "minimum required tolerance" is the chosen statistic of
absdiff and of reldiff (the max for elemwise): either alone would pass.

Differences are computed in float64 (Polygraphy casts fp16 up to fp32), so they are exact
for every input type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.bench.metrics import output_metrics
from kiln.errors import KilnError

CHECK_ERROR_STATS = ("elemwise", "max", "mean", "median", "quantile")
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-5
DEFAULT_ERROR_STAT = "elemwise"
DEFAULT_QUANTILE = 0.99
EPSILON = 2.220446049250313e-16  # added to zeros of the reference before dividing


@dataclass
class Tolerances:
    atol: float | Mapping[str, float] = DEFAULT_ATOL
    rtol: float | Mapping[str, float] = DEFAULT_RTOL
    check_error_stat: str | Mapping[str, str] = DEFAULT_ERROR_STAT
    error_quantile: float | Mapping[str, float] = DEFAULT_QUANTILE
    infinities_compare_equal: bool = False
    top_k: int = 5

    def __post_init__(self) -> None:
        stats = self.check_error_stat
        for stat in (stats.values() if isinstance(stats, Mapping) else [stats]):
            if stat not in CHECK_ERROR_STATS:
                raise KilnError(f"--check-error-stat: {stat!r} is not an error statistic",
                                hint=f"use one of {', '.join(CHECK_ERROR_STATS)}")
        quantiles = self.error_quantile
        for q in (quantiles.values() if isinstance(quantiles, Mapping) else [quantiles]):
            if not 0.0 <= q <= 1.0:
                raise KilnError(f"--error-quantile must be in [0, 1], got {q:g}")

    def for_output(self, name: str) -> tuple[float, float, str, float]:
        return (_pick(self.atol, name, DEFAULT_ATOL), _pick(self.rtol, name, DEFAULT_RTOL),
                _pick(self.check_error_stat, name, DEFAULT_ERROR_STAT),
                _pick(self.error_quantile, name, DEFAULT_QUANTILE))


def _pick(value: Any, name: str, default: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(name, value.get("", default))
    return value


@dataclass
class OutputComparison:
    """The result for one output, with what Polygraphy reports about it."""

    name: str
    passed: bool
    atol: float
    rtol: float
    check_error_stat: str
    error_quantile: float
    shape_mismatch: str | None = None
    absdiff: dict[str, float] = field(default_factory=dict)  # max/mean/median/quantile
    reldiff: dict[str, float] = field(default_factory=dict)
    mismatches: int = 0  # elements outside both tolerances (elemwise)
    metrics: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def required_atol(self) -> float:
        return self._required(self.absdiff)

    @property
    def required_rtol(self) -> float:
        return self._required(self.reldiff)

    def _required(self, stats: dict[str, float]) -> float:
        key = "max" if self.check_error_stat == "elemwise" else self.check_error_stat
        return stats.get(key, float("nan"))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "passed": self.passed, "atol": self.atol, "rtol": self.rtol,
            "check_error_stat": self.check_error_stat, "shape_mismatch": self.shape_mismatch,
            "absdiff": self.absdiff, "reldiff": self.reldiff, "mismatches": self.mismatches,
            "required_atol": self.required_atol, "required_rtol": self.required_rtol,
            "metrics": self.metrics,
        }


def compare_output(name: str, out: Any, ref: Any, tolerances: Tolerances | None = None
                   ) -> OutputComparison:
    tol = tolerances or Tolerances()
    atol, rtol, stat, quantile = tol.for_output(name)
    out, ref = np.asarray(out), np.asarray(ref)
    result = OutputComparison(name, False, atol, rtol, stat, quantile)
    if out.shape != ref.shape:
        result.shape_mismatch = f"Output shapes are {out.shape} and {ref.shape}"
        result.arrays = {"out": out, "ref": ref}
        return result
    absdiff, reldiff = differences(out, ref, tol.infinities_compare_equal)
    result.absdiff = _diff_stats(absdiff, stat, quantile)
    result.reldiff = _diff_stats(reldiff, stat, quantile)
    if stat == "elemwise":
        with np.errstate(invalid="ignore"):
            bad = ((absdiff > atol) | np.isnan(absdiff)) & ((reldiff > rtol) | np.isnan(reldiff))
        result.mismatches = int(np.count_nonzero(bad))
        failed = result.mismatches > 0
    else:
        failed = _stat_failed(result.absdiff[stat], atol) and \
            _stat_failed(result.reldiff[stat], rtol)
    result.passed = not failed
    result.metrics = output_metrics(out, ref, tol.top_k)
    result.arrays = {"out": out, "ref": ref, "absdiff": absdiff, "reldiff": reldiff}
    return result


def differences(out: np.ndarray, ref: np.ndarray, infinities_compare_equal: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    if out.dtype == bool and ref.dtype == bool:
        absdiff = np.logical_xor(out, ref).astype(np.float64)
    else:
        a, b = _as_float64(out), _as_float64(ref)
        with np.errstate(invalid="ignore", over="ignore"):
            absdiff = np.abs(a - b)
        if infinities_compare_equal:
            absdiff = np.where(np.isinf(a) & (a == b), 0.0, absdiff)
    denominator = np.abs(_as_float64(ref))
    if ref.dtype.kind == "f":  # Polygraphy adds the epsilon to float references only
        denominator = np.where(denominator == 0, EPSILON, denominator)
    with np.errstate(divide="ignore", invalid="ignore"):
        reldiff = absdiff / denominator
    return absdiff, reldiff


def _as_float64(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "fiub":
        return array.astype(np.float64)
    raise KilnError(f"cannot compare values of type {array.dtype} numerically")


def _diff_stats(diff: np.ndarray, stat: str, quantile: float) -> dict[str, float]:
    if diff.size == 0:  # Polygraphy: statistics of an empty tensor are 0
        return {"max": 0.0, "mean": 0.0, "median": 0.0, "quantile": 0.0}
    stats = {"max": float(np.max(diff)), "mean": float(np.mean(diff)),
             "median": float(np.median(diff))}
    if stat == "quantile":
        stats["quantile"] = float(np.quantile(diff, quantile))
    return stats


def _stat_failed(value: float, tolerance: float) -> bool:
    return bool(np.isnan(value) or value > tolerance)


def compare_outputs(outputs: Mapping[str, Any], reference: Mapping[str, Any],
                    tolerances: Tolerances | None = None) -> dict[str, OutputComparison]:
    """Every output of `outputs` that `reference` also has (Polygraphy iterates over the
    first result's outputs and skips names the second lacks)."""
    return {name: compare_output(name, value, reference[name], tolerances)
            for name, value in outputs.items() if name in reference}


# ---------------------------------------------------------------- Polygraphy's text
def stats_text(array: np.ndarray) -> str:
    """`mean=..., std-dev=..., var=..., median=..., min=... at (i, j), max=... at (...),
    avg-magnitude=..., p90=..., p95=..., p99=...` as Polygraphy prints it."""
    if array.size == 0:
        return "mean=0, std-dev=0, var=0, median=0, min=0 at 0, max=0 at 0, avg-magnitude=0"
    data = array.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        text = (f"mean={np.mean(data):.5g}, std-dev={np.std(data):.5g}, "
                f"var={np.var(data):.5g}, median={np.median(data):.5g}, "
                f"min={np.min(data):.5g} at {_index(np.argmin(data), data.shape)}, "
                f"max={np.max(data):.5g} at {_index(np.argmax(data), data.shape)}, "
                f"avg-magnitude={np.mean(np.abs(data)):.5g}")
        if array.dtype != bool:
            text += ", " + ", ".join(f"p{q}={np.quantile(data, q / 100):.5g}"
                                     for q in (90, 95, 99))
    return text


def _index(flat: Any, shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(i)) for i in np.unravel_index(int(flat), shape)) + \
        ("," if len(shape) == 1 else "") + ")"


def histogram_lines(array: np.ndarray, hist_range: tuple[float, float] | None = None
                    ) -> list[str]:
    """Polygraphy's text histogram (10 bins)."""
    if array.dtype == bool or array.size == 0:
        return []
    data = array.astype(np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return []
    if hist_range is not None and not all(np.isfinite(hist_range)):
        hist_range = None
    counts, edges = np.histogram(data, range=hist_range)
    most = int(counts.max()) or 1
    labels = [f"{e:.3g}" for e in edges]
    w0 = max(len(x) for x in labels)
    w1 = max(len(x) for x in labels[1:])
    out = ["---- Histogram ----", f"{'Bin Range':{w0 + w1 + 5}}|  Num Elems | Visualization"]
    for n, lo, hi in zip(counts, labels, labels[1:]):
        out.append(f"({lo:<{w0}}, {hi:<{w1}}) | {int(n):10} | {'#' * int(40 * n / most)}")
    return out


def metrics_text(metrics: dict[str, Any]) -> str | None:
    if not metrics:
        return None
    parts = [f"Cosine Similarity: {metrics['cosine']:.8g}", f"PSNR: {metrics['psnr_db']:.4g} dB"]
    topk = metrics.get("topk")
    if topk:
        agree = round(topk["top1"] * topk["rows"])
        parts.append(f"Top-1 Agreement: {100 * topk['top1']:.2f}% ({agree}/{topk['rows']})")
        if topk["k"] > 1:
            parts.append(f"Top-{topk['k']} Overlap: {100 * topk['topk']:.2f}%")
    return " | ".join(parts)
