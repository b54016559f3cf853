"""Implicit quantization of attention: kiln.Attention over INT8 q, k and v.

    qkv = QGemm(x) {fp16 out};  q, k, v = views of qkv;  y = Attention(q, k, v, mask)
        ->  qkv = QGemm(x) {int8 out};  q, k, v = the same views;  y = QAttention(q, k, v, mask)

where the views are Splits, Slices, Reshapes and Transposes (kiln/quant/gemm_columns.py
finds the columns each of q, k and v takes).

q, k and v each get their calibrated scale (amax / 127). When one GEMM makes all three
(kiln/passes/merge_parallel_gemms.py), its output columns need three scales while a
layer requantizes with one: each column's 1 / scale is folded into the column's weight
factor and bias, and the layer requantizes with scale 1. The GEMM then writes INT8 q, k
and v, the attention reads a quarter of the bytes it read in FP16 and runs its two
products on INT8 tensor cores (kiln/ops/qattention.py says what it computes).

An attention is left in floating point, with the reason in the build report, when
--layerPrecisions names it, when it is causal, when its head size is not 32, 64 or 128
or its key length is not known to be at most 256 (what the INT8 kernel takes), or when
q, k or v is not a view of the float output of an INT8 GEMM that nothing else reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.kernels.triton.int8_attention import HEAD_DIMS, MAX_KEYS, layout_size
from kiln.passes._match import const
from kiln.passes.lower_qdq import forced_float
from kiln.quant import arith
from kiln.quant.gemm_columns import path_to, reached_columns
from kiln.quant.names import onnx_name
from kiln.quant.qdq import swap_node

Amax = Callable[[str], float | None]


@dataclass
class Source:
    """Where an INT8 GEMM makes q, k or v: which of `gemm`'s output columns, through which
    views."""

    gemm: Node
    columns: np.ndarray
    nodes: list[Node]  # the views and slices from the GEMM's output to the input, in order
    chain: list[Value]  # the values from the input back to the GEMM's output


def quantize_attention(graph: Graph, amax: Amax, overrides: dict[str, str]
                       ) -> tuple[int, int, dict[str, str]]:
    """(attentions quantized, attentions seen, layer -> why it stayed float)."""
    done, seen, skipped = 0, 0, {}
    for node in list(graph.nodes):
        if node.domain != "kiln" or node.op_type != "Attention":
            continue
        seen += 1
        why = _quantize(graph, node, amax, overrides)
        if why is None:
            done += 1
        else:
            skipped[node.name] = why
    return done, seen, skipped


def _quantize(graph: Graph, node: Node, amax: Amax, overrides: dict[str, str]) -> str | None:
    """Rewrites one attention; returns why it cannot be, or None."""
    if forced_float(node, overrides):
        return "--layerPrecisions keeps it in floating point"
    if node.attrs.get("is_causal"):
        return "causal attention has no INT8 kernel"
    why = _shape_problem(node)
    if why is not None:
        return why
    sources = [_source(value) for value in node.inputs[:3]]
    if any(s is None for s in sources):
        return "q, k or v is not the float output of an INT8 GEMM through views"
    if not _read_here_alone(graph, node, sources):
        return "the GEMM making q, k or v also makes other tensors"
    scales = []
    for value, source in zip(node.inputs[:3], sources):
        found = _amax(source, graph, amax)
        if found is None:
            return f"no calibrated threshold for {value.name!r}"
        scales.append(float(arith.symmetric_scale(found)))
    _requantize_sources(sources, scales)
    attrs = dict(node.attrs)
    attrs.update(q_scale=scales[0], k_scale=scales[1], v_scale=scales[2], zero_nan_rows=1)
    swap_node(graph, node, "QAttention", list(node.inputs), attrs).meta["quantized"] = "int8"
    return None


def _shape_problem(node: Node) -> str | None:
    q, k = node.inputs[0].shape, node.inputs[1].shape
    if q is None or k is None or len(q) != 4 or len(k) != 4:
        return "q and k need known 4-D shapes"
    head = layout_size(q, node.attrs.get("q_layout", "bhsd"), "d")
    keys = layout_size(k, node.attrs.get("k_layout", "bhsd"), "s")
    if head not in HEAD_DIMS:
        return f"head size {head} (the INT8 kernel takes {', '.join(map(str, HEAD_DIMS))})"
    if not isinstance(keys, int) or keys > MAX_KEYS:
        return f"key length {keys} is not known to be at most {MAX_KEYS}"
    return None


def _source(value: Value) -> Source | None:
    """The GEMM columns `value` is a view of, when only views and slices lead there."""
    root, nodes = path_to(value)
    gemm = root.producer
    if gemm is None or gemm.domain != "kiln" or gemm.op_type != "QGemm":
        return None
    if gemm.attrs.get("out_scale") or gemm.attrs.get("activation") or \
            gemm.meta.get("quantized", "int8") != "int8":
        return None
    columns = reached_columns(root, nodes, value)
    if columns is None:
        return None
    chain = [value] + [n.inputs[0] for n in reversed(nodes)]
    return Source(gemm, columns, nodes, chain)


def _read_here_alone(graph: Graph, attention: Node, sources: list[Source]) -> bool:
    """Nothing but the views to q, k and v and the attention reads the GEMMs' outputs, and
    no column goes to two of q, k and v (each gets a scale of its own)."""
    values = {id(v): v for s in sources for v in s.chain}
    nodes = {id(n) for s in sources for n in s.nodes} | {id(attention)}
    for v in values.values():
        if any(v is o for o in graph.outputs) or any(id(c) not in nodes for c in v.consumers):
            return False
    for s in sources:  # a Split's other outputs: read by nobody else either
        for n in s.nodes:
            if any(o is not None and id(o) not in values and o.consumers for o in n.outputs):
                return False
    for gemm in {id(s.gemm): s.gemm for s in sources}.values():
        taken = np.concatenate([s.columns for s in sources if s.gemm is gemm])
        if len(np.unique(taken)) != len(taken):
            return False
    return True


def _amax(source: Source, graph: Graph, amax: Amax) -> float | None:
    """The calibrated threshold of the first value on the chain that has one (views do
    not change the values)."""
    for v in source.chain:
        name = onnx_name(v, graph)
        found = amax(name) if name is not None else None
        if found is not None:
            return found
    return None


def _requantize_sources(sources: list[Source], scales: list[float]) -> None:
    """Each GEMM writes INT8 with 1/scale of each piece folded into its columns' factor
    and bias (requantizing with scale 1), and the views carry INT8."""
    for gemm in {id(s.gemm): s.gemm for s in sources}.values():
        width = int(const(gemm.inputs[1]).shape[0])  # the weight is stored [N, K]
        per_column = np.ones(width, dtype=np.float64)
        for source, scale in zip(sources, scales):
            if source.gemm is gemm:
                per_column[source.columns] = scale
        w_scale = np.broadcast_to(np.asarray(gemm.attrs["w_scale"], np.float64).reshape(-1),
                                  (width,))
        gemm.attrs["w_scale"] = (w_scale / per_column).astype(np.float32)
        if gemm.attrs.get("bias") is not None:
            bias = np.asarray(gemm.attrs["bias"], np.float64).reshape(-1)
            gemm.attrs["bias"] = (bias / per_column).astype(np.float32)
        gemm.attrs.pop("out_dtype", None)
        gemm.attrs.update(out_scale=1.0, out_zero_point=0, out_type="int8")
        gemm.output.dtype = DType.INT8
    for source in sources:
        for node in source.nodes:  # a Split's pieces that no attention input reads as well
            for v in node.outputs:
                if v is not None:
                    v.dtype = DType.INT8
