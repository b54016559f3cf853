"""A one-hot encoding times a weight matrix is a row lookup.

JAX/TF exports spell `one_hot(x, V) @ W` out as

    %h = Equal(%x, %C)        x: int [..., 1], C: the constants c0, c0+1, ..., c0+V-1
    %f = Cast(%h) {to=float}  [..., V], ones and zeros
    %y = MatMul(%f, %W)       W: constant [V, N]

which builds and multiplies a tensor V times larger than the indices, though each row of
%y is just the row of W that x picks (zeros where x is outside the range). So:

    %i = Clip(Add(%x, 1 - c0), 0, V + 1)     out of range -> a zero row at either end
    %y = Gather([0; W; 0], Reshape(%i, [..]))

Exact: each element of the product is one weight times 1 plus zeros.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._dim_equality import analysable_graphs
from kiln.passes._match import const, fused_names, only_consumer, other_input, remove_chain
from kiln.passes.pipeline import PassContext, register_pass

FLOATS = (DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16)


@register_pass("simplify", priority=50)
def one_hot_matmul_to_gather(graph: Graph, ctx: PassContext) -> bool:
    """MatMul(Cast(Equal(x, c0 + arange(V))), W) becomes a Gather of W's rows."""
    count = 0
    for g in list(analysable_graphs(graph)):  # not Loop/Scan bodies (declared shapes)
        if g.root().opsets.get("", 0) < 12:  # Clip of integers
            continue
        for node in list(g.nodes):
            if node.graph is g and node.op_type == "Equal" and not node.domain:
                count += _rewrite(g, node)
    ctx.count("one_hot_matmul_to_gather", count)
    return count > 0


def _rewrite(graph: Graph, equal: Node) -> bool:
    found = _indices_and_start(equal)
    if found is None:
        return False
    x, start, size = found
    cast = only_consumer(equal.output, graph)
    if cast is None or cast.op_type != "Cast" or cast.domain:
        return False
    matmul = only_consumer(cast.output, graph)
    weight = const(matmul.inputs[1]) if matmul is not None else None
    if (matmul is None or matmul.op_type != "MatMul" or matmul.domain
            or matmul.inputs[0] is not cast.output or cast.output.dtype not in FLOATS
            or weight is None or weight.shape[:1] != (size,) or weight.ndim != 2):
        return False
    _emit(graph, x, start, weight, matmul)
    remove_chain(graph, [equal, cast, matmul])
    return True


def _indices_and_start(equal: Node) -> tuple[Value, int, int] | None:
    """(x, c0, V) when `equal` compares integer x [..., 1] with c0, c0+1, ... c0+V-1 laid
    along the last axis only."""
    for x in equal.inputs:
        table = const(other_input(equal, x)) if x is not None else None
        if table is None or x.is_const or table.dtype.kind not in "iu" or x.shape is None:
            continue
        if x.shape[-1:] != (1,) or len(x.shape) < max(2, table.ndim):
            continue
        if any(d != 1 for d in table.shape[:-1]) or table.size < 1:
            continue
        values = table.reshape(-1).astype(np.int64)
        if np.array_equal(values, values[0] + np.arange(values.size)):
            return x, int(values[0]), int(values.size)
    return None


def _emit(graph: Graph, x: Value, start: int, weight: np.ndarray, matmul: Node) -> None:
    kind = x.dtype.numpy
    name = matmul.name
    zero = np.zeros((1, weight.shape[1]), weight.dtype)
    table = graph.constant(np.concatenate([zero, weight, zero]), name=f"{name}_rows")
    shifted = _node(graph, "Add", [x, graph.constant(np.array(1 - start, kind))], x, matmul)
    index = _node(graph, "Clip", [shifted.output, graph.constant(np.array(0, kind)),
                                  graph.constant(np.array(weight.shape[0] + 1, kind))], x, matmul)
    flat = _node(graph, "Reshape", [index.output, graph.constant(
        np.zeros(len(x.shape) - 1, np.int64), name=f"{name}_lead")], x, matmul)
    flat.output.shape = x.shape[:-1]
    gather = graph.add_node("Gather", [table, flat.output], {"axis": 0}, before=matmul,
                            name=f"{name}_rows")
    gather.meta["fused"] = fused_names([matmul])
    gather.output.dtype, gather.output.shape = matmul.output.dtype, matmul.output.shape
    graph.replace_all_uses(matmul.output, gather.output)


def _node(graph: Graph, op: str, inputs: list, like: Value, before: Node) -> Node:
    node = graph.add_node(op, inputs, {}, before=before, name=f"{before.name}_{op.lower()}")
    node.output.dtype, node.output.shape = like.dtype, like.shape
    return node
