"""Replaces layer normalization, with the residual Add before it, by `kiln.LayerNorm`.

    s = Add(x, r); y = LayerNormalization(s, g, b)   ->   y = LayerNorm(x, r, g, b)

Also when the exporter spelled it out (opset < 17):

    m = ReduceMean(x, [-1]); d = Sub(x, m); v = ReduceMean(Pow(d, 2), [-1])
    y = Div(d, Sqrt(Add(v, eps))) * g + b

When the sum is read elsewhere too (pre-norm transformers carry it as the residual
stream), the fused node returns it as a second output.
"""

from __future__ import annotations

from kiln.ir import Graph, Node, Value
from kiln.passes._dim_equality import DimEquality, DimRef, axes_of
from kiln.passes._match import (
    const,
    fused_names,
    only_consumer,
    other_input,
    producer,
    remove_chain,
    scalar,
)
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("fuse", priority=20)
def fuse_layernorm(graph: Graph, ctx: PassContext) -> bool:
    """Fuses LayerNormalization (or its spelled-out form) and a residual Add before it."""
    changed = False
    shapes = _Shapes(graph)
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is not g or node.domain:
                continue
            if node.op_type == "LayerNormalization":
                changed |= _from_op(g, node, shapes)
            elif node.op_type == "Div":
                changed |= _from_formula(g, node, shapes)
    return changed


class _Shapes:
    """Whether a residual Add's operands can be taken as one LayerNorm's x and residual:
    one rank, and each dim either equal in size, proven equal (DimEquality, built on
    first need) or unknown on a side. Exporters name a residual's batch and sequence dims
    apart from the other operand's (BERT's 'unk__48' beside 'batch') though every run has
    them equal; where they might still differ at run time the sum broadcasts, and every
    LayerNorm tactic broadcasts x and the residual as the Add did."""

    def __init__(self, graph: Graph) -> None:
        self._graph, self._eq = graph, None

    def same(self, a: Value, b: Value) -> bool:
        if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
            return False
        return all(self._agree(a, b, i) for i in range(len(a.shape)))

    def _agree(self, a: Value, b: Value, axis: int) -> bool:
        p, q = a.shape[axis], b.shape[axis]
        if isinstance(p, int) and isinstance(q, int):
            return p == q
        if self._eq is None:
            self._eq = DimEquality(self._graph)
        known = self._eq.static(DimRef(a, axis)), self._eq.static(DimRef(b, axis))
        return None in known or known[0] == known[1]


def _from_op(graph: Graph, ln: Node, shapes: _Shapes) -> bool:
    if any(v is not None for v in ln.outputs[1:]) or ln.attrs.get("stash_type", 1) != 1:
        return False
    x, scale = ln.inputs[0], ln.inputs[1]
    bias = ln.inputs[2] if len(ln.inputs) > 2 else None
    axis = ln.attrs.get("axis", -1)
    if x is None or x.rank is None:
        return False
    return _replace(graph, x, scale, bias, axis if axis >= 0 else axis + x.rank, x.rank,
                    ln.attrs.get("epsilon", 1e-5), [ln], ln.output, shapes)


def _from_formula(graph: Graph, div: Node, shapes: _Shapes) -> bool:
    d, s = div.inputs
    sub, sqrt = producer(d, "Sub"), producer(s, "Sqrt")
    if sub is None or sqrt is None or only_consumer(s, graph) is not div:
        return False
    x, mean = sub.inputs
    reduce1 = producer(mean, "ReduceMean")
    add_eps = producer(sqrt.inputs[0], "Add")
    if reduce1 is None or reduce1.inputs[0] is not x or add_eps is None:
        return False
    variance = next((v for v in add_eps.inputs if producer(v, "ReduceMean")), None)
    eps = scalar(other_input(add_eps, variance)) if variance is not None else None
    reduce2 = producer(variance, "ReduceMean")
    square = reduce2.inputs[0].producer if reduce2 is not None else None
    if eps is None or square is None or not _is_square_of(square, d):
        return False
    rank = x.rank
    if rank is None or not (_last_axis(reduce1, rank) and _last_axis(reduce2, rank)):
        return False
    if len(d.consumers) != 2 or only_consumer(mean, graph) is not sub:
        return False
    chain = [reduce1, sub, square, reduce2, add_eps, sqrt, div]
    out, scale, bias = div.output, None, None
    mul = only_consumer(out, graph)
    if mul is not None and mul.op_type == "Mul" and const(other_input(mul, out)) is not None:
        scale, out = other_input(mul, out), mul.output
        chain.append(mul)
        add = only_consumer(out, graph)
        if add is not None and add.op_type == "Add" and const(other_input(add, out)) is not None:
            bias, out = other_input(add, out), add.output
            chain.append(add)
    return _replace(graph, x, scale, bias, rank - 1, rank, eps, chain, out, shapes)


def _residual_operands(add: Node, shapes: _Shapes) -> tuple[Value, Value] | None:
    """(x, residual) of a residual Add: two activations of one shape, or an activation and
    a constant table that broadcasts onto it (BERT's position embeddings, [1, S, E]
    beside [B, S, E]; every LayerNorm tactic broadcasts it as the Add did)."""
    a, b = add.inputs[0], add.inputs[1]
    if a is None or b is None or (a.is_const and b.is_const):
        return None
    if not a.is_const and not b.is_const:
        return (a, b) if shapes.same(a, b) else None
    x, c = (b, a) if a.is_const else (a, b)
    if x.shape is None or not 0 < c.const.ndim <= len(x.shape) \
            or c.const.size <= c.const.shape[-1]:
        return None  # a vector along the row is a bias, which the producer's epilogue takes
    dims = zip(reversed(c.const.shape), reversed(x.shape))
    fits = all(n == 1 or n == d for n, d in dims) and c.const.shape[-1] == x.shape[-1]
    return (x, c) if fits else None


def _is_square_of(node: Node, d: Value) -> bool:
    if node.op_type == "Pow":
        return node.inputs[0] is d and scalar(node.inputs[1]) == 2.0
    return node.op_type == "Mul" and node.inputs[0] is d and node.inputs[1] is d


def _last_axis(reduce: Node, rank: int) -> bool:
    axes = axes_of(reduce)
    return axes is not None and [a % rank for a in axes] == [rank - 1] and reduce.attrs.get(
        "keepdims", 1) == 1


def _replace(graph: Graph, x: Value, scale: Value | None, bias: Value | None, axis: int,
             rank: int, eps: float, chain: list[Node], out: Value, shapes: _Shapes) -> bool:
    if (scale is not None and not scale.is_const) or (bias is not None and not bias.is_const):
        return False
    residual = None
    add = producer(x, "Add")
    summed: Value | None = None
    operands = _residual_operands(add, shapes) if add is not None and axis == rank - 1 else None
    if operands is not None:
        summed = x
        chain = [add, *chain]
        x, residual = operands
    extra_readers = (summed is not None and any(
        n not in chain for n in summed.consumers)) or (summed is not None and any(
            summed is v for v in graph.outputs))
    node = graph.add_node("LayerNorm", [x, residual, scale, bias],
                          {"axis": axis, "epsilon": float(eps)}, domain="kiln",
                          num_outputs=2 if extra_readers else 1,
                          name=f"{chain[-1].name}_layernorm", before=chain[-1])
    node.meta["fused"] = fused_names(chain)
    node.outputs[0].dtype, node.outputs[0].shape = out.dtype, out.shape
    graph.replace_all_uses(out, node.outputs[0])
    if extra_readers:
        node.outputs[1].dtype, node.outputs[1].shape = summed.dtype, summed.shape
        graph.replace_all_uses(summed, node.outputs[1])
    remove_chain(graph, chain)
    return True
