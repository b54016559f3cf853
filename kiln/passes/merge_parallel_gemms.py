"""Merges dense layers that read the same input into one wider GEMM (Q, K, V projections).

    q = FusedGemm(x, Wq, bq); k = FusedGemm(x, Wk, bk); v = FusedGemm(x, Wv, bv)
    ->  qkv = FusedGemm(x, [Wq|Wk|Wv], [bq|bk|bv]);  q, k, v = Split(qkv, last axis)

One launch of a GEMM three times as wide runs at a higher fraction of the GPU than three
small ones; the Split outputs are views, so the heads' reshapes stay free.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from kiln.ir import Graph, Node
from kiln.passes._match import const, fused_names
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("fuse", priority=60)
def merge_parallel_gemms(graph: Graph, ctx: PassContext) -> bool:
    """Merges FusedGemm layers with the same input, activation and weight layout."""
    changed = False
    for g in list(graph.walk_graphs()):
        groups: dict[tuple, list[Node]] = defaultdict(list)
        for node in g.nodes:
            if node.domain == "kiln" and node.op_type == "FusedGemm" and _mergeable(node):
                w = const(node.inputs[1])
                k = w.shape[1] if node.attrs.get("trans_b") else w.shape[0]
                key = (id(node.inputs[0]), node.attrs.get("trans_b", 0),
                       node.attrs.get("activation", ""),
                       tuple(node.attrs.get("activation_params", [])), k, w.dtype.str,
                       node.inputs[2] is not None)
                groups[key].append(node)
        for nodes in groups.values():
            if len(nodes) > 1:
                _merge(g, nodes)
                changed = True
    return changed


def _mergeable(node: Node) -> bool:
    return const(node.inputs[1]) is not None and (
        node.inputs[2] is None or const(node.inputs[2]) is not None)


def _merge(graph: Graph, nodes: list[Node]) -> None:
    trans_b = nodes[0].attrs.get("trans_b", 0)
    weights = [const(n.inputs[1]) for n in nodes]
    widths = [w.shape[0] if trans_b else w.shape[1] for w in weights]
    weight = graph.constant(np.concatenate(weights, axis=0 if trans_b else 1),
                            f"{nodes[0].name}_merged_weight")
    bias = None
    if nodes[0].inputs[2] is not None:
        bias = graph.constant(np.concatenate([const(n.inputs[2]) for n in nodes]),
                              f"{nodes[0].name}_merged_bias")
    first = min(nodes, key=graph.nodes.index)
    attrs = {k: v for k, v in nodes[0].attrs.items()}
    merged = graph.add_node("FusedGemm", [nodes[0].inputs[0], weight, bias], attrs,
                            domain="kiln", name=f"{first.name}_merged", before=first)
    merged.meta["fused"] = fused_names(nodes)
    out = nodes[0].output
    merged.output.dtype = out.dtype
    if out.shape is not None:
        merged.output.shape = (*out.shape[:-1], sum(widths))
    if graph.opsets.get("", 13) >= 13:
        sizes = graph.constant(np.array(widths, dtype=np.int64), f"{first.name}_split_sizes")
        inputs, split_attrs = [merged.output, sizes], {"axis": -1}
    else:  # before opset 13 the sizes are an attribute
        inputs, split_attrs = [merged.output], {"axis": -1, "split": widths}
    split = graph.add_node("Split", inputs, split_attrs, num_outputs=len(nodes),
                           name=f"{first.name}_split", before=first)
    for node, piece in zip(nodes, split.outputs):
        piece.dtype, piece.shape = node.output.dtype, node.output.shape
        graph.replace_all_uses(node.output, piece)
        graph.remove_node(node)
