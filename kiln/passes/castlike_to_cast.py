"""Turns CastLike into Cast where the `like` input's type is known.

    y = CastLike(x, like: int4[...])   ->   y = Cast(x) {to: INT4}

At run time a 4-bit value travels in an 8-bit carrier, so only the graph knows that
`like` is INT4; the Cast also no longer waits on `like`.
"""

from __future__ import annotations

from kiln.ir import Graph
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("simplify", priority=5)
def castlike_to_cast(graph: Graph, ctx: PassContext) -> bool:
    """Rewrites CastLike(x, like) as Cast(x, to=like's type)."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.domain or node.op_type != "CastLike" or len(node.inputs) < 2:
                continue
            like = node.inputs[1]
            if like is None or like.dtype is None or like.kind != "tensor":
                continue
            node.op_type = "Cast"
            node.attrs = {"to": like.dtype.value, **node.attrs}
            node.set_inputs(node.inputs[:1])
            changed = True
    return changed
