"""Folds shape arithmetic wherever the dims it reads are static, or proven equal.

Exporters compute reshape targets from shapes at run time::

    %s = Shape(%x)                                  # x: fp32[N, 82, 20, 20]
    %n = Gather(%s, 0)                              # N: dynamic
    %t = Concat(Unsqueeze(%n, [0]), [82], [-1])
    %y = Reshape(%x, %t)                            # -> Reshape(%x, [0, 82, -1])

Each element of a small integer tensor is tracked as a known int, a run-time dim
(`DimRef`: dim k of some value) or unknown, through Shape, Size, Gather, Slice,
(Un)Squeeze, Concat, Cast and Identity. Then:

- a Shape, Size, Gather or Slice whose elements are all known ints (and, for Gather and
  Slice, whose data is not) becomes a constant, and `fold_constants` folds what follows
  (Unsqueeze, Concat, Cast ...);
- in a Reshape target, an element that is dim i of the Reshape's own input (at position i)
  becomes 0, which ONNX reads as "copy that dim"; when exactly one element is still
  unknown and all others are literal sizes >= 1, it becomes -1 (inferred from the element
  count). A target left with ints only becomes a constant;
- in an Expand target, an element equal to the expanded input's own dim becomes 1.

Dims are known only where ONNX shape inference proved them static or where operator
semantics prove two dims equal (`_dim_equality`); symbolic dim names are never compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes._dim_equality import DimEquality, DimRef, analysable_graphs, const_ints
from kiln.passes.pipeline import PassContext, register_pass

Elem = int | DimRef | None
MAX_ELEMENTS = 64  # longer integer tensors are data, not shapes
ORIGINS = frozenset({"Shape", "Size", "Gather", "Slice"})
# casts that keep every dim size (sizes of real tensors fit in 32 bits)
DIM_PRESERVING_CASTS = frozenset({DType.INT64, DType.INT32, DType.UINT64, DType.UINT32})


@dataclass(frozen=True)
class Facts:
    """What is known of a rank-0 or rank-1 integer tensor, element by element."""

    elems: tuple[Elem, ...]
    scalar: bool
    dtype: np.dtype

    @property
    def ints(self) -> list[int] | None:
        if all(isinstance(e, int) for e in self.elems):
            return list(self.elems)  # type: ignore[arg-type]
        return None

    def array(self) -> np.ndarray:
        values = np.array(self.ints, dtype=self.dtype)
        return values.reshape(()) if self.scalar else values


class ShapeFacts:
    """Facts about integer tensors, computed on demand and memoized for one pass run."""

    def __init__(self, eq: DimEquality) -> None:
        self.eq = eq
        self._memo: dict[int, Facts | None] = {}
        self._alive: list[Value] = []

    def of(self, value: Value | None) -> Facts | None:
        if value is None:
            return None
        key = id(value)
        if key not in self._memo:
            self._alive.append(value)
            self._memo[key] = self._compute(value)
        return self._memo[key]

    def _compute(self, value: Value) -> Facts | None:
        if value.kind != "tensor" or value.dtype is None or value.dtype.numpy is None:
            return None
        if value.dtype.numpy.kind not in "iu":
            return None
        if value.is_const:
            ints = const_ints(value)
            if ints is None:
                return None
            return Facts(tuple(ints), value.const.ndim == 0, value.const.dtype)
        node = value.producer
        rule = _RULES.get(node.op_type) if node is not None and not node.domain else None
        facts = rule(self, node) if rule is not None and node.outputs[0] is value else None
        return facts if facts is not None else _unknown(value)

    def dim(self, ref: DimRef) -> int | DimRef:
        size = self.eq.static(ref)
        return ref if size is None else size


def _unknown(value: Value) -> Facts | None:
    """Nothing known but the length (which inference proved)."""
    shape = value.static_shape
    if shape is None or len(shape) > 1 or (shape and shape[0] > MAX_ELEMENTS):
        return None
    return Facts((None,) * (shape[0] if shape else 1), not shape, value.dtype.numpy)


def _attr_or_input(node: Node, name: str, index: int) -> list[int] | None:
    """An attribute of older opsets that later became an input (axes, starts ...)."""
    if name in node.attrs:
        return [int(v) for v in node.attrs[name]]
    if len(node.inputs) > index and node.inputs[index] is not None:
        return const_ints(node.inputs[index])
    return []


def _shape(facts: ShapeFacts, node: Node) -> Facts | None:
    x = node.inputs[0]
    if x is None or x.kind != "tensor" or x.rank is None:
        return None
    rank = x.rank
    start, end = node.attrs.get("start", 0), node.attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    elems = tuple(facts.dim(DimRef(x, k)) for k in range(start, end))
    return Facts(elems, False, np.dtype(np.int64))


def _size(facts: ShapeFacts, node: Node) -> Facts | None:
    x = node.inputs[0]
    if x is None or x.kind != "tensor" or x.rank is None:
        return None
    dims = [facts.dim(DimRef(x, k)) for k in range(x.rank)]
    total = int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else None
    return Facts((total,), True, np.dtype(np.int64))


def _gather(facts: ShapeFacts, node: Node) -> Facts | None:
    data, indices = facts.of(node.inputs[0]), node.inputs[1]
    picks = const_ints(indices)
    if data is None or data.scalar or picks is None or node.attrs.get("axis", 0) not in (0, -1):
        return None
    n = len(data.elems)
    if not all(-n <= i < n for i in picks):
        return None
    return Facts(tuple(data.elems[i] for i in picks), indices.const.ndim == 0, data.dtype)


def _slice(facts: ShapeFacts, node: Node) -> Facts | None:
    data = facts.of(node.inputs[0])
    starts = _attr_or_input(node, "starts", 1)
    ends = _attr_or_input(node, "ends", 2)
    axes = _attr_or_input(node, "axes", 3)
    steps = _attr_or_input(node, "steps", 4)
    if data is None or data.scalar or not starts or not ends or axes is None or steps is None:
        return None
    steps = steps or [1]
    if [len(starts), len(ends), len(steps)] != [1, 1, 1] or steps[0] == 0:
        return None
    if axes not in ([], [0], [-1]):
        return None
    # Python slicing clamps out-of-range starts and ends exactly as ONNX Slice does
    picked = data.elems[slice(starts[0], ends[0], steps[0])]
    return Facts(picked, False, data.dtype)


def _unsqueeze(facts: ShapeFacts, node: Node) -> Facts | None:
    x = facts.of(node.inputs[0])
    if x is None or not x.scalar or _attr_or_input(node, "axes", 1) not in ([0], [-1]):
        return None
    return Facts(x.elems, False, x.dtype)


def _squeeze(facts: ShapeFacts, node: Node) -> Facts | None:
    x = facts.of(node.inputs[0])
    if x is None or x.scalar or len(x.elems) != 1:
        return None
    if _attr_or_input(node, "axes", 1) not in ([], [0], [-1]):
        return None
    return Facts(x.elems, True, x.dtype)


def _concat(facts: ShapeFacts, node: Node) -> Facts | None:
    parts = [facts.of(v) for v in node.inputs]
    if node.attrs.get("axis", 0) not in (0, -1) or not parts:
        return None
    if any(p is None or p.scalar for p in parts):
        return None
    elems = tuple(e for p in parts for e in p.elems)  # type: ignore[union-attr]
    return Facts(elems, False, parts[0].dtype)  # type: ignore[union-attr]


def _cast(facts: ShapeFacts, node: Node) -> Facts | None:
    x = facts.of(node.inputs[0])
    try:
        to = DType(int(node.attrs.get("to", 0)))
    except ValueError:
        return None
    if x is None or to.numpy is None or to.numpy.kind not in "iu":
        return None
    keep = to in DIM_PRESERVING_CASTS
    elems = tuple(
        int(np.array(e).astype(to.numpy)) if isinstance(e, int) else (e if keep else None)
        for e in x.elems
    )
    return Facts(elems, x.scalar, to.numpy)


def _identity(facts: ShapeFacts, node: Node) -> Facts | None:
    return facts.of(node.inputs[0])


_RULES: dict[str, Callable[[ShapeFacts, Node], Facts | None]] = {
    "Shape": _shape, "Size": _size, "Gather": _gather, "Slice": _slice,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat, "Cast": _cast,
    "Identity": _identity,
}


@register_pass("simplify", priority=15)
def fold_shape_chains(graph: Graph, ctx: PassContext) -> bool:
    """Turns shape arithmetic over static (or proven-equal) dims into constants."""
    facts = ShapeFacts(DimEquality(graph))
    count = 0
    for g in list(analysable_graphs(graph)):
        for node in list(g.nodes):
            if node.domain:
                continue
            if node.op_type in ORIGINS:
                count += _fold_origin(g, node, facts)
            elif node.op_type == "Reshape":
                count += _static_reshape_target(g, node, facts)
            elif node.op_type == "Expand":
                count += _static_expand_target(g, node, facts)
    ctx.count("fold_shape_chains", count)
    return count > 0


def _fold_origin(graph: Graph, node: Node, facts: ShapeFacts) -> bool:
    value = node.outputs[0] if node.outputs else None
    found = facts.of(value)
    if value is None or found is None or found.ints is None:
        return False
    if node.op_type in ("Gather", "Slice"):
        data = facts.of(node.inputs[0])
        if data is not None and data.ints is not None:
            return False  # folds with its (known) data: fold only where knowledge starts
    graph.replace_all_uses(value, graph.constant(found.array(), name=value.name + "_folded"))
    if not any(v is not None and (v.consumers or v in graph.outputs) for v in node.outputs):
        graph.remove_node(node)
    return True


def _operands(node: Node) -> tuple[Value | None, Value | None]:
    """A Reshape's or Expand's data and target shape."""
    inputs = node.inputs
    return (inputs[0] if inputs else None), (inputs[1] if len(inputs) > 1 else None)


def _set_target(graph: Graph, node: Node, elems: list[int]) -> bool:
    target = node.inputs[1]
    node.set_input(1, graph.constant(np.array(elems, dtype=np.int64),
                                     name=f"{target.name}_static"))  # type: ignore[union-attr]
    return True


def _static_reshape_target(graph: Graph, node: Node, facts: ShapeFacts) -> bool:
    data, target = _operands(node)
    found = facts.of(target)
    if data is None or target is None or target.is_const or found is None or found.scalar:
        return False
    if found.ints is not None:
        return False  # the shape ops it comes from fold, then fold_constants does the rest
    copy_allowed = not node.attrs.get("allowzero", 0) and data.rank is not None
    elems: list[int | None] = []
    for i, e in enumerate(found.elems):
        if isinstance(e, int):
            elems.append(e)
        elif (isinstance(e, DimRef) and copy_allowed and i < data.rank  # type: ignore[operator]
              and facts.eq.same(e, DimRef(data, i))):
            elems.append(0)  # 0 copies the input's dim i, which e is
        else:
            elems.append(None)
    unknown = [i for i, e in enumerate(elems) if e is None]
    if len(unknown) == 1 and all(e >= 1 for e in elems if e is not None):
        # the other sizes are literal and nonzero, so -1 recovers this one from the count
        elems[unknown[0]] = -1
    if None in elems:
        return False
    return _set_target(graph, node, elems)  # type: ignore[arg-type]


def _static_expand_target(graph: Graph, node: Node, facts: ShapeFacts) -> bool:
    x, target = _operands(node)
    found = facts.of(target)
    if x is None or target is None or target.is_const or found is None or found.scalar:
        return False
    if x.rank is None or found.ints is not None:
        return False
    elems: list[int] = []
    offset = x.rank - len(found.elems)  # x's axis for target element k is k + offset
    for k, e in enumerate(found.elems):
        if isinstance(e, int):
            elems.append(e)
        elif isinstance(e, DimRef) and k + offset >= 0 and facts.eq.same(
                e, DimRef(x, k + offset)):
            elems.append(1)  # broadcasting a dim against itself or against 1 keeps it
        else:
            return False
    return _set_target(graph, node, elems)
