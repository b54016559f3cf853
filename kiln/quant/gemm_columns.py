"""Which output columns of a layer a chain of views and slices reaches.

Attention exports take q, k and v out of one packed projection in several ways: a Split
of its last axis (Hugging Face models with merged GEMMs), or torch's MultiheadAttention's
Reshape [S, B, 3, E] -> Unsqueeze -> Transpose -> Squeeze -> Slice of one of the three ->
Reshape -> Transpose. Folding a scale per piece into the projection's columns needs, for
each piece, the set of columns it holds.

Rather than reason about each op's index arithmetic, the chain runs on a probe: the column
numbers 0..N-1 broadcast over the projection's output shape (zero strides, no memory),
through torch views only (`Tensor.view`, `permute`, narrowing). A step that would have to
copy raises, and the chain is then not followed: a copy of the probe could be as large as
the projection's output. Symbolic dims count as 1, which changes no column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from kiln.ir import Node, Value
from kiln.passes._match import const
from kiln.passes.merge_transposes import permutation

SHAPE_VIEWS = ("Reshape", "Squeeze", "Unsqueeze", "Flatten")
# the ops a path from a layer's output to a piece of it may pass
WALKS = (*SHAPE_VIEWS, "Transpose", "Slice", "Split")


def path_to(value: Value) -> tuple[Value, list[Node]]:
    """(the value the walk back from `value` through WALKS ends at, the nodes on the way
    in data order)."""
    nodes: list[Node] = []
    while value.producer is not None and not value.producer.domain and \
            value.producer.op_type in WALKS:
        nodes.append(value.producer)
        value = value.producer.inputs[0]
    return value, nodes[::-1]


def reached_columns(root: Value, nodes: Sequence[Node], leaf: Value) -> np.ndarray | None:
    """The columns (last-axis indices) of `root` that `leaf`, made from it by `nodes` in
    data order, holds, sorted; None where a step is not a plain view or a shape is not
    known."""
    sizes = _symbols_as_one(root.shape, root.shape)
    if not sizes:
        return None
    probe = torch.arange(sizes[-1], dtype=torch.int32).expand(sizes)
    try:
        for i, node in enumerate(nodes):
            out = leaf if i == len(nodes) - 1 else next(
                v for v in node.outputs if v is not None and v is nodes[i + 1].inputs[0])
            probe = _step(node, out, probe, root.shape)
            if probe is None:
                return None
    except (RuntimeError, ValueError, IndexError):  # the step would copy, or sizes disagree
        return None
    for axis in reversed(range(probe.dim())):
        if probe.stride(axis) == 0:
            probe = probe.narrow(axis, 0, 1)  # rows: the same columns in every one
    return np.unique(probe.numpy())


def _step(node: Node, out: Value, probe: torch.Tensor, root_shape) -> torch.Tensor | None:
    """The probe after `node`, whose output on the path is `out`."""
    if node.op_type in SHAPE_VIEWS:
        sizes = _symbols_as_one(out.shape, root_shape)
        return None if sizes is None else probe.view(sizes)
    if node.op_type == "Transpose":
        perm = permutation(node)
        return None if perm is None else probe.permute(perm)
    if node.op_type == "Slice":
        return _slice(node, probe)
    return _split(node, out, probe)


def _slice(node: Node, probe: torch.Tensor) -> torch.Tensor | None:
    given = [_ints(v) for v in node.inputs[1:5]]
    if len(given) < 2 or any(g is None and v is not None
                             for g, v in zip(given, node.inputs[1:5])):
        return None  # a bound computed at run time
    starts, ends = given[0], given[1]
    axes = given[2] if len(given) > 2 and given[2] is not None else range(len(starts))
    steps = given[3] if len(given) > 3 and given[3] is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1:
            return None
        size = probe.shape[axis]
        begin = min(max(start + size if start < 0 else start, 0), size)
        stop = min(max(end + size if end < 0 else end, 0), size)
        probe = probe.narrow(axis, begin, max(stop - begin, 0))
    return probe


def _ints(value: Value | None) -> list[int] | None:
    array = const(value)
    return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def _split(node: Node, out: Value, probe: torch.Tensor) -> torch.Tensor | None:
    axis = int(node.attrs.get("axis", 0))
    sizes = node.attrs.get("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = _ints(node.inputs[1])
        if sizes is None:
            return None
    if sizes is None:  # equal parts, the last one smaller where they do not divide
        length, count = probe.shape[axis], len(node.outputs)
        chunk = -(-length // count)
        sizes = [min(chunk, length - i * chunk) for i in range(count)]
    pieces = torch.split(probe, [int(s) for s in sizes], dim=axis)
    return pieces[next(i for i, v in enumerate(node.outputs) if v is out)]


def _symbols_as_one(shape, root_shape) -> list[int] | None:
    """The shape with the root's symbolic dims as 1; None where a dim is unknown or a
    symbol the root does not have (a product of dims, say)."""
    if shape is None or root_shape is None:
        return None
    symbols = {d for d in root_shape if isinstance(d, str)}
    if any(not isinstance(d, int) and d not in symbols for d in shape):
        return None
    return [d if isinstance(d, int) else 1 for d in shape]
