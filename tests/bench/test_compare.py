"""Polygraphy's comparison semantics: each case is built so the right answer follows from
the definition (fail an element only when it is outside both tolerances, etc.)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kiln.bench.compare import (
    Tolerances,
    compare_output,
    compare_outputs,
    histogram_lines,
    stats_text,
)
from kiln.bench.metrics import cosine_similarity, psnr, topk_agreement
from kiln.errors import KilnError

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 8)])
def test_within_tolerance_passes_beyond_fails(shape):
    ref = RNG.standard_normal(shape).astype(np.float32)
    noise = RNG.uniform(-1, 1, shape)
    close = ref + (noise * 5e-6).astype(np.float32)  # |d| < 1e-5 = default atol
    assert compare_output("y", close, ref).passed
    far = ref.copy()
    far.flat[1] += np.float32(max(1e-3, 1e-3 * abs(far.flat[1])))  # outside atol and rtol
    result = compare_output("y", far, ref)
    assert not result.passed and result.mismatches == 1


def test_elemwise_fails_only_outside_both_tolerances():
    ref = np.array([1.0, 1000.0, 1e-9], dtype=np.float64)
    diff = np.array([2e-5, 2e-5, 2e-5])  # abs 2e-5 > atol everywhere
    # rel: 2e-5 (> rtol), 2e-8 (<= rtol), 2e4 (> rtol): elements 0 and 2 fail
    assert compare_output("y", ref + diff, ref).mismatches == 2
    # with atol 3e-5 every element is within atol: passes whatever the relative error
    assert compare_output("y", ref + diff, ref, Tolerances(atol=3e-5)).passed


def test_statistic_modes():
    ref = np.ones(1000)
    out = ref.copy()
    out[0] += 1.0  # one outlier: max abs 1.0, mean 1e-3, median 0
    tol = dict(atol=0.01, rtol=0.01)
    assert not compare_output("y", out, ref, Tolerances(**tol, check_error_stat="max")).passed
    assert compare_output("y", out, ref, Tolerances(**tol, check_error_stat="mean")).passed
    assert compare_output("y", out, ref, Tolerances(**tol, check_error_stat="median")).passed
    assert compare_output("y", out, ref, Tolerances(**tol, check_error_stat="quantile")).passed
    out[:20] += 1.0  # 2% of elements off: the 0.99 quantile sees them
    assert not compare_output("y", out, ref,
                              Tolerances(**tol, check_error_stat="quantile")).passed
    assert compare_output("y", out, ref, Tolerances(**tol, check_error_stat="quantile",
                                                    error_quantile=0.95)).passed


def test_required_tolerance_is_the_tightest_that_passes():
    ref = RNG.standard_normal(200)
    out = ref + RNG.normal(0, 1e-3, 200)
    first = compare_output("y", out, ref, Tolerances(atol=0.0, rtol=0.0))
    need = first.required_atol
    assert need == pytest.approx(np.abs(out - ref).max())
    assert compare_output("y", out, ref, Tolerances(atol=need, rtol=0.0)).passed
    assert not compare_output("y", out, ref, Tolerances(atol=need * 0.999, rtol=0.0)).passed
    need_rel = first.required_rtol
    assert compare_output("y", out, ref, Tolerances(atol=0.0, rtol=need_rel)).passed


def test_zeros_nan_infinities_and_booleans():
    # a zero in the reference gets epsilon: tiny absolute error still passes on atol
    assert compare_output("y", np.array([1e-6]), np.array([0.0])).passed
    assert not compare_output("y", np.array([np.nan]), np.array([1.0])).passed
    inf = np.array([np.inf, -np.inf])
    assert not compare_output("y", inf, inf).passed  # Polygraphy: inf - inf is NaN
    assert compare_output("y", inf, inf, Tolerances(infinities_compare_equal=True)).passed
    a, b = np.array([True, False, True]), np.array([True, True, True])
    result = compare_output("y", a, b)
    assert not result.passed and result.mismatches == 1
    assert compare_output("y", a, a).passed
    ints = np.array([0, 3, 7], dtype=np.int64)
    assert compare_output("y", ints, ints).passed


def test_shape_mismatch_fails_without_comparing():
    result = compare_output("y", np.zeros((2, 3)), np.zeros((3, 2)))
    assert not result.passed and "(2, 3) and (3, 2)" in result.shape_mismatch


def test_per_output_tolerances_with_default_key():
    ref = {"a": np.ones(4), "b": np.ones(4)}
    out = {"a": np.ones(4) + 1e-3, "b": np.ones(4) + 1e-3, "only_here": np.ones(1)}
    tol = Tolerances(atol={"": 1e-5, "a": 1e-2}, rtol=1e-5)
    results = compare_outputs(out, ref, tol)
    assert set(results) == {"a", "b"}  # outputs the reference lacks are skipped
    assert results["a"].passed and not results["b"].passed
    with pytest.raises(KilnError, match="not an error statistic"):
        Tolerances(check_error_stat="maximum")


def test_metrics_against_their_formulas():
    ref = RNG.standard_normal((6, 10))
    out = ref + RNG.normal(0, 0.01, ref.shape)
    cos = np.sum(out * ref) / (np.linalg.norm(out) * np.linalg.norm(ref))
    assert cosine_similarity(out, ref) == pytest.approx(cos)
    mse = np.mean((out - ref) ** 2)
    assert psnr(out, ref) == pytest.approx(10 * math.log10(np.max(np.abs(ref)) ** 2 / mse))
    assert psnr(ref, ref) == math.inf
    swapped = ref.copy()
    for row in (0, 3):  # swap the top class with the runner-up in two rows of six
        order = np.argsort(-ref[row])
        swapped[row, order[0]], swapped[row, order[1]] = ref[row, order[1]], ref[row, order[0]]
    agreement = topk_agreement(swapped, ref, k=5)
    assert agreement["top1"] == pytest.approx(4 / 6)
    assert agreement["topk"] == pytest.approx(1.0)  # same top-5 sets


def test_stats_and_histogram_text():
    data = np.array([[1.0, -2.0], [3.0, 0.5]])
    text = stats_text(data)
    assert "min=-2 at (0, 1)" in text and "max=3 at (1, 0)" in text
    assert f"mean={data.mean():.5g}" in text and "p99=" in text
    lines = histogram_lines(data)
    assert lines[0] == "---- Histogram ----" and len(lines) == 12
    assert sum(int(line.split("|")[1]) for line in lines[2:]) == data.size
