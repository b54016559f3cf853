"""A Gather of activations at constant indices that form a run becomes a Slice (a view).

    q = Gather(qkv, 0)        ->   q = Squeeze(Slice(qkv, [0], [1], [0]), [0])
    y = Gather(x, [2, 3, 4])  ->   y = Slice(x, [2], [5], [axis])
    y = Gather(x, [[0, 1], [2, 3]])  ->   y = Reshape(Slice(x, [0], [4], [axis]), ...)

torch's MultiheadAttention export picks q, k and v out of the packed projection that
way; a Gather copies its result (index_select), a Slice and a Squeeze are views, so the
copy disappears. Hugging Face's padding masks index the flattened mask with every
position in order, a [B, 1, 1, S] index table; as a Reshape the mask stays a row per
sequence, which attention kernels read once for all queries. Only float and boolean
activations are rewritten: integer Gathers are shape arithmetic, which
`fold_shape_chains` reads as Gathers.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import DType, Graph, Node, Value
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("simplify", priority=60)
def gather_to_slice(graph: Graph, ctx: PassContext) -> bool:
    """Turns Gathers of activations at constant, consecutive indices into views."""
    rewritten = 0
    for node in list(graph.nodes):  # the main graph: bodies capture values by name
        run = _index_run(node)
        if run is not None:
            _rewrite(graph, node, *run)
            rewritten += 1
    ctx.count("gather_to_slice", rewritten)
    return rewritten > 0


def _index_run(node: Node) -> tuple[int, int, tuple[int, ...]] | None:
    """(first, end, the indices' shape) when `node` gathers a run of consecutive indices,
    else None."""
    if node.domain or node.op_type != "Gather" or len(node.inputs) != 2:
        return None
    data, indices = node.inputs
    out = node.outputs[0]
    if (data is None or indices is None or not indices.is_const or data.is_const
            or data.dtype is None or not (data.dtype.is_float or data.dtype is DType.BOOL)
            or data.rank is None
            or out is None or out in node.graph.outputs
            or any(user.graph is not node.graph for user in out.consumers)):
        return None
    axis = node.attrs.get("axis", 0)
    size = data.shape[axis]  # type: ignore[index]
    values = np.asarray(indices.const).astype(np.int64)
    if not isinstance(size, int) or values.size == 0 or (
            values.ndim > 1 and out.static_shape is None):
        return None
    # in range (out of range is a Gather's error and would be a Slice's silent clamp)
    flat = values.reshape(-1)
    if np.any(flat < -size) or np.any(flat >= size):
        return None
    flat = np.where(flat < 0, flat + size, flat)
    if np.any(np.diff(flat) != 1):
        return None
    return int(flat[0]), int(flat[-1]) + 1, values.shape


def _rewrite(graph: Graph, node: Node, first: int, end: int, index_shape: tuple[int, ...]
             ) -> None:
    data, _ = node.inputs
    out = node.outputs[0]
    rank = data.rank or 0
    axis = node.attrs.get("axis", 0)
    axis = axis + rank if axis < 0 else axis
    ints = lambda values: graph.constant(np.array(values, dtype=np.int64),  # noqa: E731
                                         name=f"{node.name}_slice")
    sliced = data
    if (first, end) != (0, data.shape[axis]):  # the whole axis: the data itself
        sliced = graph.add_node("Slice", [data, ints([first]), ints([end]), ints([axis])],
                                name=f"{node.name}_slice", before=node).output
        sliced.dtype = data.dtype
        sliced.shape = tuple(end - first if i == axis else d for i, d in enumerate(data.shape))
    result: Value = sliced
    if len(index_shape) != 1:  # a scalar index drops the axis, a table splits it
        result = graph.add_node(
            "Squeeze" if not index_shape else "Reshape",
            [sliced, ints([axis] if not index_shape else list(out.static_shape))],
            name=f"{node.name}_{'reshape' if index_shape else 'squeeze'}", before=node).output
        result.dtype, result.shape = data.dtype, out.shape
    graph.replace_all_uses(out, result)
    graph.remove_node(node)

