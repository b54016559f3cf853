"""Implicit quantization: calibrated thresholds -> the Q/DQ form explicit models have.

For every convolution and dense layer with constant weights (after fusion) whose input
has a threshold, the weights are quantized symmetrically per output channel (FP8: per
tensor) and the input, and a convolution's residual input, get a Quantize/Dequantize
pair with scale = amax / 127 (FP8: amax / 448). kiln/passes/lower_qdq.py then builds the
INT8 layers, exactly as for a model that came with Q/DQ nodes. Everything else (Softmax,
normalization, reductions, Exp/Log/Pow, attention) stays in floating point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._match import const
from kiln.passes.lower_qdq import forced_float, qtype_dtype
from kiln.quant import arith
from kiln.quant.names import onnx_name
from kiln.quant.qdq import QuantParams, set_weight_quant, weight_quant

Amax = Callable[[str], float | None]


@dataclass
class Insertion:
    """Which layers got Q/DQ, and the tensors whose thresholds they use."""

    layers: list[str] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why


def quantizable_layers(graph: Graph, overrides: dict[str, str]) -> list[Node]:
    """Layers implicit quantization takes: convolutions and GEMMs with constant weights."""
    found = []
    for node in graph.nodes:
        if node.domain != "kiln" or node.op_type not in ("FusedConv", "FusedGemm"):
            continue
        weight = const(node.inputs[1])
        if weight is None or weight.dtype.kind != "f" or forced_float(node, overrides):
            continue
        if node.op_type == "FusedGemm" and weight.ndim != 2:
            continue
        found.append(node)
    return found


def layer_tensors(node: Node, graph: Graph) -> list[str | None]:
    """The model's names of the tensors a layer quantizes (input, then residual)."""
    names = [onnx_name(node.inputs[0], graph)]
    if node.op_type == "FusedConv" and len(node.inputs) > 3 and node.inputs[3] is not None:
        names.append(onnx_name(node.inputs[3], graph))
    return names


def insert_qdq(graph: Graph, amax: Amax, qtype: str = "int8",
               overrides: dict[str, str] | None = None) -> Insertion:
    result = Insertion()
    pairs: dict[tuple[int, float], Value] = {}
    for node in quantizable_layers(graph, overrides or {}):
        names = layer_tensors(node, graph)
        if names[0] is None:
            result.skipped[node.name] = "its input is a tensor kiln made (no calibration name)"
            continue
        x_amax = amax(names[0])
        if x_amax is None:
            result.skipped[node.name] = f"no threshold for its input {names[0]!r}"
            continue
        _quantize_weight(node, qtype)
        node.set_input(0, _fake_quant(graph, node.inputs[0], x_amax, qtype, node, pairs))
        result.tensors.append(names[0])
        if len(names) > 1 and names[1] is not None and amax(names[1]) is not None:
            r_amax = amax(names[1])
            node.set_input(3, _fake_quant(graph, node.inputs[3], r_amax, qtype, node, pairs))
            result.tensors.append(names[1])
        result.layers.append(node.name)
    return result


def _quantize_weight(node: Node, qtype: str) -> None:
    w = node.inputs[1]
    if weight_quant(w) is not None:
        return
    weight = const(w)
    if node.op_type == "FusedConv":
        axis = 0
    else:
        axis = 0 if node.attrs.get("trans_b") else 1
    values, scale = arith.quantize_weight(weight, axis, qtype,
                                          per_channel=not arith.is_fp8(qtype))
    set_weight_quant(w, QuantParams(scale, np.zeros(1, np.int64), axis, qtype, values=values))


def _fake_quant(graph: Graph, value: Value, amax: float, qtype: str, user: Node,
                pairs: dict[tuple[int, float], Value]) -> Value:
    """value -> Quantize -> Dequantize, shared by every layer quantizing it alike."""
    scale = float(arith.symmetric_scale(amax, qtype))
    key = (id(value), scale)
    if key in pairs:
        return pairs[key]
    base = value.name
    q = graph.add_node("Quantize", [value], {"scale": scale, "zero_point": 0, "to": qtype},
                       domain="kiln", name=f"{base}_quantize", before=user)
    q.output.dtype, q.output.shape = qtype_dtype(qtype), value.shape
    q.meta["precision_class"] = "follow"  # quantize whatever float type arrives: no cast
    dq = graph.add_node("Dequantize", [q.output], {"scale": scale, "zero_point": 0},
                        domain="kiln", name=f"{base}_dequantize", before=user)
    dq.output.dtype, dq.output.shape = DType.FLOAT, value.shape
    dq.output.meta["model_dtype"] = DType.FLOAT
    pairs[key] = dq.output
    return dq.output
