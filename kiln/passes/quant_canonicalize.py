"""Standard quantization operators -> kiln's quantized forms, before anything folds them.

    w  = DequantizeLinear(w_int8, s, 0, axis=0)   ->  w: float constant that remembers
                                                       (w_int8, s, 0, axis) for lowering
    xq = QuantizeLinear(x, s, zp)                 ->  xq = kiln.Quantize(x) {scale, zp}
    x  = DequantizeLinear(xq, s, zp)              ->  x  = kiln.Dequantize(xq) {scale, zp}
    y  = QLinearConv(x, ..., w, ..., B)           ->  y  = kiln.QConv(x, w) {...}
    y  = QLinearMatMul(a, ..., b, ...)            ->  y  = kiln.QGemm / kiln.QMatMul

QuantizeLinear of a constant (ModelOpt stores float weights behind a Q/DQ pair) becomes
the quantized constant. Parameters must be constants and the types int8/uint8 (or FP8
E4M3); anything else (block quantization, int4/int16, dynamic scales) is left to the
standard operators' own implementations. Runs first in `simplify`, so constant folding
never turns a weight's DequantizeLinear into a plain float tensor: kiln/passes/lower_qdq.py
needs the integers and their scales to build INT8 layers from the same numbers the model
was quantized with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._match import const
from kiln.passes.pipeline import PassContext, register_pass
from kiln.quant import arith
from kiln.quant.qdq import QuantParams, set_weight_quant, swap_node

QTYPES = {DType.INT8: "int8", DType.UINT8: "uint8", DType.FLOAT8E4M3FN: "fp8e4m3",
          DType.FLOAT8E5M2: "fp8e5m2"}
_QTYPE_DTYPES = {v: k for k, v in QTYPES.items()}
# types only dequantized from constants (an int32 bias), never run as tensors
_CONST_ONLY = {DType.INT32: "int32", DType.INT16: "int16", DType.UINT16: "uint16"}
_FLOAT_NAMES = {DType.FLOAT: "fp32", DType.FLOAT16: "fp16", DType.BFLOAT16: "bf16"}


@register_pass("simplify", priority=5)
def quant_canonicalize(graph: Graph, ctx: PassContext) -> bool:
    """Turns QuantizeLinear/DequantizeLinear/QLinearConv/QLinearMatMul into kiln's forms."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is not g or node.domain:
                continue
            rewrite = _REWRITES.get(node.op_type)
            if rewrite is not None and rewrite(g, node):
                changed = True
    return changed


def params(node: Node, scale_index: int, zp_index: int) -> QuantParams | None:
    """The node's constant (scale, zero point, axis) and quantized type, if it has them."""
    inputs = list(node.inputs) + [None] * 3
    scale, zp = const(inputs[scale_index]), inputs[zp_index]
    if scale is None or scale.dtype.kind != "f" or node.attrs.get("block_size", 0):
        return None
    if zp is not None and const(zp) is None:
        return None
    if zp is not None:
        qtype = QTYPES.get(zp.dtype) or _CONST_ONLY.get(zp.dtype)
        zero_point = const(zp)
    else:
        output_dtype = node.attrs.get("output_dtype", 0)
        qtype = QTYPES.get(DType(output_dtype)) if output_dtype else "uint8"
        zero_point = np.zeros(1, dtype=np.int64)
    if qtype is None:
        return None
    if arith.is_fp8(qtype) and np.any(np.asarray(zero_point, dtype=np.float32) != 0):
        return None
    return QuantParams(np.asarray(scale, dtype=np.float32),
                       np.asarray(zero_point).astype(np.int64) if not arith.is_fp8(qtype)
                       else np.zeros(1, np.int64),
                       int(node.attrs.get("axis", 1)), qtype)


def _quantize_linear(graph: Graph, node: Node) -> bool:
    p = params(node, 1, 2)
    x = node.inputs[0]
    if p is None or x is None or p.qtype not in _QTYPE_DTYPES or (
            arith.is_fp8(p.qtype) and not node.attrs.get("saturate", 1)):
        return False
    array = const(x)
    if array is not None:
        q = arith.quantize_np(array, p.scale, p.zero_point, p.axis, p.qtype)
        _replace_with_constant(graph, node, q)
        return True
    new = swap_node(graph, node, "Quantize", [x], p.attrs(to=p.qtype), _QTYPE_DTYPES[p.qtype])
    new.meta["precision_class"] = "follow"  # quantize whatever float type arrives: no cast
    return True


def _dequantize_linear(graph: Graph, node: Node) -> bool:
    p = params(node, 1, 2)
    q = node.inputs[0]
    if p is None or q is None:
        return False
    scale_dtype = DType.from_numpy(p.scale.dtype)
    out_dtype = _FLOAT_NAMES.get(scale_dtype, "fp32")
    array = const(q)
    if array is not None:
        values = arith.dequantize_np(array, p.scale, p.zero_point, p.axis)
        if out_dtype == "fp16":
            values = values.astype(np.float16)
        value = _replace_with_constant(graph, node, values)
        if q.dtype in QTYPES:
            set_weight_quant(value, QuantParams(p.scale, p.zero_point, p.axis, QTYPES[q.dtype],
                                                values=array))
        return True
    if q.dtype not in QTYPES:
        return False
    swap_node(graph, node, "Dequantize", [q], p.attrs(out_dtype=out_dtype),
              DType.FLOAT16 if out_dtype == "fp16" else DType.FLOAT)
    return True


def _qlinear_conv(graph: Graph, node: Node) -> bool:
    x, w = node.inputs[0], node.inputs[3]
    xp, wp, yp = params(node, 1, 2), _weight_params(node, 4, 5), params(node, 6, 7)
    bias_q = const(node.inputs[8]) if len(node.inputs) > 8 and node.inputs[8] is not None \
        else None
    if None in (xp, wp, yp) or x is None or const(w) is None or not xp.per_tensor \
            or not yp.per_tensor or (len(node.inputs) > 8 and node.inputs[8] is not None
                                     and bias_q is None):
        return False
    channels = const(w).shape[0]
    w_scale = np.broadcast_to(wp.scale.reshape(-1), (channels,)).astype(np.float32)
    attrs: dict[str, Any] = {k: v for k, v in node.attrs.items()
                             if k in ("auto_pad", "dilations", "group", "kernel_shape", "pads",
                                      "strides")}
    attrs.update(x_scale=xp.scalar_scale, x_zero_point=xp.scalar_zero_point, w_scale=w_scale,
                 out_scale=yp.scalar_scale, out_zero_point=yp.scalar_zero_point,
                 out_type=yp.qtype)
    if bias_q is not None:
        attrs["bias"] = (bias_q.astype(np.float64) * xp.scalar_scale * w_scale).astype(
            np.float32)
    swap_node(graph, node, "QConv", [x, w], attrs, _QTYPE_DTYPES[yp.qtype])
    return True


def _qlinear_matmul(graph: Graph, node: Node) -> bool:
    a, b = node.inputs[0], node.inputs[3]
    ap, yp = params(node, 1, 2), params(node, 6, 7)
    if ap is None or yp is None or a is None or b is None or not ap.per_tensor \
            or not yp.per_tensor:
        return False
    weight = const(b)
    if weight is not None and weight.ndim == 2:
        bp = _weight_params(node, 4, 5)
        if bp is None or not (bp.per_tensor or bp.axis % 2 == 1):
            return False
        n = weight.shape[1]
        attrs = {"a_scale": ap.scalar_scale, "a_zero_point": ap.scalar_zero_point,
                 "w_scale": np.broadcast_to(bp.scale.reshape(-1), (n,)).astype(np.float32),
                 "out_scale": yp.scalar_scale, "out_zero_point": yp.scalar_zero_point,
                 "out_type": yp.qtype}
        w_nk = graph.constant(np.ascontiguousarray(weight.T), f"{b.name}_nk")
        swap_node(graph, node, "QGemm", [a, w_nk], attrs, _QTYPE_DTYPES[yp.qtype])
    else:
        bp = params(node, 4, 5)
        if bp is None or not bp.per_tensor:
            return False
        attrs = {"a_scale": ap.scalar_scale, "a_zero_point": ap.scalar_zero_point,
                 "b_scale": bp.scalar_scale, "b_zero_point": bp.scalar_zero_point,
                 "out_scale": yp.scalar_scale, "out_zero_point": yp.scalar_zero_point,
                 "out_type": yp.qtype}
        swap_node(graph, node, "QMatMul", [a, b], attrs, _QTYPE_DTYPES[yp.qtype])
    return True


def _weight_params(node: Node, scale_index: int, zp_index: int) -> QuantParams | None:
    """Symmetric int8 weight parameters (what the INT8 kernels take), else None."""
    p = params(node, scale_index, zp_index)
    weight = node.inputs[scale_index - 1]
    if p is None or weight is None or weight.dtype is not DType.INT8 or p.qtype != "int8" \
            or np.any(p.zero_point != 0):
        return None
    p.axis = 0 if p.per_tensor else p.axis
    return p


def _replace_with_constant(graph: Graph, node: Node, array: np.ndarray) -> Value:
    out = node.output
    value = graph.constant(array, f"{out.name}_const")
    graph.replace_all_uses(out, value)
    graph.remove_node(node)
    return value


_REWRITES = {"QuantizeLinear": _quantize_linear, "DequantizeLinear": _dequantize_linear,
             "QLinearConv": _qlinear_conv, "QLinearMatMul": _qlinear_matmul}
