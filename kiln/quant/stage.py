"""The builder's quantization stage, in three steps around the existing pipeline.

    prepare   (before the passes)  names remembered; implicit models calibrated on the
                                   unfused FP32 graph (or the cache read instead)
    apply     (after the passes)   Q/DQ inserted from the thresholds, lowered to INT8/FP8
                                   layers (explicit Q/DQ models were lowered by the passes);
                                   INT8 attention over the INT8 GEMMs' q, k and v; large
                                   embedding tables INT8, weights only
    finalize  (after precision)    quantized layers learn their float output type and are
                                   marked int8/fp8 for `kiln inspect`
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kiln.errors import KilnError
from kiln.ir import DType, Graph
from kiln.passes import PassContext
from kiln.passes.fuse_layernorm_quantize import fuse_layernorm_quantize
from kiln.passes.fuse_projection_shortcut import fuse_projection_shortcut
from kiln.passes.lower_qdq import QUANTIZED_OPS, lower_qdq
from kiln.passes.quantize_before_maxpool import quantize_before_maxpool
from kiln.passes.quantize_before_views import quantize_before_views
from kiln.quant.calibrate import CalibrationResult, calibrate
from kiln.quant.calibration_cache import CalibrationTable, method_of
from kiln.quant.calibrators import Calibrator
from kiln.quant.insert_qdq import insert_qdq, layer_tensors, quantizable_layers
from kiln.quant.names import remember_names
from kiln.quant.quantize_attention import quantize_attention
from kiln.quant.quantize_embeddings import quantize_embeddings

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
           "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
_FLOAT_NAMES = {DType.FLOAT: "fp32", DType.FLOAT16: "fp16", DType.BFLOAT16: "bf16"}
Stage = Callable[[str], None]


@dataclass
class QuantizationPlan:
    qtype: str  # "int8" or "fp8e4m3"
    explicit: bool
    calibrator: Calibrator | None = None
    result: CalibrationResult | None = None
    table: CalibrationTable | None = None
    report: dict[str, Any] = field(default_factory=dict)


def qtype_for(precision: str) -> str | None:
    return {"int8": "int8", "fp8": "fp8e4m3"}.get(precision)


def is_explicitly_quantized(graph: Graph) -> bool:
    return any(n.domain == "" and n.op_type in QDQ_OPS for n in graph.walk_nodes())


def prepare(graph: Graph, precision: str, calibrator: Calibrator | None,
            device: torch.device, stage: Stage) -> QuantizationPlan | None:
    """Before the passes. None when the build does not quantize."""
    qtype = qtype_for(precision)
    if qtype is None:
        return None
    remember_names(graph)
    if is_explicitly_quantized(graph):
        plan = QuantizationPlan(qtype, explicit=True, calibrator=calibrator)
        plan.report = {"mode": "explicit (Q/DQ in the model)"}
        if calibrator is not None and calibrator.data is not None:
            plan.report["note"] = "the model is already quantized: calibration data unused"
        return plan
    plan = QuantizationPlan(qtype, explicit=False, calibrator=calibrator)
    cache = Path(calibrator.cache) if calibrator is not None and calibrator.cache else None
    if cache is not None and cache.exists():
        plan.table = CalibrationTable.load(cache)
        cached = method_of(plan.table.algorithm)
        plan.report = {"mode": "implicit", "cache": str(cache),
                       "method": cached or plan.table.algorithm}
        if cached != calibrator.method:
            plan.report["note"] = (f"the cache holds {plan.table.algorithm} thresholds; they "
                                   f"are used as they are (delete the cache to calibrate "
                                   f"with {calibrator.method})")
        return plan
    if calibrator is None or calibrator.data is None:
        what = f"the calibration cache {cache} does not exist and " if cache else ""
        raise KilnError(
            f"{precision.upper()} needs calibration: {what}no calibration data was given",
            hint="pass --calib=DATA (a folder of .npz batches, or one .npz of stacked "
                 "samples) and optionally --calibCache=FILE to keep the result")
    stage("calibrate")
    plan.result = calibrate(graph, calibrator, device,
                            lambda done, total: stage(f"calibrate {done}/{total or '?'}"))
    plan.report = {"mode": "implicit", "method": calibrator.method,
                   "batches": plan.result.batches}
    return plan


def apply(graph: Graph, plan: QuantizationPlan | None, ctx: PassContext) -> None:
    """After the passes: Q/DQ from the thresholds, then the INT8 lowering."""
    if plan is None or plan.explicit:
        return
    overrides = ctx.options.get("layer_precisions") or {}
    needed = [n for node in quantizable_layers(graph, overrides)
              for n in layer_tensors(node, graph) if n is not None]
    if plan.table is not None:
        missing = plan.table.missing(list(dict.fromkeys(needed)))
        if missing:
            shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more"
                                               if len(missing) > 12 else "")
            raise KilnError(
                f"calibration cache {plan.report['cache']} lacks the scales of "
                f"{len(missing)} tensor(s) this model quantizes: {shown}",
                hint="the cache was made for another model (or an older export of it): "
                     "delete it and calibrate again with --calib=DATA")
        table = plan.table
        amax = lambda name: table.amax(name) if name in table.scales else None  # noqa: E731
    else:
        result = plan.result
        assert result is not None
        amax = lambda name: result.amax(name) if name in result else None  # noqa: E731
        if plan.calibrator is not None and plan.calibrator.cache:
            result.table().save(plan.calibrator.cache)
            plan.report["cache_written"] = str(plan.calibrator.cache)
    inserted = insert_qdq(graph, amax, plan.qtype, overrides)
    _lower(graph, ctx)
    skipped = dict(inserted.skipped)
    if plan.qtype == "int8":
        done, seen, stayed = quantize_attention(graph, amax, overrides)
        if seen:
            plan.report["attention_int8"] = f"{done} of {seen}"
            skipped.update(stayed)
            _lower(graph, ctx)  # the attention requantizes for the layer after it
        done, seen = quantize_embeddings(graph, overrides)
        if seen:
            plan.report["embeddings_int8"] = f"{done} of {seen}"
    fuse_layernorm_quantize(graph, ctx)
    fuse_projection_shortcut(graph, ctx)
    if skipped:
        plan.report["skipped"] = skipped


def _lower(graph: Graph, ctx: PassContext) -> None:
    while (lower_qdq(graph, ctx) | quantize_before_maxpool(graph, ctx)
           | quantize_before_views(graph, ctx)):
        pass


def finalize(graph: Graph, plan: QuantizationPlan | None) -> dict[str, Any] | None:
    """After precision: float output types into the attributes, int8/fp8 into the layer
    precision. Returns the build report's quantization entry."""
    count = 0
    for node in graph.walk_nodes():
        if node.domain != "kiln" or node.op_type not in (*QUANTIZED_OPS, "Dequantize"):
            continue
        if node.output.dtype in _FLOAT_NAMES:
            node.attrs["out_dtype"] = _FLOAT_NAMES[node.output.dtype]
        if node.op_type in QUANTIZED_OPS:
            node.meta["precision"] = "fp8" if node.meta.get("quantized") == "fp8e4m3" else "int8"
            count += 1
    if plan is None and count == 0:
        return None
    report = dict(plan.report) if plan is not None else {"mode": "explicit (Q/DQ in the model)"}
    report["quantized_layers"] = count
    return report
