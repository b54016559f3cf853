"""Removes nodes whose outputs nobody reads, and constants nobody uses."""

from __future__ import annotations

from kiln.ir import Graph
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("simplify", priority=90)
def eliminate_dead(graph: Graph, ctx: PassContext) -> bool:
    """Drops nodes with no used output and initializers with no consumer."""
    changed = False
    for g in reversed(list(graph.walk_graphs())):
        outputs = {id(v) for v in g.outputs}
        for node in reversed(list(g.nodes)):
            used = any(v is not None and (v.consumers or id(v) in outputs) for v in node.outputs)
            if not used:
                g.remove_node(node)
                changed = True
        # a body may return an enclosing graph's constant as its own output
        nested = {id(v) for sub in g.walk_graphs() for v in sub.outputs}
        for name, value in list(g.initializers.items()):
            if not value.consumers and id(value) not in nested:
                del g.initializers[name]
                changed = True
    return changed
