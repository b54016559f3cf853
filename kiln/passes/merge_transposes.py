"""Merges a Transpose of a Transpose into one, and drops a Transpose that keeps the order.

    %t = Transpose(%x) {perm=p}
    %y = Transpose(%t) {perm=q}     ->   %y = Transpose(%x) {perm=[p[q[0]], p[q[1]], ...]}

since y's dim i is t's dim q[i], which is x's dim p[q[i]]. A merged (or single) Transpose
whose perm is 0, 1, 2, ... is the identity and goes. Exporters leave such pairs where
layouts change back and forth (NHWC models run in NCHW, attention heads split and merged).
"""

from __future__ import annotations

from kiln.ir import Graph, Node
from kiln.passes.pipeline import PassContext, register_pass


def permutation(node: Node) -> list[int] | None:
    """The node's perm (reversed dims by default), or None where the rank is unknown."""
    perm = node.attrs.get("perm")
    if perm:
        return [int(p) for p in perm]
    source = node.inputs[0]
    return None if source is None or source.rank is None else list(reversed(range(source.rank)))


def _is_transpose(node: Node | None) -> bool:
    return node is not None and node.op_type == "Transpose" and not node.domain


@register_pass("simplify", priority=40)
def merge_transposes(graph: Graph, ctx: PassContext) -> bool:
    """Composes consecutive Transposes and removes identity ones."""
    count = 0
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if _is_transpose(node):
                count += _merge(g, node)
    ctx.count("merge_transposes", count)
    return count > 0


def _merge(graph: Graph, node: Node) -> bool:
    outer = permutation(node)
    source = node.inputs[0]
    if outer is None or source is None:
        return False
    changed = False
    inner_node = source.producer
    if _is_transpose(inner_node):
        inner = permutation(inner_node)  # type: ignore[arg-type]
        if inner is not None and len(inner) == len(outer):
            node.set_input(0, inner_node.inputs[0])  # type: ignore[union-attr]
            node.attrs["perm"] = outer = [inner[i] for i in outer]
            changed = True
    if outer == list(range(len(outer))):
        graph.replace_all_uses(node.output, node.inputs[0])  # type: ignore[arg-type]
        graph.remove_node(node)
        changed = True
    return changed
