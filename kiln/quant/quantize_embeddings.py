"""Embedding tables in INT8, weights only: a Gather from a large constant float table
becomes kiln.GatherDequantize over the table quantized per row (symmetric, scale =
max |row| / 127) and the rows' scales.

    y = Gather(T, ids)   ->   y = GatherDequantize(T_int8, scales, ids)

BERT-base's word embeddings (30522 x 768) are 47 of the 128 MiB an INT8 engine of it
otherwise keeps, in FP16: with them in INT8 the engine holds about a quarter of the
FP32 model's bytes, as the INT8 layers do. Only what is read changes (a row's error is at
most half its scale step); the gathered rows come out in the layer's float type, so no
layer after it changes. Tables under MIN_ELEMENTS (position and token-type tables of a
few rows, lookup constants) and tables named by --layerPrecisions stay float.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Node
from kiln.passes._match import const
from kiln.passes.lower_qdq import forced_float
from kiln.quant import arith

MIN_ELEMENTS = 1 << 20  # 4 MiB of float32


def quantize_embeddings(graph: Graph, overrides: dict[str, str]) -> tuple[int, int]:
    """Rewrites the embedding Gathers of the top graph; (how many, how many seen)."""
    done = seen = 0
    for node in list(graph.nodes):
        table = _table(node)
        if table is None:
            continue
        seen += 1
        if not forced_float(node, overrides):
            _rewrite(graph, node, table)
            done += 1
    return done, seen


def per_row(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 table, float32 scales [V, 1]): each row symmetric over its own max |value|,
    as weights are quantized per output channel."""
    q, scales = arith.quantize_weight(table, axis=0)
    return q, scales.reshape(-1, 1)


def _table(node: Node) -> np.ndarray | None:
    """The float table a row-gathering ONNX Gather reads, where it is large enough."""
    if node.domain or node.op_type != "Gather" or node.attrs.get("axis", 0) not in (0, -2):
        return None
    table = const(node.inputs[0])
    if table is None or table.dtype != np.float32 or table.ndim != 2:
        return None
    return table if table.size >= MIN_ELEMENTS else None


def _rewrite(graph: Graph, node: Node, table: np.ndarray) -> None:
    q, scales = per_row(table)
    name = node.inputs[0].name
    inputs = [graph.constant(q, f"{name}_int8"), graph.constant(scales, f"{name}_row_scales"),
              node.inputs[1]]
    fused = graph.add_node("GatherDequantize", inputs, {}, domain="kiln",
                           name=f"{node.name}_int8", before=node)
    fused.meta["fused"] = [node.name]
    fused.output.dtype, fused.output.shape = node.output.dtype, node.output.shape
    graph.replace_all_uses(node.output, fused.output)
    graph.remove_node(node)
