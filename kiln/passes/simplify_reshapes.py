"""Collapses chains of ops that only change a tensor's shape, and drops those that don't.

Reshape, Flatten, Squeeze and Unsqueeze keep the elements in order, so::

    %t = Flatten/Reshape/Squeeze/Unsqueeze(%x ...)
    %y = Reshape(%t, [6, -1, 32])           ->  %y = Reshape(%x, [6, -1, 32])

when the outer target is constant and has no 0 (a 0 would copy a dim of %t); and

    Squeeze(Unsqueeze(%x, axes), axes)      ->  %x
    Unsqueeze(Squeeze(%x, axes), axes)      ->  %x   (Squeeze only removes dims of size 1)

A Reshape whose constant target gives every dim of its input back, and an Expand whose
constant target is 1 or the input's own (static) size everywhere, are the identity.
"""

from __future__ import annotations

from kiln.ir import Graph, Node, Value
from kiln.passes._dim_equality import (
    DimEquality,
    DimRef,
    analysable_graphs,
    axes_of,
    const_ints,
)
from kiln.passes.pipeline import PassContext, register_pass

RESHAPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


@register_pass("simplify", priority=40)
def simplify_reshapes(graph: Graph, ctx: PassContext) -> bool:
    """Merges Reshape chains, cancels Squeeze/Unsqueeze pairs, removes no-op reshapes."""
    eq = DimEquality(graph)
    static_ok = {id(g) for g in analysable_graphs(graph)}
    count = 0
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.domain or node.graph is not g:
                continue
            if node.op_type == "Reshape":
                count += _skip_inner_reshape(node)
            trusted = id(g) in static_ok
            if node.op_type in ("Squeeze", "Unsqueeze") and _cancels(node, trusted):
                count += _bypass(g, node, node.inputs[0].producer.inputs[0])  # type: ignore[union-attr]
            elif trusted and _keeps_shape(node, eq):
                count += _bypass(g, node, node.inputs[0])  # type: ignore[arg-type]
    ctx.count("simplify_reshapes", count)
    return count > 0


def _producer(value: Value | None, ops: frozenset[str] | tuple[str, ...]) -> Node | None:
    node = value.producer if value is not None else None
    return node if node is not None and not node.domain and node.op_type in ops else None


def _skip_inner_reshape(node: Node) -> bool:
    inner = _producer(node.inputs[0], RESHAPING)
    target = const_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if inner is None or target is None or inner.inputs[0] is None:
        return False
    if 0 in target and not node.attrs.get("allowzero", 0):
        return False
    node.set_input(0, inner.inputs[0])
    return True


def _cancels(node: Node, trusted: bool) -> bool:
    """Whether node undoes its producer: Squeeze(Unsqueeze(x, a), a) or the reverse.

    Negative axes are compared through the rank, which only `trusted` graphs (not Loop or
    Scan bodies, whose input types exporters declare) have proven.
    """
    other = "Unsqueeze" if node.op_type == "Squeeze" else "Squeeze"
    inner = _producer(node.inputs[0], (other,))
    if inner is None or inner.inputs[0] is None:
        return False
    axes, inner_axes = axes_of(node), axes_of(inner)
    if not axes or not inner_axes:
        return False  # a Squeeze without axes drops whatever is 1: not known to cancel
    # both axes lists are relative to the rank with the dims in: the Unsqueeze's output
    larger = node.inputs[0] if node.op_type == "Squeeze" else inner.inputs[0]
    rank = larger.rank if trusted else None
    if rank is None:
        if min(axes + inner_axes) < 0:
            return False
        return sorted(axes) == sorted(inner_axes)
    return sorted(a % rank for a in axes) == sorted(a % rank for a in inner_axes)


def _keeps_shape(node: Node, eq: DimEquality) -> bool:
    """A Reshape or Expand whose constant target leaves the input's shape as it is."""
    x = node.inputs[0] if node.inputs else None
    target = const_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if x is None or target is None or x.rank is None:
        return False
    dims = [eq.static(DimRef(x, k)) for k in range(x.rank)]
    if node.op_type == "Expand":
        offset = x.rank - len(target)
        return offset >= 0 and all(t == 1 or t == dims[k + offset] for k, t in enumerate(target))
    if node.op_type != "Reshape" or len(target) != x.rank:
        return False
    copies = not node.attrs.get("allowzero", 0)
    unmatched = [k for k, t in enumerate(target)
                 if not ((t == 0 and copies) or (t > 0 and t == dims[k]))]
    if not unmatched:
        return True
    # a single -1 is the remaining dim itself when every other dim is a known nonzero size
    # or copied (0): a copied dim of size zero leaves the -1 undefined, where the Reshape
    # fails anyway (SDPA exports write [0, -1, S, D] after attention's [B, H, S, D])
    k = unmatched[0]
    return len(unmatched) == 1 and target[k] == -1 and all(
        (d or 0) >= 1 or (target[j] == 0 and copies) for j, d in enumerate(dims) if j != k)


def _bypass(graph: Graph, node: Node, source: Value) -> bool:
    graph.replace_all_uses(node.output, source)
    graph.remove_node(node)
    return True
