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
from kiln.ops.interpreter import node_step
from kiln.ops.tensors import to_torch
from kiln.passes._match import const
from kiln.passes.merge_transposes import permutation
from kiln.passes.quantize_before_views import VIEWS

SHAPE_VIEWS = tuple(op for op in VIEWS if op != "Transpose")  # views that only reshape
# the ops a path from a layer's output to a piece of it may pass
WALKS = (*VIEWS, "Slice", "Split")


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
    return _cut(node, out, probe)


def _cut(node: Node, out: Value, probe: torch.Tensor) -> torch.Tensor | None:
    """A Slice or Split run by kiln's own implementation (kiln/ops/slice.py), so that its
    bounds clamp and its parts divide as the engine's do. Its bounds and sizes must be
    constants, and a Slice's steps 1: a strided or reversed slice is no plain view."""
    bounds = node.inputs[1:]
    if any(v is not None and not v.is_const for v in bounds):
        return None  # computed at run time
    if node.op_type == "Slice" and (len(bounds) < 2 or any(
            step != 1 for step in _ints(bounds[3] if len(bounds) > 3 else None))):
        return None
    args = [probe] + [None if v is None else to_torch(v.const) for v in bounds]
    results = node_step(node, node.graph.root().opsets, "cpu").fn(*args)
    results = results if isinstance(results, tuple) else (results,)
    return results[next(i for i, v in enumerate(node.outputs) if v is out)]


def _ints(value: Value | None) -> list[int]:
    array = const(value)
    return [] if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def _symbols_as_one(shape, root_shape) -> list[int] | None:
    """The shape with the root's symbolic dims as 1; None where a dim is unknown or a
    symbol the root does not have (a product of dims, say)."""
    if shape is None or root_shape is None:
        return None
    symbols = {d for d in root_shape if isinstance(d, str)}
    if any(not isinstance(d, int) and d not in symbols for d in shape):
        return None
    return [d if isinstance(d, int) else 1 for d in shape]
