"""Prometheus metrics with Triton's names and labels, read from the same counters as the
statistics extension, served at /metrics on the metrics port.

The text format is written here rather than with prometheus_client, because its writer
names every counter's TYPE line `<name>_total` (the OpenMetrics convention), while Triton's
counters, which dashboards query, carry no suffix. On a GPU machine, GPU memory and
utilization come from NVML (nvidia-ml-py) when it is installed, else memory from torch for
the devices it has initialized.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from aiohttp import web

from kiln.serve.service import InferenceService

# name, type, help: Triton's
_MODEL_METRICS = [
    ("nv_inference_request_success", "counter",
     "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "counter",
     "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "counter", "Number of inferences performed"),
    ("nv_inference_exec_count", "counter", "Number of model executions performed"),
    ("nv_inference_request_duration_us", "counter",
     "Cumulative inference request duration in microseconds"),
    ("nv_inference_queue_duration_us", "counter",
     "Cumulative inference queuing duration in microseconds"),
    ("nv_inference_compute_input_duration_us", "counter",
     "Cumulative compute input duration in microseconds"),
    ("nv_inference_compute_infer_duration_us", "counter",
     "Cumulative compute inference duration in microseconds"),
    ("nv_inference_compute_output_duration_us", "counter",
     "Cumulative inference compute output duration in microseconds"),
    ("nv_inference_pending_request_count", "gauge",
     "Instantaneous number of pending requests awaiting execution per-model."),
]
_GPU_METRICS = [
    ("nv_gpu_utilization", "gauge", "GPU utilization rate [0.0 - 1.0)"),
    ("nv_gpu_memory_total_bytes", "gauge", "GPU total memory, in bytes"),
    ("nv_gpu_memory_used_bytes", "gauge", "GPU used memory, in bytes"),
]
_DURATIONS = {"nv_inference_request_duration_us": "success",
              "nv_inference_queue_duration_us": "queue",
              "nv_inference_compute_input_duration_us": "compute_input",
              "nv_inference_compute_infer_duration_us": "compute_infer",
              "nv_inference_compute_output_duration_us": "compute_output"}

Sample = tuple[str, dict[str, str], float]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format


def render(service: InferenceService) -> str:
    samples = [*_model_samples(service), *gpu_samples()]
    lines = []
    for name, kind, text in _MODEL_METRICS + _GPU_METRICS:
        rows = [s for s in samples if s[0] == name]
        if not rows:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{_labels(labels)}}} {_number(value)}" for _, labels, value in rows]
    return "\n".join(lines) + "\n"


def _model_samples(service: InferenceService) -> Iterator[Sample]:
    for entry in list(service.repository.models.values()):
        for model in list(entry.versions.values()):
            labels = {"model": model.name, "version": str(model.version)}
            snap = model.stats.snapshot()
            durations = snap["durations"]
            yield "nv_inference_request_success", labels, durations["success"].count
            for reason, count in snap["failures"].items():
                yield "nv_inference_request_failure", {**labels, "reason": reason}, count
            yield "nv_inference_count", labels, snap["inference_count"]
            yield "nv_inference_exec_count", labels, snap["execution_count"]
            for name, stage in _DURATIONS.items():
                yield name, labels, durations[stage].ns // 1000
            yield "nv_inference_pending_request_count", labels, model.batcher.queued()


def gpu_samples() -> Iterable[Sample]:
    if not torch.cuda.is_available():
        return []
    try:
        return list(_nvml_samples())
    except Exception:  # no NVML (nvidia-ml-py not installed, or no driver library)
        return list(_torch_samples())


def _nvml_samples() -> Iterator[Sample]:
    import pynvml

    pynvml.nvmlInit()
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            labels = {"gpu_uuid": uuid.decode() if isinstance(uuid, bytes) else uuid}
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            yield "nv_gpu_utilization", labels, \
                pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            yield "nv_gpu_memory_total_bytes", labels, memory.total
            yield "nv_gpu_memory_used_bytes", labels, memory.used
    finally:
        pynvml.nvmlShutdown()


def _torch_samples() -> Iterator[Sample]:
    if not torch.cuda.is_initialized():  # querying would create a context on every GPU
        return
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        labels = {"gpu_uuid": f"GPU-{torch.cuda.get_device_properties(i).uuid}"}
        yield "nv_gpu_memory_total_bytes", labels, total
        yield "nv_gpu_memory_used_bytes", labels, total - free


def _labels(labels: dict[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def make_app(service: InferenceService) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=render(service), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
