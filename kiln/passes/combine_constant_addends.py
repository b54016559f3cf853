"""Adds a chain's constant addends together at build time.

    s = Add(Add(x, c1), c2)   ->   s = Add(x, c1 + c2)

BERT-style embeddings sum the word rows with a token-type and a position row whose ids
are constants, so both lookups fold to tables and the sum is two element-wise passes over
the activation where one would do; with the constants combined, the one Add left is the
residual that fuse_layernorm moves into the LayerNorm after it. The constants are summed
in their own type (one rounding, where the model rounded x + c1 first: the result moves by
at most an ulp of the sum, as TensorRT's constant folding does); a sum that would be
larger than either constant (c1 [N, 1] and c2 [1, M]) is left alone.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Node, Value
from kiln.passes._match import const, only_consumer
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("simplify", priority=22)  # after fold_constants has made the addends
def combine_constant_addends(graph: Graph, ctx: PassContext) -> bool:
    """Folds Add(Add(x, c1), c2) into Add(x, c1 + c2)."""
    combined = 0
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is g and node.op_type == "Add" and not node.domain:
                combined += _combine(g, node)
    ctx.count("combine_constant_addends", combined)
    return combined > 0


def _split(node: Node) -> tuple[Value, np.ndarray] | None:
    """(the variable operand, the constant one) of an Add with exactly one constant."""
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None or (const(a) is None) == (const(b) is None):
        return None
    return (b, const(a)) if const(a) is not None else (a, const(b))


def _combine(graph: Graph, outer: Node) -> int:
    split = _split(outer)
    inner = split[0].producer if split else None
    if inner is None or inner.op_type != "Add" or inner.domain or inner.graph is not graph \
            or only_consumer(inner.output, graph) is not outer:
        return 0
    inner_split = _split(inner)
    if inner_split is None:
        return 0
    x, c1 = inner_split
    c2 = split[1]
    if c1.dtype != c2.dtype or c1.dtype.kind != "f" or x.dtype is None:
        return 0
    total = np.add(c1, c2)
    if total.size > max(c1.size, c2.size):
        return 0
    outer.set_inputs([x, graph.constant(total, f"{outer.name}_addend")])
    graph.remove_node(inner)
    return 1
