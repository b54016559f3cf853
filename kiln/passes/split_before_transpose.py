"""Rewrites Reshape -> Transpose -> Reshape as splits, one Transpose and merges, so that
at most the last step copies.

Multi-head attention exports (torch's MultiheadAttention) split the heads of q, k and v as

    %a = Reshape(%x)  [S, B, E] -> [S, B*H, D]
    %t = Transpose(%a) {perm=[1, 0, 2]}
    %y = Reshape(%t)  -> [B, H, S, D]

where %x is a slice of the packed QKV projection. Merging B with H is not a view of such a
slice, so the first Reshape copies (torch.reshape), once for each of q, k and v. The chain
is %x split into its finest factors [S, B, H, D], those factors permuted, then merged into
%y's dims (none here):

    %s = Reshape(%x)  -> [S, B, H, D]
    %y = Transpose(%s) {perm=[1, 2, 0, 3]}

Splitting a dim is always a view and so is a Transpose; only the final merge can copy, and
then only where the result needs the data moved. Needs static shapes on the chain.
"""

from __future__ import annotations

from itertools import accumulate, pairwise

import numpy as np

from kiln.ir import Graph, Node
from kiln.passes._dim_equality import analysable_graphs
from kiln.passes._match import only_consumer, static_shapes
from kiln.passes.merge_transposes import permutation
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("simplify", priority=45)
def split_before_transpose(graph: Graph, ctx: PassContext) -> bool:
    """Reshape -> Transpose -> Reshape becomes split -> Transpose -> merge (fewer copies)."""
    count = 0
    for g in list(analysable_graphs(graph)):  # not Loop/Scan bodies (declared shapes)
        for node in list(g.nodes):
            if node.graph is g and _is(node, "Reshape"):
                count += _rewrite(g, node)
    ctx.count("split_before_transpose", count)
    return count > 0


def _is(node: Node | None, op: str) -> bool:
    return node is not None and node.op_type == op and not node.domain


def refine(a: list[int], b: list[int]) -> tuple[list[int], list[list[int]], list[list[int]]] | None:
    """The coarsest factors that both shapes are made of, in order, with the factors of each
    dim of `a` and of `b` (dims of size 1 have none); None when no such factors exist (as
    [2, 3] and [3, 2]: the boundary after 2 falls inside the 3)."""
    ends = sorted(set(_ends(a)) | set(_ends(b)))
    if not ends or any(hi % lo for lo, hi in pairwise(ends)):
        return None
    sizes = [hi // lo for lo, hi in zip([1, *ends], ends)]
    return sizes, _groups(a, ends), _groups(b, ends)


def _ends(shape: list[int]) -> list[int]:
    """Where each dim ends, as the product of the dims up to it (size-1 dims end nowhere)."""
    return [p for d, p in zip(shape, accumulate(shape, lambda x, y: x * y)) if d != 1]


def _groups(shape: list[int], ends: list[int]) -> list[list[int]]:
    groups, start, product = [], 0, 1
    for d in shape:
        product *= d
        stop = ends.index(product) + 1 if d != 1 else start
        groups.append(list(range(start, stop)))
        start = stop
    return groups


def _rewrite(graph: Graph, first: Node) -> bool:
    transpose = only_consumer(first.output, graph)
    if not _is(transpose, "Transpose"):
        return False
    last = only_consumer(transpose.output, graph)
    if not _is(last, "Reshape"):
        return False
    x, perm = first.inputs[0], permutation(transpose)
    shapes = static_shapes(x, first.output, last.output)
    if perm is None or shapes is None or int(np.prod(shapes[0])) == 0:
        return False
    plan = _plan(*shapes, perm)
    if plan is None:
        return False
    split, new_perm = plan
    if split == shapes[1] and new_perm == perm:
        return False  # already the split form
    _emit(graph, first, transpose, last, split, new_perm, shapes[2])
    return True


def _plan(x: list[int], a: list[int], c: list[int],
          perm: list[int]) -> tuple[list[int], list[int]] | None:
    """(split shape of x, its permutation) whose merge into c equals the chain."""
    first = refine(x, a)
    if first is None:
        return None
    sizes, _, a_groups = first
    order = [f for k in perm for f in a_groups[k]]  # factors as the Transpose lays them out
    second = refine([sizes[f] for f in order], c)
    if second is None:
        return None
    fine, pieces, _ = second  # pieces[i]: the fine factors of the i-th factor in `order`
    position = {f: i for i, f in enumerate(order)}
    split, index = [], {}
    for f in range(len(sizes)):  # x's own order
        for piece in pieces[position[f]]:
            index[piece] = len(split)
            split.append(fine[piece])
    return split, [index[p] for p in range(len(fine))]


def _emit(graph: Graph, first: Node, transpose: Node, last: Node, split: list[int],
          perm: list[int], final: list[int]) -> None:
    first.set_input(1, graph.constant(np.array(split, dtype=np.int64), name=f"{first.name}_split"))
    first.attrs.pop("allowzero", None)
    first.output.shape = tuple(split)
    transpose.attrs["perm"] = perm
    transpose.output.shape = tuple(split[p] for p in perm)
    last.set_input(1, graph.constant(np.array(final, dtype=np.int64), name=f"{last.name}_merge"))
    last.attrs.pop("allowzero", None)
