"""trtexec's statistics and summary block, on synthetic traces whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.bench.summary import Stat, percentile, summarize
from kiln.bench.trace import InferenceTrace, RunTrace
from tests.bench.trtexec_log import parse_summary

PERCENTILES = (0.0, 50.0, 90.0, 95.0, 99.0, 99.9, 100.0)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 100, 1001])
def test_percentile_is_nearest_rank(n):
    # trtexec's index n-1-int((1-p/100)*n) is the inverted-CDF (nearest rank) percentile
    values = sorted(np.random.default_rng(n).exponential(size=n).tolist())
    for p in PERCENTILES:
        expected = np.percentile(values, p, method="inverted_cdf") if p > 0 else values[0]
        assert percentile(values, p) == pytest.approx(expected), p


@pytest.mark.parametrize("n", [1, 4, 9])
def test_stat_matches_numpy(n):
    values = np.random.default_rng(3).uniform(0.1, 5.0, size=n)
    stat = Stat.of(values.tolist(), (90.0,))
    assert stat.min == values.min() and stat.max == values.max()
    assert stat.mean == pytest.approx(values.mean())
    assert stat.median == pytest.approx(np.median(values))  # mean of the middle two if even
    assert stat.stddev == pytest.approx(values.std())


def _trace(start: float, h2d: float, enqueue: float, compute: float, d2h: float
           ) -> InferenceTrace:
    c0 = start + h2d
    return InferenceTrace(c0, c0 + enqueue, start, c0, c0, c0 + compute, c0 + compute,
                          c0 + compute + d2h)


def _run(phases: list[tuple[float, float, float, float]], device: str = "cuda") -> RunTrace:
    traces, t = [], 0.0
    for h2d, enqueue, compute, d2h in phases:
        traces.append(_trace(t, h2d, enqueue, compute, d2h))
        t += h2d + compute + d2h + 0.01
    return RunTrace(traces, 3, 200.0, device, "measured" if device == "cuda" else "n/a")


def test_summary_numbers_follow_their_definitions():
    rng = np.random.default_rng(0)
    phases = [(0.01, 0.02, float(c), 0.005) for c in rng.uniform(1.0, 1.001, size=50)]
    run = _run(phases)
    summary = summarize(run, (90.0, 99.0))
    latencies = [h + c + d for h, _, c, d in phases]
    assert summary.latency.mean == pytest.approx(np.mean(latencies))
    walltime = run.traces[-1].d2h_end - run.traces[0].h2d_start
    assert summary.walltime_s == pytest.approx(walltime / 1000)
    assert summary.throughput_qps == pytest.approx(50 / walltime * 1000)
    gpu = summary.stats["GPU Compute Time"]
    assert summary.total_gpu_compute_s == pytest.approx(gpu.mean * 50 / 1000)
    assert summary.warnings == []  # stable, enqueue and transfers well under compute


def test_warnings_enqueue_transfer_and_unstable():
    bound = _run([(2.0, 0.9, 1.0, 3.0)] * 10)  # enqueue 90% of compute, transfers exceed it
    text = "\n".join(summarize(bound, (99.0,)).warnings)
    assert "bound by Enqueue Time" in text and "--useCudaGraph" in text
    assert "host-to-device transfers" in text and "device-to-host transfers" in text
    noisy = _run([(0.01, 0.01, c, 0.01) for c in (1.0, 2.0) * 10])
    assert "GPU compute time is unstable" in "\n".join(summarize(noisy, (99.0,)).warnings)


def test_cpu_summary_marks_gpu_lines_not_applicable():
    run = _run([(0.0, 1.0, 1.0, 0.0)] * 5, device="cpu")
    lines = summarize(run, (90.0, 95.0, 99.0)).lines()
    text = "\n".join(f"[11/22/2026-10:00:00] [I] {line}" for line in lines)
    parsed = parse_summary(text)
    for label in ("H2D Latency", "GPU Compute Time", "D2H Latency", "Total GPU Compute Time"):
        assert parsed[label] is None, label
    assert parsed["Latency"]["percentiles"].keys() == {90.0, 95.0, 99.0}
    assert "n/a (CPU engine" in text
