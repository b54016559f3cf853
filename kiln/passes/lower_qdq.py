"""Quantized graphs -> INT8/FP8 layers: the one lowering path of explicit Q/DQ models and
of kiln's own calibration (which inserts the same Q/DQ form, kiln/quant/insert_qdq.py).

    x = Dequantize(xq); y = FusedConv(x, w*, b, r) {act}   ->  y = QConv(xq, w_int8) {...}
    a = Dequantize(aq); y = FusedGemm(a, w*, b) {act}       ->  y = QGemm(aq, w_int8) {...}
    y = MatMul(Dequantize(aq), Dequantize(bq))              ->  y = QMatMul(aq, bq)
    y = QConv(...); z = Quantize(y) {s}                     ->  z = QConv(...) {out_scale=s}

(w*: a weight carrying its integers, see kiln/quant/qdq.py.) The input's Dequantize is
absorbed, so the layer reads INT8; when everything that reads a layer's output quantizes
it with one scale, the layer requantizes in its epilogue and writes INT8, so INT8
activations flow between consecutive quantized layers with no float round trip. A
Dequantize feeding a residual input is absorbed the same way. Activations must be
quantized per tensor and weights symmetrically (per tensor or per output channel);
anything else stays as the model wrote it (Quantize/Dequantize around a float layer),
which computes the same values more slowly. Layers forced to a float precision with
--layerPrecisions are left alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._match import const, producer
from kiln.passes.pipeline import PassContext, register_pass
from kiln.quant.qdq import QuantParams, swap_node, weight_quant

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
INT_TYPES = {DType.INT8: "int8", DType.UINT8: "uint8"}
FP8_TYPES = {DType.FLOAT8E4M3FN: "fp8e4m3"}
QUANTIZED_OPS = ("QConv", "QGemm", "QMatMul", "QConvShortcut",  # fuse_projection_shortcut
                 "QAttention")  # kiln/quant/quantize_attention.py
_DTYPE_OF = {"int8": DType.INT8, "uint8": DType.UINT8, "fp8e4m3": DType.FLOAT8E4M3FN}


@register_pass("fuse", priority=80)
def lower_qdq(graph: Graph, ctx: PassContext) -> bool:
    """Turns Dequantize -> Conv/Gemm/MatMul into INT8/FP8 layers and fuses requantization."""
    overrides = ctx.options.get("layer_precisions") or {}
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is not g or not quantizable(node) or forced_float(node, overrides):
                continue
            changed |= _LOWER[node.op_type](g, node)
        for node in list(g.nodes):
            if node.graph is g and node.domain == "kiln" and node.op_type in QUANTIZED_OPS:
                changed |= _fuse_requantize(g, node)
        _drop_unused_dequantize(g)
    return changed


def quantizable(node: Node) -> bool:
    return (node.domain == "kiln" and node.op_type in ("FusedConv", "FusedGemm")) or (
        node.domain == "" and node.op_type == "MatMul")


def forced_float(node: Node, overrides: dict[str, str]) -> bool:
    """--layerPrecisions names this layer (or a node fused into it) with a float type."""
    names = [node.name, *node.meta.get("fused", [])]
    return any(overrides.get(n) in ("fp32", "fp16", "bf16") for n in names)


def input_quant(value: Value | None) -> tuple[Value, QuantParams] | None:
    """For a value made by a per-tensor Dequantize: (the quantized value, its parameters)."""
    dq = producer(value, "Dequantize", "kiln")
    if dq is None or isinstance(dq.attrs.get("scale"), list):
        return None
    source = dq.inputs[0]
    qtype = INT_TYPES.get(source.dtype) or FP8_TYPES.get(source.dtype)
    if qtype is None:
        return None
    params = QuantParams(np.array([dq.attrs["scale"]], np.float32),
                         np.array([dq.attrs.get("zero_point", 0)], np.int64), 1, qtype)
    return source, params


def _weight(graph: Graph, w: Value, channel_axis: int, channels: int, fp8: bool,
            transpose: bool) -> tuple[Value, np.ndarray] | None:
    """The weight's quantized constant (transposed to [N, K] for GEMMs) and per-channel
    scales, if it is quantized symmetrically per tensor or along its output channels."""
    wq = weight_quant(w)
    if wq is None or wq.values is None or (wq.qtype == "fp8e4m3") != fp8:
        return None
    if wq.qtype not in ("int8", "fp8e4m3") or np.any(wq.zero_point != 0):
        return None
    rank = wq.values.ndim
    if not wq.per_tensor and wq.axis % rank != channel_axis:
        return None
    scales = np.broadcast_to(wq.scale.reshape(-1), (channels,)).astype(np.float32)
    values = np.ascontiguousarray(wq.values.T) if transpose else wq.values
    return quantized_constant(graph, values, f"{w.name}_{wq.qtype}"), scales


def quantized_constant(graph: Graph, values: np.ndarray, name: str) -> Value:
    """A constant of int8 or float8 values."""
    return graph.constant(values, name)


def _lower_conv(graph: Graph, node: Node) -> bool:
    x, w, b, residual = (list(node.inputs) + [None] * 4)[:4]
    found = input_quant(x)
    weight = const(w)
    if found is None or weight is None:
        return False
    xq, xp = found
    fp8 = xp.qtype in FP8_TYPES.values()
    quantized = _weight(graph, w, 0, weight.shape[0], fp8, transpose=False)
    if quantized is None:
        return False
    w_const, w_scale = quantized
    attrs: dict[str, Any] = {k: v for k, v in node.attrs.items()
                             if k in CONV_ATTRS or k.startswith("activation")}
    attrs.update(x_scale=xp.scalar_scale, x_zero_point=xp.scalar_zero_point, w_scale=w_scale)
    if b is not None:
        attrs["bias"] = np.asarray(const(b), dtype=np.float32).reshape(-1)
    residual_q = input_quant(residual) if residual is not None else None
    if residual_q is not None and (residual_q[1].qtype in FP8_TYPES.values()) == fp8:
        residual, rp = residual_q
        attrs.update(residual_scale=rp.scalar_scale, residual_zero_point=rp.scalar_zero_point)
    inputs = [xq, w_const] + ([residual] if residual is not None else [])
    swap_node(graph, node, "QConv", inputs, attrs).meta["quantized"] = xp.qtype
    return True


def _lower_gemm(graph: Graph, node: Node) -> bool:
    a, w, b = (list(node.inputs) + [None] * 3)[:3]
    found = input_quant(a)
    weight = const(w)
    if found is None or weight is None or weight.ndim != 2:
        return False
    aq, ap = found
    trans_b = int(node.attrs.get("trans_b", 0))
    n = weight.shape[0] if trans_b else weight.shape[1]
    quantized = _weight(graph, w, 0 if trans_b else 1, n, ap.qtype in FP8_TYPES.values(),
                        transpose=not trans_b)
    if quantized is None:
        return False
    w_const, w_scale = quantized
    attrs: dict[str, Any] = {k: v for k, v in node.attrs.items() if k.startswith("activation")}
    attrs.update(a_scale=ap.scalar_scale, a_zero_point=ap.scalar_zero_point, w_scale=w_scale)
    if b is not None:
        attrs["bias"] = np.asarray(const(b), dtype=np.float32).reshape(-1)
    swap_node(graph, node, "QGemm", [aq, w_const], attrs).meta["quantized"] = ap.qtype
    return True


def _lower_matmul(graph: Graph, node: Node) -> bool:
    a, b = node.inputs
    qa, qb = input_quant(a), input_quant(b)
    if qa is None or qb is None or qa[1].qtype not in INT_TYPES.values() \
            or qb[1].qtype not in INT_TYPES.values():
        return False
    (aq, ap), (bq, bp) = qa, qb
    attrs = {"a_scale": ap.scalar_scale, "a_zero_point": ap.scalar_zero_point,
             "b_scale": bp.scalar_scale, "b_zero_point": bp.scalar_zero_point}
    swap_node(graph, node, "QMatMul", [aq, bq], attrs).meta["quantized"] = "int8"
    return True


def _fuse_requantize(graph: Graph, node: Node) -> bool:
    """A layer whose every reader quantizes its output with one scale writes it quantized."""
    out = node.output
    if node.attrs.get("out_scale") or not out.consumers or any(out is v for v in graph.outputs):
        return False
    readers = out.consumers
    key = requantize_key(node, readers)
    if key is None:
        return False
    scale, zero_point, qtype = key
    if any(any(q.output is v for v in graph.outputs) for q in readers):
        return False
    node.attrs.update(out_scale=scale, out_zero_point=zero_point, out_type=qtype)
    out.dtype = _DTYPE_OF[qtype]
    for q in list(readers):
        graph.replace_all_uses(q.output, out)
        graph.remove_node(q)
    return True


def requantize_key(layer: Node, readers: list[Node]) -> tuple[float, int, str] | None:
    """The one (scale, zero point, type) with which every reader quantizes, where the
    quantized layer can write it (INT8 layers integer types, FP8 layers FP8); else None."""
    keys = {quantize_key(q) for q in readers}
    if len(keys) != 1 or None in keys:
        return None
    key = keys.pop()
    fp8_layer = layer.meta.get("quantized", "int8") in FP8_TYPES.values()
    return key if (key[2] in FP8_TYPES.values()) == fp8_layer else None  # type: ignore[index]


def quantize_key(node: Node) -> tuple[float, int, str] | None:
    """(scale, zero point, type) of a per-tensor kiln.Quantize; None for anything else."""
    if node.domain != "kiln" or node.op_type != "Quantize":
        return None
    scale, to = node.attrs.get("scale"), node.attrs.get("to", "int8")
    if isinstance(scale, list) or to not in _DTYPE_OF:
        return None
    return float(scale), int(node.attrs.get("zero_point", 0)), to


def _drop_unused_dequantize(graph: Graph) -> None:
    outputs = {id(v) for v in graph.outputs}
    for node in reversed(list(graph.nodes)):
        if node.domain == "kiln" and node.op_type in ("Dequantize", "Quantize") and all(
                v is None or (not v.consumers and id(v) not in outputs) for v in node.outputs):
            graph.remove_node(node)


_LOWER = {"FusedConv": _lower_conv, "FusedGemm": _lower_gemm, "MatMul": _lower_matmul}


def qtype_dtype(qtype: str) -> DType:
    return _DTYPE_OF[qtype]


__all__ = ["forced_float", "lower_qdq", "qtype_dtype", "quantizable", "quantize_key",
           "requantize_key"]
