"""The resource monitor kiln bench keeps beside each peer: one per peer, timing several batch
sizes in turn (its utilization sampler starts once), and host memory sampled throughout."""

from __future__ import annotations

import itertools

import torch

from kiln.bench.resources import ResourceMonitor, _Sampler


def test_one_monitor_times_several_batch_sizes():
    monitor = ResourceMonitor(torch.device("cpu"), period_s=0.001).start()
    readings = itertools.count(10)
    monitor._util = _Sampler(0.001, lambda: float(next(readings)))  # NVML's stand-in
    ballast = []
    for _ in range(3):  # kiln bench calls this before each batch size
        monitor.start_timing()
        ballast.append(bytearray(8 << 20))
    result = monitor.stop()
    assert result["gpu_utilization_percent"] is not None and \
        result["gpu_utilization_percent"] >= 10
    assert result["host_peak_bytes"] >= monitor.baseline
    assert result["device_peak_bytes"] is None  # no device on the CPU
    del ballast
