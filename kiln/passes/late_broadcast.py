"""Broadcasts late: a tensor is expanded only where a reader needs its full shape.

    m = And(x, all true)               ->   m = Expand(x, shape)   (x where shapes agree)
    w = Where(Expand(x, s), a, b)      ->   w = Expand(Where(x, a, b), s)
    y = Attention(q, k, v, Expand(m))  ->   y = Attention(q, k, v, m)

Hugging Face's encoder masks are a padding row per sequence, [B, 1, 1, S], And-ed with
an all-true [1, 1, S, 1] table into [B, 1, S, S]: written once, then read whole by every
attention layer (a 32 KB tile per head for BERT-base's S = 128, more than its INT8 q, k
and v together). Kept as rows, the mask's ops touch S values a sequence and attention
kernels load one row for all of a head's queries; every attention tactic broadcasts a
mask as the reference's addition does. The rewrites are exact: Expand commutes with
element-wise ops whose other operands are constants.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._match import const
from kiln.passes.pipeline import PassContext, register_pass

_IDENTITY = {"And": True, "Or": False}  # x And true = x, x Or false = x
_SINKS = {"Where", "Cast", "Not"}  # element-wise ops an Expand moves below


@register_pass("simplify", priority=62)  # after gather_to_slice has made the mask a row
def late_broadcast(graph: Graph, ctx: PassContext) -> bool:
    """Replaces identity And/Or by Expand and moves Expands towards their readers."""
    changed = 0
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is not g or node.domain:
                continue
            if node.op_type in _IDENTITY:
                changed += _drop_identity_operand(g, node)
            elif node.op_type in _SINKS:
                changed += _sink_expand(g, node)
    ctx.count("late_broadcast", changed)
    return changed > 0


@register_pass("fuse", priority=55)  # after fuse_attention has made the Attention layers
def attention_mask_unexpanded(graph: Graph, ctx: PassContext) -> bool:
    """Gives Attention layers the mask before its Expand."""
    changed = 0
    for node in graph.walk_nodes():
        if node.domain == "kiln" and node.op_type == "Attention" and len(node.inputs) > 3:
            source = _expanded(node.inputs[3])
            if source is not None and source.rank is not None and source.rank <= 4:
                node.set_input(3, source)
                changed += 1
    ctx.count("attention_mask_unexpanded", changed)
    return changed > 0


def _expanded(value: Value | None) -> Value | None:
    """x where `value` = Expand(x, constant shape)."""
    node = value.producer if value is not None else None
    if node is None or node.op_type != "Expand" or node.domain or const(node.inputs[1]) is None:
        return None
    return node.inputs[0]


def _drop_identity_operand(graph: Graph, node: Node) -> int:
    a, b = node.inputs
    out = node.outputs[0]
    for x, c in ((a, b), (b, a)):
        table = const(c)
        if x is None or x.is_const or table is None or table.dtype != np.bool_ \
                or not np.all(table == _IDENTITY[node.op_type]) or x.dtype is not DType.BOOL:
            continue
        shape = out.static_shape
        if x.static_shape == shape:
            graph.replace_all_uses(out, x)
        elif shape is not None:
            _expand_as(graph, node, x, shape)
        else:
            return 0
        graph.remove_node(node)
        return 1
    return 0


def _sink_expand(graph: Graph, node: Node) -> int:
    """op(Expand(x, s), constants) -> Expand(op(x, constants), s)."""
    variables = [v for v in node.inputs if v is not None and not v.is_const]
    if len(variables) != 1 or len(variables[0].consumers) != 1:
        return 0
    x = _expanded(variables[0])
    out = node.outputs[0]
    shape = out.static_shape
    if x is None or x.static_shape is None or shape is None:
        return 0
    others = [v.static_shape for v in node.inputs if v is not None and v is not variables[0]]
    if any(o is None for o in others):
        return 0
    small = np.broadcast_shapes(x.static_shape, *others)
    if np.prod(small) >= np.prod(shape):
        return 0
    expand = variables[0].producer
    node.set_input(node.inputs.index(variables[0]), x)
    graph.remove_node(expand)
    result = Value(graph.fresh_name(f"{out.name}_rows"), out.dtype, tuple(small))
    node.set_outputs([result])
    _expand_as(graph, node, result, shape, out=out)
    return 1


def _expand_as(graph: Graph, after: Node, x: Value, shape: tuple[int, ...],
               out: Value | None = None) -> None:
    """Expand(x, shape) placed after `after`, writing `out` (or taking over after's output's
    readers)."""
    target = graph.constant(np.array(shape, dtype=np.int64), f"{after.name}_shape")
    index = graph.nodes.index(after) + 1
    before = graph.nodes[index] if index < len(graph.nodes) else None
    if out is None:
        node = graph.add_node("Expand", [x, target], name=f"{after.name}_expand", before=before)
        node.output.dtype, node.output.shape = x.dtype, shape
        graph.replace_all_uses(after.outputs[0], node.output)
    else:
        graph.add_node("Expand", [x, target], outputs=[out], name=f"{after.name}_expand",
                       before=before)
