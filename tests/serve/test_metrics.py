"""/metrics on the metrics port: Prometheus text with Triton's metric names, types and
labels, agreeing with the statistics extension."""

from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln.serve.metrics import gpu_samples
from tests.serve import models

pytestmark = pytest.mark.timeout(120)

TRITON_COUNTERS = ["nv_inference_request_success", "nv_inference_request_failure",
                   "nv_inference_count", "nv_inference_exec_count",
                   "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                   "nv_inference_compute_input_duration_us",
                   "nv_inference_compute_infer_duration_us",
                   "nv_inference_compute_output_duration_us"]


def _scrape(server) -> str:
    url = f"http://127.0.0.1:{server.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def _value(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(2))
    raise AssertionError(f"no {name}{labels} in /metrics")


def _infer(http, rows: int, seed: int) -> None:
    tensor = httpclient.InferInput("image", [rows, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(models.digits_images(rows, seed))
    http.infer("digits", [tensor], model_version="1")


def test_triton_names_types_and_labels(server, http):
    _infer(http, 1, 0)
    text = _scrape(server)
    for name in TRITON_COUNTERS:
        assert f"# TYPE {name} counter" in text, name
    assert "# TYPE nv_inference_pending_request_count gauge" in text
    assert _value(text, "nv_inference_request_success", model="digits", version="1") >= 1
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        _value(text, "nv_inference_request_failure", model="digits", version="1", reason=reason)
    # and it is Prometheus' text format, as its own parser reads it
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"nv_inference_count", "nv_inference_pending_request_count"} <= families


def test_metrics_agree_with_statistics(server, http):
    for i, rows in enumerate((1, 4, 2)):
        _infer(http, rows, seed=i)
    text = _scrape(server)
    stats = http.get_inference_statistics("digits", "1")["model_stats"][0]
    labels = {"model": "digits", "version": "1"}
    inference = stats["inference_stats"]
    assert _value(text, "nv_inference_request_success", **labels) == \
        inference["success"]["count"]
    assert _value(text, "nv_inference_count", **labels) == stats["inference_count"]
    assert _value(text, "nv_inference_exec_count", **labels) == stats["execution_count"]
    assert _value(text, "nv_inference_request_duration_us", **labels) == \
        inference["success"]["ns"] // 1000
    assert _value(text, "nv_inference_compute_infer_duration_us", **labels) == \
        inference["compute_infer"]["ns"] // 1000
    assert _value(text, "nv_inference_pending_request_count", **labels) == 0


def test_failures_are_counted_by_reason(server, http):
    labels = {"model": "digits", "version": "1"}
    before = _value(_scrape(server), "nv_inference_request_failure", reason="OTHER", **labels)
    tensor = httpclient.InferInput("image", [1, 1, 8, 8], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8)))
    with pytest.raises(InferenceServerException):
        http.infer("digits", [tensor], model_version="1")
    after = _value(_scrape(server), "nv_inference_request_failure", reason="OTHER", **labels)
    assert after == before + 1
    stats = http.get_inference_statistics("digits", "1")["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] >= 1


def test_gpu_metrics_only_where_there_is_a_gpu():
    samples = list(gpu_samples())
    if not torch.cuda.is_available():
        assert samples == []
        return
    torch.cuda.init()
    names = {name for name, _, _ in gpu_samples()}
    assert {"nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"} <= names
