"""Gives LayerNorm the quantize step that reads its result, as a third output.

    y = LayerNorm(x, r, g, b); q = Quantize(y) {s}   ->   y, _, q = LayerNorm(x, r, g, b) {s}

In a quantized transformer every block's QKV and first MLP GEMM read a LayerNorm's result
through a Quantize step: one more pass over the activation (a BERT-base layer at batch 32
runs three, about 4 us each on the H100). The LayerNorm kernel has the values in
registers already and writes the bytes beside (or instead of) y. Quantize steps of one
scale and type are merged; y stays an output only while something else reads it (the
residual of a post-norm block).
"""

from __future__ import annotations

from kiln.ir import Graph, Node
from kiln.passes.lower_qdq import quantize_key
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("fuse", priority=85)  # after lower_qdq, which absorbs the steps it can
def fuse_layernorm_quantize(graph: Graph, ctx: PassContext) -> bool:
    """Moves a per-tensor Quantize of a LayerNorm's result into the LayerNorm."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is g and node.domain == "kiln" and node.op_type == "LayerNorm" \
                    and len(node.outputs) < 3:
                fused = _fuse(g, node)
                ctx.count("fuse_layernorm_quantize", fused)
                changed |= bool(fused)
    return changed


def _fuse(graph: Graph, node: Node) -> int:
    """Fuses the Quantize readers of node's result that share the first one's scale and
    type; returns how many."""
    y = node.outputs[0]
    keyed = [(n, quantize_key(n)) for n in y.consumers if n.graph is graph]
    keyed = [(n, k) for n, k in keyed if k is not None]
    if not keyed:
        return 0
    key = keyed[0][1]
    readers = [n for n, k in keyed if k == key]
    q = readers[0].outputs[0]
    for other in readers[1:]:
        graph.replace_all_uses(other.outputs[0], q)
    for reader in readers:
        reader.set_outputs([None])
        graph.remove_node(reader)
    y_read = bool(y.consumers) or any(y is v for v in graph.outputs)
    summed = node.outputs[1] if len(node.outputs) > 1 else None
    node.set_outputs([y if y_read else None, summed, q])
    scale, zero_point, to = key
    node.attrs.update(quantize_scale=scale, quantize_zero_point=zero_point, quantize_to=to)
    return len(readers)
