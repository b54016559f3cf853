"""Which dims of which values are equal at run time, proven from operator semantics alone.

ONNX shape inference names dynamic dims (`batch`, `unk__83`), but two equal names prove
nothing a pass may rely on: inference merges declared names and guesses through
broadcasts. This module instead unites (value, axis) pairs only where an operator forces
equality: a Relu's output has its input's shape, a Concat's non-concatenated dims equal
those of every input, a Conv keeps the batch dim, a broadcast keeps a dim when every other
operand has 1 (or nothing) there::

    eq = DimEquality(graph)
    eq.same(DimRef(a, 0), DimRef(b, 0))   # True only if proven for every valid run
    eq.static(DimRef(a, 2))               # an int when any equal dim is static

Static ints come from ONNX shape inference (Value.shape), which proves them for every run
the model accepts. Graphs inside Loop/Scan bodies are not analysed: a body's input types
are declared by the exporter, not inferred, and carried values may change shape between
iterations.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

from kiln.ir import Graph, Node, Value

SAME_SHAPE = frozenset({
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization",
    "BitwiseNot", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh", "CumSum",
    "DequantizeLinear", "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "GroupNormalization",
    "HardSigmoid", "HardSwish", "Hardmax", "Identity", "InstanceNormalization", "IsInf",
    "IsNaN", "LRN", "LayerNormalization", "LeakyRelu", "Log", "LogSoftmax",
    "LpNormalization", "MeanVarianceNormalization", "Mish", "Neg", "Not", "PRelu",
    "QuantizeLinear", "RMSNormalization", "Reciprocal", "Relu", "Round", "Selu", "Shrink",
    "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Swish",
    "Tan", "Tanh", "ThresholdedRelu", "Trilu",
})
BROADCAST = frozenset({
    "Add", "And", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Div", "Equal",
    "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Max", "Mean", "Min", "Mod", "Mul",
    "Or", "Pow", "Sub", "Sum", "Where", "Xor",
})
KEEP_BATCH = frozenset({
    "AveragePool", "Conv", "ConvTranspose", "LpPool", "MaxPool", "GlobalAveragePool",
    "GlobalLpPool", "GlobalMaxPool",
})
KEEP_CHANNELS = frozenset({"GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool"})
REDUCE = frozenset({
    "ArgMax", "ArgMin", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
})
LOOPING = frozenset({"Loop", "Scan"})
WHOLE_AXIS_END = 1 << 48  # a Slice end this large covers any axis memory can hold


class DimRef(NamedTuple):
    """Dim `axis` (non-negative) of `value` at run time."""

    value: Value
    axis: int


class DimEquality:
    """A union-find over (value, axis) pairs, filled from one walk of a graph tree."""

    def __init__(self, graph: Graph) -> None:
        self._parent: dict[tuple[int, int], tuple[int, int]] = {}
        self._sizes: dict[tuple[int, int], set[int]] = {}  # static sizes seen in each class
        self._alive: list[Value] = []  # keys are ids: keep their values from being reused
        for g in analysable_graphs(graph):
            for node in g.nodes:
                if not node.domain:
                    for a, b in equal_dims(node, self):
                        self._union(a, b)

    def same(self, a: DimRef, b: DimRef) -> bool:
        """Whether the two dims are proven equal, or both static and of one size."""
        if a == b or self._find(a) == self._find(b):
            return True
        size = self.static(a)
        return size is not None and size == self.static(b)

    def static(self, ref: DimRef) -> int | None:
        """The dim's size when it, or a dim proven equal to it, is static."""
        sizes = self._sizes[self._find(ref)]
        return next(iter(sizes)) if len(sizes) == 1 else None  # two: inference contradicts

    def classes(self) -> list[list[DimRef]]:
        """Every group of two or more dims proven equal (for tests and debugging)."""
        groups: dict[tuple[int, int], list[DimRef]] = {}
        values = {id(v): v for v in self._alive}
        for key in list(self._parent):
            ref = DimRef(values[key[0]], key[1])
            groups.setdefault(self._find(ref), []).append(ref)
        return [g for g in groups.values() if len(g) > 1]

    def _union(self, a: DimRef, b: DimRef) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[ra] = rb
            self._sizes[rb] |= self._sizes.pop(ra)

    def _find(self, ref: DimRef) -> tuple[int, int]:
        key = (id(ref.value), ref.axis)
        if key not in self._parent:
            self._parent[key] = key
            self._alive.append(ref.value)
            size = _static_dim(ref.value, ref.axis)
            self._sizes[key] = set() if size is None else {size}
        while self._parent[key] != key:
            self._parent[key] = self._parent[self._parent[key]]
            key = self._parent[key]
        return key


def _static_dim(value: Value, axis: int) -> int | None:
    if value.shape is None or axis >= len(value.shape):
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def analysable_graphs(graph: Graph) -> Iterator[Graph]:
    """`graph` and its nested graphs, except Loop/Scan bodies and what they contain."""
    yield graph
    for node in graph.nodes:
        if node.op_type in LOOPING and not node.domain:
            continue
        for sub in node.subgraphs():
            yield from analysable_graphs(sub)


def const_ints(value: Value | None) -> list[int] | None:
    """A small constant integer tensor as a list, else None."""
    if value is None or not value.is_const:
        return None
    array = value.const
    if array.dtype.kind not in "iu" or array.ndim > 1 or array.size > 64:
        return None
    return [int(v) for v in array.reshape(-1)]


def axes_of(node: Node) -> list[int] | None:
    """A node's `axes`, from the attribute (older opsets) or the constant second input."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    return const_ints(node.inputs[1]) if len(node.inputs) > 1 else None


def _axis(index: int, rank: int) -> int | None:
    if not -rank <= index < rank:
        return None
    return index + rank if index < 0 else index


def equal_dims(node: Node, eq: DimEquality) -> Iterator[tuple[DimRef, DimRef]]:
    """Pairs of dims the node's semantics make equal (for every run it accepts).

    `eq` tells what is known of the inputs' dims so far: a broadcast against 1, or of two
    equal dims, keeps that dim.
    """
    x = node.inputs[0] if node.inputs else None
    y = node.outputs[0] if node.outputs else None
    if x is None or y is None or x.rank is None:
        return
    rank, op = x.rank, node.op_type
    if op in SAME_SHAPE:
        yield from ((DimRef(y, k), DimRef(x, k)) for k in range(rank))
    elif op in BROADCAST:
        yield from _broadcast(node, y, eq)
    elif op in KEEP_BATCH and rank >= 1:
        yield DimRef(y, 0), DimRef(x, 0)
        if op in KEEP_CHANNELS and rank >= 2:
            yield DimRef(y, 1), DimRef(x, 1)
    elif op == "Transpose":
        perm = node.attrs.get("perm") or list(reversed(range(rank)))
        if sorted(perm) == list(range(rank)):
            yield from ((DimRef(y, k), DimRef(x, p)) for k, p in enumerate(perm))
    elif op == "Concat":
        yield from _concat(node, y, rank)
    elif op == "Split":
        split_axis = _axis(node.attrs.get("axis", 0), rank)
        for out in node.outputs if split_axis is not None else ():
            if out is not None:
                yield from ((DimRef(out, k), DimRef(x, k)) for k in range(rank)
                            if k != split_axis)
    elif op == "Slice":
        yield from _slice(node, y, x, rank)
    elif op == "Gather":
        yield from _gather(node, y, x, rank)
    elif op in REDUCE:
        yield from _reduce(node, y, x, rank)
    elif op in ("Squeeze", "Unsqueeze"):
        yield from _squeeze(node, y, x, rank)
    elif op == "Reshape":
        yield from _reshape(node, y, x, rank, eq)
    elif op == "Expand":
        target = const_ints(node.inputs[1]) if len(node.inputs) > 1 else None
        out_rank = max(rank, len(target or []))
        for k in range(out_rank) if target is not None else ():
            t = k - (out_rank - len(target))  # type: ignore[arg-type]
            j = k - (out_rank - rank)
            if j >= 0 and (t < 0 or target[t] == 1):  # type: ignore[index]
                yield DimRef(y, k), DimRef(x, j)
    elif op == "MatMul":
        yield from _matmul(node, y, eq)
    elif op == "Gemm" and rank == 2 and node.inputs[1] is not None and node.inputs[1].rank == 2:
        yield DimRef(y, 0), DimRef(x, 1 if node.attrs.get("transA", 0) else 0)
        yield DimRef(y, 1), DimRef(node.inputs[1], 0 if node.attrs.get("transB", 0) else 1)


def _broadcast(node: Node, y: Value, eq: DimEquality) -> Iterator[tuple[DimRef, DimRef]]:
    """An output dim equals an input's where every other input has 1, nothing or that dim."""
    inputs = [v for v in node.inputs if v is not None]
    if any(v.rank is None for v in inputs):
        return
    out_rank = max(v.rank for v in inputs)  # type: ignore[type-var]
    for k in range(out_rank):
        for i, v in enumerate(inputs):
            j = k - (out_rank - v.rank)  # type: ignore[operator]
            if j < 0:
                continue
            others = [w for n, w in enumerate(inputs) if n != i]
            if all(_keeps(w, k - (out_rank - w.rank), DimRef(v, j), eq)  # type: ignore[operator]
                   for w in others):
                yield DimRef(y, k), DimRef(v, j)


def _keeps(value: Value, axis: int, dim: DimRef, eq: DimEquality) -> bool:
    """Whether broadcasting `value` (at `axis`) against `dim` leaves `dim`."""
    if axis < 0:
        return True
    ref = DimRef(value, axis)
    return eq.static(ref) == 1 or eq.same(ref, dim)


def _concat(node: Node, y: Value, rank: int) -> Iterator[tuple[DimRef, DimRef]]:
    concat_axis = _axis(node.attrs.get("axis", 0), rank)
    if concat_axis is None:
        return
    for v in node.inputs:
        if v is not None and v.rank == rank:
            yield from ((DimRef(y, k), DimRef(v, k)) for k in range(rank) if k != concat_axis)


def _slice(node: Node, y: Value, x: Value, rank: int) -> Iterator[tuple[DimRef, DimRef]]:
    """Axes not sliced are kept, and so are axes sliced from 0 to an end past any size."""
    if len(node.inputs) > 1:  # opset 10+: starts, ends, axes, steps are inputs
        starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
        axes_in = node.inputs[3] if len(node.inputs) > 3 else None
        steps_in = node.inputs[4] if len(node.inputs) > 4 else None
        axes = const_ints(axes_in) if axes_in is not None else None
        steps = const_ints(steps_in) if steps_in is not None else None
    else:
        starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
        axes, steps = node.attrs.get("axes"), None
    if starts is None or ends is None or len(starts) != len(ends):
        return
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if len(axes) != len(starts) or len(steps) != len(starts):
        return
    cut = set()
    for a, start, end, step in zip(axes, starts, ends, steps):
        k = _axis(a, rank)
        if k is None:
            return
        if not (start == 0 and step == 1 and end >= WHOLE_AXIS_END):
            cut.add(k)
    yield from ((DimRef(y, k), DimRef(x, k)) for k in range(rank) if k not in cut)


def _gather(node: Node, y: Value, x: Value, rank: int) -> Iterator[tuple[DimRef, DimRef]]:
    indices = node.inputs[1] if len(node.inputs) > 1 else None
    gather_axis = _axis(node.attrs.get("axis", 0), rank)
    if indices is None or indices.rank is None or gather_axis is None:
        return
    q = indices.rank
    for k in range(gather_axis):
        yield DimRef(y, k), DimRef(x, k)
    for m in range(q):
        yield DimRef(y, gather_axis + m), DimRef(indices, m)
    for k in range(gather_axis + 1, rank):
        yield DimRef(y, k + q - 1), DimRef(x, k)


def _reduce(node: Node, y: Value, x: Value, rank: int) -> Iterator[tuple[DimRef, DimRef]]:
    """The dims not reduced are kept (and shift left where reduced ones are dropped)."""
    if "axis" in node.attrs or node.op_type in ("ArgMax", "ArgMin"):
        axes: list[int] | None = [node.attrs.get("axis", 0)]
    elif "axes" in node.attrs:
        axes = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_ints(node.inputs[1])
    else:
        axes = []
    if axes is None or (not axes and node.attrs.get("noop_with_empty_axes", 0)):
        return
    reduced = {_axis(a, rank) for a in axes} if axes else set(range(rank))
    if None in reduced:
        return
    kept = [k for k in range(rank) if k not in reduced]
    keepdims = node.attrs.get("keepdims", 1)
    yield from ((DimRef(y, k if keepdims else i), DimRef(x, k)) for i, k in enumerate(kept))


def _squeeze(node: Node, y: Value, x: Value, rank: int) -> Iterator[tuple[DimRef, DimRef]]:
    """The dims not removed (or not inserted) keep their order."""
    if "axes" in node.attrs:
        axes: list[int] | None = list(node.attrs["axes"])
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_ints(node.inputs[1])
    else:
        axes = None  # Squeeze with no axes drops every dim of size 1: not known here
    if not axes:
        return
    squeeze = node.op_type == "Squeeze"
    changed = {_axis(a, rank if squeeze else rank + len(axes)) for a in axes}
    if None in changed:
        return
    kept = [k for k in range(rank if squeeze else rank + len(axes)) if k not in changed]
    if squeeze:
        yield from ((DimRef(y, i), DimRef(x, k)) for i, k in enumerate(kept))
    else:
        yield from ((DimRef(y, k), DimRef(x, i)) for i, k in enumerate(kept))


def _reshape(node: Node, y: Value, x: Value, rank: int,
             eq: DimEquality) -> Iterator[tuple[DimRef, DimRef]]:
    """A 0 in the target copies the input's dim; a -1 recovers the input's one dynamic dim.

    With x: [B, 2048] and target [-1, 2048, 1], the -1 is B * 2048 / (2048 * 1) = B.
    """
    target = const_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None:
        return
    copies = not node.attrs.get("allowzero", 0)
    sizes: list[int | None] = []
    for k, t in enumerate(target):
        if t == 0 and copies and k < rank:
            yield DimRef(y, k), DimRef(x, k)
            sizes.append(eq.static(DimRef(x, k)))
        else:
            sizes.append(t if t >= 0 else None)
    dynamic = [j for j in range(rank) if eq.static(DimRef(x, j)) is None]
    inferred = [i for i, t in enumerate(target) if t == -1]
    if len(dynamic) != 1 or len(inferred) != 1 or sizes.count(None) != 1:
        return
    rest_in = math.prod(eq.static(DimRef(x, j)) or 0 for j in range(rank) if j != dynamic[0])
    rest_out = math.prod(s or 0 for i, s in enumerate(sizes) if i != inferred[0])
    if rest_in == rest_out > 0:
        yield DimRef(y, inferred[0]), DimRef(x, dynamic[0])


def _matmul(node: Node, y: Value, eq: DimEquality) -> Iterator[tuple[DimRef, DimRef]]:
    a, b = node.inputs[0], node.inputs[1]
    if a is None or b is None or a.rank is None or b.rank is None or a.rank < 2 or b.rank < 2:
        return
    out_rank = max(a.rank, b.rank)
    yield DimRef(y, out_rank - 2), DimRef(a, a.rank - 2)
    yield DimRef(y, out_rank - 1), DimRef(b, b.rank - 1)
    for k in range(out_rank - 2):  # batch dims broadcast
        ja, jb = k - (out_rank - a.rank), k - (out_rank - b.rank)
        if ja >= 0 and _keeps(b, jb, DimRef(a, ja), eq):
            yield DimRef(y, k), DimRef(a, ja)
        if jb >= 0 and _keeps(a, ja, DimRef(b, jb), eq):
            yield DimRef(y, k), DimRef(b, jb)
