"""A reduction over the axis a Concat of one-wide slices stacked is an elementwise op.

PyTorch's `torch.stack([a, b, c], -1).max(-1)` (the maximum over parallel branches)
exports as

    %s = Concat(Unsqueeze(%a, ax), Unsqueeze(%b, ax), Unsqueeze(%c, ax)) {axis=ax}
    %y = ReduceMax(%s) {axes=[ax], keepdims=0}

which writes every element into a strided stack and reads it back; the same result is
`Max(%a, %b, %c)`. ReduceMin, ReduceSum and ReduceMean become Min, Sum and Mean the same
way. With keepdims=1 the inputs of the Concat are used as they are; with keepdims=0 the
Unsqueezes are skipped (or the result squeezed where the inputs were not Unsqueezes).
attacut's three dilated convolutions are merged so: the stack and the reduction took 0.24
of its 1.0 ms.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._dim_equality import analysable_graphs, axes_of
from kiln.passes._match import fused_names, only_consumer, producer
from kiln.passes.pipeline import PassContext, register_pass

ELEMENTWISE = {"ReduceMax": "Max", "ReduceMin": "Min", "ReduceSum": "Sum", "ReduceMean": "Mean"}
FLOATS = (DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16)


@register_pass("simplify", priority=55)
def reduce_over_stack(graph: Graph, ctx: PassContext) -> bool:
    """ReduceMax/Min/Sum/Mean over a Concat of one-wide slices along the reduced axis
    becomes Max/Min/Sum/Mean of the slices."""
    count = 0
    for g in list(analysable_graphs(graph)):  # not Loop/Scan bodies (declared shapes)
        opset = g.root().opsets.get("", 0)
        for node in list(g.nodes):
            if node.graph is g and node.op_type in ELEMENTWISE and not node.domain:
                count += _rewrite(g, node, opset)
    ctx.count("reduce_over_stack", count)
    return count > 0


def _rewrite(graph: Graph, reduce: Node, opset: int) -> bool:
    concat = producer(reduce.inputs[0], "Concat")
    if concat is None or only_consumer(concat.output, graph) is not reduce:
        return False
    rank = len(concat.output.shape) if concat.output.shape is not None else None
    axis = _single_axis(reduce, rank)
    if axis is None or axis != concat.attrs.get("axis", 0) % rank:
        return False
    parts = list(concat.inputs)
    if any(p is None or p.shape is None or len(p.shape) != rank or p.shape[axis] != 1
           for p in parts):
        return False
    dtype = reduce.output.dtype
    if dtype not in FLOATS and (reduce.op_type not in ("ReduceMax", "ReduceMin") or opset < 12):
        return False  # Sum and Mean take floats only; integer Max/Min from opset 12
    squeeze = not reduce.attrs.get("keepdims", 1)
    if squeeze and all(_unsqueezed(p, axis) is not None for p in parts):
        parts, squeeze = [_unsqueezed(p, axis) for p in parts], False
    node = graph.add_node(ELEMENTWISE[reduce.op_type], parts, {}, before=reduce,
                          name=f"{reduce.name}_elementwise")
    node.meta["fused"] = fused_names([concat, reduce])
    node.output.dtype = dtype
    node.output.shape = concat.output.shape[:axis] + (1,) + concat.output.shape[axis + 1:]
    result = node.output
    if squeeze:
        result = _squeezed(graph, result, axis, reduce, opset)
    result.shape = reduce.output.shape
    graph.replace_all_uses(reduce.output, result)
    graph.remove_node(reduce)
    if not concat.output.consumers:
        graph.remove_node(concat)
    return True


def _single_axis(reduce: Node, rank: int | None) -> int | None:
    """The one axis reduced (normalized), from the attribute or the constant input."""
    if rank is None:
        return None
    axes = axes_of(reduce)
    if axes is None or len(axes) != 1:
        return None  # none given reduces everything (or nothing, noop_with_empty_axes)
    return int(axes[0]) % rank


def _unsqueezed(value: Value, axis: int) -> Value | None:
    """The input of the Unsqueeze that made `value` by adding `axis` alone."""
    node = producer(value, "Unsqueeze")
    if node is None:
        return None
    axes, rank = axes_of(node), len(value.shape)
    return node.inputs[0] if axes is not None and [a % rank for a in axes] == [axis] else None


def _squeezed(graph: Graph, value: Value, axis: int, before: Node, opset: int) -> Value:
    if opset >= 13:
        axes = graph.constant(np.array([axis], np.int64), name=f"{before.name}_axes")
        node = graph.add_node("Squeeze", [value, axes], {}, before=before,
                              name=f"{before.name}_squeeze")
    else:
        node = graph.add_node("Squeeze", [value], {"axes": [axis]}, before=before,
                              name=f"{before.name}_squeeze")
    node.output.dtype = value.dtype
    return node.output
