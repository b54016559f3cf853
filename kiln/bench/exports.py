"""trtexec's JSON exports, with its field names, so tools that read them read kiln's.

- --exportTimes: `[{"startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs",
  "endComputeMs", "startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs",
  "endToEndMs"}, ...]`, one record per measured query (ms from the start of the run);
- --exportProfile: `[{"count": N}, {"name", "timeMs", "averageMs", "medianMs",
  "percentage"}, ...]`;
- --exportLayerInfo: the engine inspector's `{"Layers": [...], "Bindings": [...]}`, each
  layer with Name, LayerType, ParameterType, Inputs/Outputs (Name, Location, Dimensions,
  Format/Datatype; activations only), Weights (Type, Count of its constant inputs and the
  weights its tactic prepared), Metadata
  (the ONNX nodes it runs) and TacticName, shapes and types as one run at the
  benchmark's inputs saw them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from kiln.bench.profile import LayerProfiler
from kiln.bench.runners import KilnRunner
from kiln.bench.trace import RunTrace
from kiln.errors import KilnError

_FORMATS = {
    torch.float32: "Row major linear FP32", torch.float16: "Row major linear FP16 format",
    torch.bfloat16: "Row major linear BFloat16 format", torch.int32: "Row major linear Int32",
    torch.int64: "Row major linear Int64 format", torch.bool: "Row major linear BOOL",
    torch.uint8: "Row major linear UInt8 format", torch.int8: "Row major Int8 format",
    torch.float8_e4m3fn: "Row major linear FP8 format",
}
_WEIGHT_TYPES = {torch.float32: "Float", torch.float16: "Half", torch.int8: "Int8",
                 torch.int32: "Int32"}
_METADATA_SEPARATOR = "\x1e"  # TensorRT joins the ONNX nodes of a fused layer with this


def write_json(path: str | Path, data: Any) -> None:
    """Writes strict JSON: inf and NaN (which JSON lacks) become null."""
    target = Path(path)
    try:
        if not target.parent.exists():
            target.parent.mkdir(parents=True)
        target.write_text(json.dumps(finite(data), indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise KilnError(f"cannot write {target}: {exc}") from None


def finite(value: Any) -> Any:
    """`value` with every inf/NaN float replaced by None, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def times_json(run: RunTrace) -> list[dict[str, float]]:
    return [{
        "startEnqMs": t.enq_start, "endEnqMs": t.enq_end,
        "startH2dMs": t.h2d_start, "endH2dMs": t.h2d_end,
        "startComputeMs": t.compute_start, "endComputeMs": t.compute_end,
        "startD2hMs": t.d2h_start, "endD2hMs": t.d2h_end,
        "h2dMs": t.h2d, "computeMs": t.compute, "d2hMs": t.d2h,
        "latencyMs": t.latency, "endToEndMs": t.end_to_end,
    } for t in run.traces]


def profile_json(profiler: LayerProfiler) -> list[dict[str, Any]]:
    return profiler.to_json()


def layer_info_json(runner: KilnRunner) -> dict[str, Any]:
    """Runs the engine once on the runner's inputs, recording each layer's tensors."""
    seen: dict[str, tuple[list[int], torch.dtype]] = {}

    def record(index: int, step: Any, scope: Any) -> None:
        for name in list(step.inputs) + list(step.outputs):
            value = scope.get(name) if name is not None and name not in seen else None
            if isinstance(value, torch.Tensor):
                seen[name] = (list(value.shape), value.dtype)

    runner.compute(on_step=record)
    engine = runner.engine
    constants = engine.plan["graph"]["constants"]
    layers = []
    for layer in engine.plan["graph"]["layers"]:
        location = "Host" if layer["placement"] == "host" else "Device"
        weights = [n for n in layer["inputs"] if n and n in constants]
        info = {
            "Name": layer["name"],
            "LayerType": layer["op"],
            "ParameterType": layer["op"],
            "Inputs": [_region(n, seen.get(n), location) for n in layer["inputs"]
                       if n and n not in constants],
            "Outputs": [_region(n, seen.get(n), location) for n in layer["outputs"] if n],
            "Metadata": _METADATA_SEPARATOR.join(
                f"[ONNX Layer: {node}]" for node in layer.get("fused") or [layer["name"]]),
            "TacticName": layer["tactic"],
            "Precision": layer["precision"],
        }
        prefix = f"layer/{layer['name']}/"  # weights the tactic prepared at build time
        prepared = [(list(t.shape), t.dtype) for k, t in engine.tensors.items()
                    if k.startswith(prefix)]
        if weights or prepared:
            info["Weights"] = _weights([seen.get(n) for n in weights] + prepared)
        if weights:
            info["Constants"] = [_region(n, seen.get(n), location) for n in weights]
        layers.append(info)
    return {"Layers": layers, "Bindings": engine.input_names + engine.output_names}


def _weights(seen: list[tuple[list[int], torch.dtype] | None]) -> dict[str, Any]:
    """TensorRT's `{"Type", "Count"}` over a layer's constants and prepared weights."""
    known = [s for s in seen if s is not None]
    count = sum(int(torch.Size(shape).numel()) for shape, _ in known)
    dtype = known[0][1] if known else torch.float32
    return {"Type": _WEIGHT_TYPES.get(dtype, str(dtype).removeprefix("torch.")), "Count": count}


def _region(name: str, seen: tuple[list[int], torch.dtype] | None,
            location: str) -> dict[str, Any]:
    if seen is None:  # not a tensor (a sequence, an empty optional)
        return {"Name": name, "Location": location, "Dimensions": [],
                "Format/Datatype": "Unknown format"}
    shape, dtype = seen
    text = _FORMATS.get(dtype, f"Row major linear {str(dtype).removeprefix('torch.')}")
    return {"Name": name, "Location": location, "Dimensions": shape, "Format/Datatype": text}
