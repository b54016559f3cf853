"""split_before_transpose: Reshape -> Transpose -> Reshape becomes split -> Transpose ->
merge, computing the same (interpreter and ONNX Runtime, fresh random inputs)."""

from __future__ import annotations

import pytest

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.simplify_reshapes import simplify_reshapes
from kiln.passes.split_before_transpose import refine, split_before_transpose
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _chain(x: list[int], a: list[int], perm: list[int], c: list[int]) -> str:
    dims = lambda s: ",".join(map(str, s))  # noqa: E731
    return HEADER + f"""
    g (float[{dims(x)}] x) => (float[{dims(c)}] y) {{
      a_shape = Constant <value = int64[{len(a)}] {{{dims(a)}}}> ()
      c_shape = Constant <value = int64[{len(c)}] {{{dims(c)}}}> ()
      a = Reshape(x, a_shape)
      t = Transpose <perm = [{dims(perm)}]> (a)
      y = Reshape(t, c_shape)
    }}"""


def _perm(graph) -> list[int]:
    return next(n for n in graph.nodes if n.op_type == "Transpose").attrs["perm"]


@pytest.mark.parametrize("s, b, h, d", [(5, 2, 3, 4), (7, 3, 2, 8), (1, 4, 4, 2)])
def test_head_split_becomes_a_view(s, b, h, d):
    """[S, B, E] -> [S, B*H, D] -> [B*H, S, D] -> [B, H, S, D]: one split and a Transpose."""
    graph, before = copy_graph(_chain([s, b, h * d], [s, b * h, d], [1, 0, 2], [b, h, s, d]))
    ctx = apply(graph, split_before_transpose, simplify_reshapes, eliminate_dead)
    assert ctx.rewrites["split_before_transpose"] == 1
    non_unit = lambda shape: [x for x in shape if x != 1]  # noqa: E731
    reshapes = [n for n in graph.nodes if n.op_type == "Reshape"
                and non_unit(n.inputs[0].shape) != non_unit(n.output.shape)]
    assert [r.output.shape for r in reshapes] == [tuple(non_unit((s, b, h, d)))]
    assert "Transpose" in ops(graph)
    feeds = [random_feeds(before, {}, seed) for seed in range(2)]
    assert_same_results(before, graph, feeds, atol=0, rtol=0)


@pytest.mark.parametrize("x, a, perm, c", [
    ([4, 6], [2, 2, 6], [2, 0, 1], [3, 2, 4]),       # the last Reshape splits a factor further
    ([1, 6, 1, 10], [30, 2], [1, 0], [4, 15]),    # size-1 dims; a factor split, then merged
    ([2, 3, 4, 5], [6, 20], [1, 0], [20, 6]),        # a plain 2-D transpose of merged dims
])
def test_general_chains_compute_the_same(x, a, perm, c):
    graph, before = copy_graph(_chain(x, a, perm, c))
    ctx = apply(graph, split_before_transpose, simplify_reshapes, eliminate_dead)
    assert ctx.rewrites["split_before_transpose"] == 1
    feeds = [random_feeds(before, {}, seed) for seed in range(2)]
    assert_same_results(before, graph, feeds, atol=0, rtol=0)


def test_chain_without_common_factors_is_left_alone():
    # [2, 3] -> [3, 2]: the boundary after 2 falls inside the 3, no split expresses it
    graph, _ = copy_graph(_chain([2, 3], [3, 2], [1, 0], [6]))
    ctx = apply(graph, split_before_transpose)
    assert "split_before_transpose" not in ctx.rewrites
    assert _perm(graph) == [1, 0]


def test_already_split_chain_is_left_alone():
    graph, _ = copy_graph(_chain([4, 6], [4, 2, 3], [2, 0, 1], [3, 4, 2]))
    ctx = apply(graph, split_before_transpose)
    assert "split_before_transpose" not in ctx.rewrites


def test_reshape_read_twice_is_left_alone():
    graph, _ = copy_graph(HEADER + """
    g (float[4,6] x) => (float[2,12] y, float[6,4] z) {
      a_shape = Constant <value = int64[2] {6, 4}> ()
      c_shape = Constant <value = int64[2] {2, 12}> ()
      z = Reshape(x, a_shape)
      t = Transpose <perm = [1, 0]> (z)
      y = Reshape(t, c_shape)
    }""")
    ctx = apply(graph, split_before_transpose)
    assert "split_before_transpose" not in ctx.rewrites


def test_refine_finds_the_coarsest_common_factors():
    assert refine([6, 4], [2, 12]) == ([2, 3, 4], [[0, 1], [2]], [[0], [1, 2]])
    assert refine([1, 8], [2, 1, 4]) == ([2, 4], [[], [0, 1]], [[0], [], [1]])
    assert refine([2, 3], [3, 2]) is None


def test_loop_bodies_are_left_alone():
    """A Loop body's shapes are what the exporter declared, which need not hold."""
    graph, _ = copy_graph(HEADER + """
    g (int64 trips, bool cond, float[4,6] init) => (float[4,6] out) {
      out = Loop(trips, cond, init) <
        body = b (int64 i, bool c, float[4,6] v) => (bool c2, float[4,6] v2) {
          c2 = Identity(c)
          a_shape = Constant <value = int64[2] {2, 12}> ()
          c_shape = Constant <value = int64[2] {4, 6}> ()
          a = Reshape(v, a_shape)
          t = Transpose <perm = [1, 0]> (a)
          v2 = Reshape(t, c_shape)
        }
      >
    }""")
    ctx = apply(graph, split_before_transpose)
    assert "split_before_transpose" not in ctx.rewrites
