"""Broadcasts late: a tensor is expanded only where a reader needs its full shape.

    m = And(x, all true)               ->   m = Expand(x, shape)   (x where shapes agree)
    w = Where(Expand(x, s), a, b)      ->   w = Expand(Where(x, a, b), s)
    y = Attention(q, k, v, Expand(m))  ->   y = Attention(q, k, v, m)
    t = Gather(table, ids)             ->   t = Expand(Gather(table, ids[:1]), shape)
    s = Add(x, Expand(c, shape))       ->   s = Add(x, c)   (x already of the sum's shape)

Hugging Face's encoder masks are a padding row per sequence, [B, 1, 1, S], And-ed with
an all-true [1, 1, S, 1] table into [B, 1, S, S]: written once, then read whole by every
attention layer (a 32 KB tile per head for BERT-base's S = 128, more than its INT8 q, k
and v together). Kept as rows, the mask's ops touch S values a sequence and attention
kernels load one row for all of a head's queries; every attention tactic broadcasts a
mask as the reference's addition does. BERT's token-type rows are the same shape: a
constant table at ids that are one row repeated over the batch (zeros), a [B, S, E]
result too large to fold (12 MiB at batch 32) that is one [1, S, E] row broadcast, which
folds, and joins the position rows (combine_constant_addends) as the LayerNorm's
residual. The rewrites are exact: Expand commutes with element-wise ops whose other
operands are constants, and a broadcasting op broadcasts what an Expand would have.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._match import const
from kiln.passes.pipeline import PassContext, register_pass

_IDENTITY = {"And": True, "Or": False}  # x And true = x, x Or false = x
_SINKS = {"Where", "Cast", "Not"}  # element-wise ops an Expand moves below
# broadcasting ops that read an operand's Expand as they read the operand itself
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "And", "Or", "Where", "Equal", "Less",
                 "Greater", "Max", "Min"}


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
            if node.graph is g and node.op_type in _SINKS:
                changed += _sink_expand(g, node)
            if node.graph is g and node.op_type in _BROADCASTING:
                changed += _drop_operand_expand(g, node)
            if node.graph is g and node.op_type == "Gather":
                changed += _repeated_rows(g, node)
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


def _drop_operand_expand(graph: Graph, node: Node) -> int:
    """op(Expand(c, s), y) -> op(c, y) where the op's result keeps its shape."""
    shape = node.outputs[0].static_shape
    if shape is None:
        return 0
    for index, value in enumerate(node.inputs):
        source = _expanded(value)
        if source is None or source.static_shape is None:
            continue
        shapes = [source.static_shape if i == index else (v.static_shape if v else ())
                  for i, v in enumerate(node.inputs)]
        if any(s is None for s in shapes) or np.broadcast_shapes(*shapes) != shape:
            continue
        node.set_input(index, source)
        if not value.consumers and value not in graph.outputs:
            graph.remove_node(value.producer)
        return 1
    return 0


def _repeated_rows(graph: Graph, node: Node) -> int:
    """Gather(table, ids) of constants, where ids repeat along some axes: the gather at
    one slice of them, expanded (the small gather folds)."""
    table, ids = (const(v) for v in node.inputs)
    shape = node.outputs[0].static_shape
    if table is None or ids is None or ids.ndim == 0 or shape is None:
        return 0
    small = ids
    for axis in range(ids.ndim):
        if small.shape[axis] > 1 and np.all(small == small.take([0], axis=axis)):
            small = small.take([0], axis=axis)
    if small.shape == ids.shape:
        return 0
    node.set_input(1, graph.constant(small, f"{node.name}_ids"))
    axis = node.attrs.get("axis", 0) % table.ndim
    out = node.outputs[0]
    rows = Value(graph.fresh_name(f"{out.name}_rows"), out.dtype,
                 table.shape[:axis] + small.shape + table.shape[axis + 1:])
    node.set_outputs([rows])
    _expand_as(graph, node, rows, shape, out=out)
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
