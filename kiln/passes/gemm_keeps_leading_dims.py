"""Lets a GEMM keep the leading dims that a Reshape merged only for it.

ONNX Gemm takes 2-D inputs, so exporters wrap it as

    %a = Reshape(%x)  [S, B, H, D] -> [S*B, H*D]
    %g = FusedGemm(%a, %w, %b)
    %y = Reshape(%g)  [S*B, N] -> [S, B, N]

A GEMM acts on rows alone, so it can take %x with only the trailing dims merged and give
%y directly:

    %a = Reshape(%x)  -> [S, B, H*D]
    %y = FusedGemm(%a, %w, %b)

Merging S with B copies when %x is a permuted view (torch's MultiheadAttention reads the
attention output as [S, B, ...] while it lies in memory as [B, S, ...]); merging H with D
alone does not, and the GEMM tactics run over the rows in memory order.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.ir import Graph, Node
from kiln.passes._dim_equality import analysable_graphs
from kiln.passes._match import only_consumer, static_shapes
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("fuse", priority=45)
def gemm_keeps_leading_dims(graph: Graph, ctx: PassContext) -> bool:
    """Reshape -> FusedGemm -> Reshape that only merge and split leading dims: N-D GEMM."""
    count = 0
    for g in list(analysable_graphs(graph)):  # not Loop/Scan bodies (declared shapes)
        for node in list(g.nodes):
            if node.graph is g and node.domain == "kiln" and node.op_type == "FusedGemm":
                count += _rewrite(g, node)
    ctx.count("gemm_keeps_leading_dims", count)
    return count > 0


def _reshape(node: Node | None) -> bool:
    return node is not None and node.op_type == "Reshape" and not node.domain


def _rewrite(graph: Graph, gemm: Node) -> bool:
    merge = gemm.inputs[0].producer if gemm.inputs[0] is not None else None
    split = only_consumer(gemm.output, graph)
    if not _reshape(merge) or not _reshape(split) or only_consumer(merge.output, graph) is not gemm:
        return False
    x = merge.inputs[0]
    shapes = static_shapes(x, gemm.inputs[0], gemm.output, split.output)
    if shapes is None or len(shapes[1]) != 2:
        return False
    x_shape, (rows, k), (_, n), y_shape = shapes
    lead = y_shape[:-1]
    if y_shape[-1] != n or len(lead) < 2 or x_shape[:len(lead)] != lead:
        return False
    if math.prod(lead) != rows or math.prod(x_shape[len(lead):]) != k:
        return False
    rows_shape = [*lead, k]
    if x_shape == rows_shape:
        gemm.set_input(0, x)
    else:
        merge.set_input(1, graph.constant(np.array(rows_shape, dtype=np.int64),
                                          name=f"{merge.name}_rows"))
        merge.attrs.pop("allowzero", None)
        merge.output.shape = tuple(rows_shape)
    gemm.output.shape = tuple(y_shape)
    graph.replace_all_uses(split.output, gemm.output)
    graph.remove_node(split)
    if not merge.output.consumers:
        graph.remove_node(merge)
    return True
