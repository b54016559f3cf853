"""Removes nodes whose outputs nobody reads, and constants nobody uses."""

from __future__ import annotations

from kiln.ir import Graph
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("simplify", priority=90)
def eliminate_dead(graph: Graph, ctx: PassContext) -> bool:
    """Drops nodes with no used output and initializers with no consumer."""
    removed = 0
    for g in reversed(list(graph.walk_graphs())):
        outputs = {id(v) for v in g.outputs}
        for node in reversed(list(g.nodes)):
            used = any(v is not None and (v.consumers or id(v) in outputs) for v in node.outputs)
            if not used:
                g.remove_node(node)
                removed += 1
        # a body may return an enclosing graph's constant as its own output
        nested = {id(v) for sub in g.walk_graphs() for v in sub.outputs}
        for name, value in list(g.initializers.items()):
            if not value.consumers and id(value) not in nested:
                del g.initializers[name]
                removed += 1
    ctx.count("eliminate_dead", removed)
    return removed > 0


@register_pass("cleanup", priority=90)
def eliminate_dead_after_fusion(graph: Graph, ctx: PassContext) -> bool:
    """Drops what fusing left unused (the weights and nodes it replaced)."""
    return eliminate_dead(graph, ctx)
