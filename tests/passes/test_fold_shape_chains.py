"""fold_shape_chains: shape arithmetic over static (or proven-equal) dims becomes constant."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.fold_constants import fold_constants
from kiln.passes.fold_shape_chains import fold_shape_chains
from tests.graph_support import (
    apply,
    assert_same_results,
    copy_graph,
    onnx_level_pipeline,
    ops,
    random_feeds,
)

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _target(graph, op="Reshape"):
    node = next(n for n in graph.walk_nodes() if n.op_type == op)
    target = node.inputs[1]
    return None if not target.is_const else target.const.tolist()


def _feeds(graph, sizes, seed=0):
    return [random_feeds(graph, dims, seed + i) for i, dims in enumerate(sizes)]


def test_static_shape_chain_collapses_to_a_constant_target():
    text = HEADER + """
    g (float[2,3,4] x) => (float[2,12] y) {
      s = Shape(x)
      i0 = Constant <value = int64[1] {0}> ()
      d0 = Gather <axis = 0> (s, i0)
      m1 = Constant <value = int64[1] {-1}> ()
      t = Concat <axis = 0> (d0, m1)
      y = Reshape(x, t)
    }"""
    graph, before = copy_graph(text)
    ctx = apply(graph, fold_shape_chains, fold_constants, eliminate_dead)
    assert ctx.rewrites["fold_shape_chains"] == 1  # the Gather of a static shape
    assert ops(graph) == ["Reshape"]
    assert _target(graph) == [2, -1]
    assert_same_results(before, graph, _feeds(before, [{}]))


def test_dynamic_batch_becomes_a_copied_dim():
    text = HEADER + """
    g (float[N,3,4] x) => (float[N,12] y) {
      s = Shape(x)
      i0 = Constant <value = int64 {0}> ()
      n = Gather <axis = 0> (s, i0)
      ax = Constant <value = int64[1] {0}> ()
      n1 = Unsqueeze(n, ax)
      twelve = Constant <value = int64[1] {12}> ()
      t = Concat <axis = 0> (n1, twelve)
      y = Reshape(x, t)
    }"""
    graph, before = copy_graph(text)
    ctx = onnx_level_pipeline(graph)
    assert ctx.rewrites["fold_shape_chains"] == 1
    assert ops(graph) == ["Reshape"]
    assert _target(graph) == [0, 12]  # 0: copy the input's (dynamic) dim 0
    assert_same_results(before, graph, _feeds(before, [{"N": 1}, {"N": 2}, {"N": 5}]))


def test_static_dim_of_a_dynamic_shape_is_gathered_as_a_constant():
    text = HEADER + """
    g (float[N,3,H] x) => (float[N,3,H] y) {
      s = Shape(x)
      i1 = Constant <value = int64 {1}> ()
      c = Gather <axis = 0> (s, i1)
      cf = Cast <to = 1> (c)
      y = Div(x, cf)
    }"""
    graph, before = copy_graph(text)
    ctx = onnx_level_pipeline(graph)
    assert ctx.rewrites["fold_shape_chains"] == 1
    assert ops(graph) == ["Div"]
    assert graph.nodes[0].inputs[1].const.tolist() == 3.0
    assert_same_results(before, graph, _feeds(before, [{"N": 1, "H": 2}, {"N": 4, "H": 5}]))


@pytest.mark.parametrize(("start", "end", "expected"), [
    ("-1", "9223372036854775807", [8]),     # the last dim, static
    ("1", "3", [3, 8]),                     # a static run inside a dynamic shape
    ("-9223372036854775808", "-2", None),   # [N, 3]: N is dynamic, nothing folds
])
def test_slices_of_a_shape_fold_when_every_picked_dim_is_static(start, end, expected):
    text = HEADER + f"""
    g (float[N,3,8] x) => (int64[K] y) {{
      s = Shape(x)
      b = Constant <value = int64[1] {{{start}}}> ()
      e = Constant <value = int64[1] {{{end}}}> ()
      y = Slice(s, b, e)
    }}"""
    graph, before = copy_graph(text)
    ctx = apply(graph, fold_shape_chains, eliminate_dead)
    assert ctx.rewrites.get("fold_shape_chains", 0) == (expected is not None)
    if expected is not None:
        assert graph.outputs[0].const.tolist() == expected
    else:
        assert "Shape" in ops(graph)
    assert_same_results(before, graph, _feeds(before, [{"N": 2}, {"N": 7}]))


def test_size_and_shape_with_start_of_static_tensors():
    text = '<ir_version: 8, opset_import: ["" : 18]>\n' + """
    g (float[N,3,4] x, float[2,5] z) => (float[N,3,4] y, int64[2] tail) {
      n = Size(z)
      nf = Cast <to = 1> (n)
      y = Mul(x, nf)
      tail = Shape <start = 1> (x)
    }"""
    graph, before = copy_graph(text)
    ctx = onnx_level_pipeline(graph)
    assert ctx.rewrites["fold_shape_chains"] == 2
    assert sorted(ops(graph)) == ["Mul"]
    assert graph.outputs[1].const.tolist() == [3, 4]
    assert graph.nodes[0].inputs[1].const.tolist() == 10.0
    assert_same_results(before, graph, _feeds(before, [{"N": 1}, {"N": 3}]))


def test_dims_proven_equal_through_operators_are_copied():
    # y's dim 0 is x's: Relu keeps the shape, the Add broadcasts b's 1 against it
    text = HEADER + """
    g (float[N,3] x, float[1,3] b) => (float[N,3,1] y) {
      r = Relu(x)
      z = Add(r, b)
      s = Shape(x)
      zero = Constant <value = int64[1] {0}> ()
      one = Constant <value = int64[1] {1}> ()
      n = Slice(s, zero, one)
      tail = Constant <value = int64[2] {3, 1}> ()
      t = Concat <axis = 0> (n, tail)
      y = Reshape(z, t)
    }"""
    graph, before = copy_graph(text)
    ctx = onnx_level_pipeline(graph)
    assert ctx.rewrites["fold_shape_chains"] == 1
    assert _target(graph) == [0, 3, 1]
    assert_same_results(before, graph, _feeds(before, [{"N": 1}, {"N": 6}]))


def test_one_unknown_size_among_literal_sizes_becomes_minus_one():
    text = HEADER + """
    g (float[N,6] x) => (float[M,3] y) {
      s = Shape(x)
      i0 = Constant <value = int64[1] {0}> ()
      n = Gather <axis = 0> (s, i0)
      two = Constant <value = int64[1] {2}> ()
      m = Mul(n, two)
      three = Constant <value = int64[1] {3}> ()
      t = Concat <axis = 0> (m, three)
      y = Reshape(x, t)
    }"""
    graph, before = copy_graph(text)
    ctx = onnx_level_pipeline(graph)
    assert ctx.rewrites["fold_shape_chains"] == 1
    assert _target(graph) == [-1, 3]
    assert ops(graph) == ["Reshape"]
    assert_same_results(before, graph, _feeds(before, [{"N": 1}, {"N": 4}]))


def test_expand_to_its_own_shape_disappears():
    text = HEADER + """
    g (float[N,1,W] x) => (float[N,1,W] y) {
      s = Shape(x)
      e = Expand(x, s)
      y = Relu(e)
    }"""
    graph, before = copy_graph(text)
    ctx = onnx_level_pipeline(graph)
    assert ctx.rewrites["fold_shape_chains"] == 1  # target [1, 1, 1] ...
    assert ctx.rewrites["simplify_reshapes"] == 1  # ... which leaves x as it is
    assert ops(graph) == ["Relu"]
    assert_same_results(before, graph, _feeds(before, [{"N": 2, "W": 3}, {"N": 1, "W": 7}]))


def test_chains_inside_if_branches_fold():
    text = HEADER + """
    g (bool c, float[N,4] x) => (float[N,2,2] y) {
      y = If(c) <
        then_branch = t () => (float[N,2,2] a) {
          s = Shape(x)
          i0 = Constant <value = int64[1] {0}> ()
          n = Gather <axis = 0> (s, i0)
          rest = Constant <value = int64[2] {2, 2}> ()
          shape = Concat <axis = 0> (n, rest)
          a = Reshape(x, shape)
        },
        else_branch = e () => (float[N,2,2] b) {
          k = Constant <value = int64[3] {-1, 2, 2}> ()
          nx = Neg(x)
          b = Reshape(nx, k)
        }
      >
    }"""
    graph, before = copy_graph(text)
    ctx = onnx_level_pipeline(graph)
    assert ctx.rewrites["fold_shape_chains"] == 1
    assert _target(graph) == [0, 2, 2]
    feeds = [dict(random_feeds(before, {"N": n}, n), c=np.array(flag))
             for n, flag in [(1, True), (3, True), (2, False)]]
    assert_same_results(before, graph, feeds)


# ------------------------------------------------------------------------ refusals
def _unchanged(text):
    graph, _ = copy_graph(text)
    count = len(list(graph.walk_nodes()))
    ctx = apply(graph, fold_shape_chains)
    assert ctx.rewrites.get("fold_shape_chains", 0) == 0
    assert len(list(graph.walk_nodes())) == count
    return graph


def test_a_dynamic_dim_is_never_folded():
    graph = _unchanged(HEADER + """
    g (float[N,3] x) => (float[N,3] y) {
      s = Shape(x)
      i0 = Constant <value = int64 {0}> ()
      n = Gather <axis = 0> (s, i0)
      nf = Cast <to = 1> (n)
      y = Mul(x, nf)
    }""")
    assert "Shape" in ops(graph)


def test_equal_dim_names_of_different_inputs_prove_nothing():
    # both inputs declare "N", but nothing in the graph forces a and b to agree
    graph = _unchanged(HEADER + """
    g (float[N,3] a, float[N,3] b) => (float[N,3] y) {
      s = Shape(a)
      i0 = Constant <value = int64[1] {0}> ()
      n = Gather <axis = 0> (s, i0)
      rest = Constant <value = int64[1] {-1}> ()
      t = Concat <axis = 0> (n, rest)
      y = Reshape(b, t)
    }""")
    assert _target(graph) is None


def test_copied_dim_with_an_unknown_one_is_not_given_minus_one():
    # [N, 4, 16, A] from x: [N, 64, A]: [0, 4, 16, -1] would be ambiguous when N = 0
    graph, before = copy_graph(HEADER + """
    g (float[N,64,A] x) => (float[N,4,16,A] y) {
      s = Shape(x)
      i0 = Constant <value = int64[1] {0}> ()
      i2 = Constant <value = int64[1] {2}> ()
      n = Gather <axis = 0> (s, i0)
      a = Gather <axis = 0> (s, i2)
      mid = Constant <value = int64[2] {4, 16}> ()
      t = Concat <axis = 0> (n, mid, a)
      y = Reshape(x, t)
    }""")
    ctx = apply(graph, fold_shape_chains)
    assert ctx.rewrites.get("fold_shape_chains", 0) == 0
    assert _target(graph) is None
    assert_same_results(before, graph, _feeds(before, [{"N": 0, "A": 3}, {"N": 2, "A": 5}]))


def test_allowzero_reshape_keeps_a_dynamic_target():
    graph = _unchanged(HEADER.replace("17", "14") + """
    g (float[N,6] x) => (float[N,6] y) {
      s = Shape(x)
      i0 = Constant <value = int64[1] {0}> ()
      n = Gather <axis = 0> (s, i0)
      rest = Constant <value = int64[1] {-1}> ()
      t = Concat <axis = 0> (n, rest)
      y = Reshape <allowzero = 1> (x, t)
    }""")
    assert _target(graph) is None  # 0 would mean a literal 0 here, not "copy"


def test_loop_bodies_are_left_alone():
    # the body declares its carried value static; exporters may declare what is not so
    graph = _unchanged(HEADER + """
    g (int64 trips, bool cond, float[2] init) => (float[M] out) {
      out = Loop(trips, cond, init) <
        body = b (int64 i, bool c, float[2] v) => (bool c2, float[K] v2) {
          c2 = Identity(c)
          s = Shape(v)
          i0 = Constant <value = int64[1] {0}> ()
          n = Gather <axis = 0> (s, i0)
          nf = Cast <to = 1> (n)
          v2 = Mul(v, nf)
        }
      >
    }""")
    assert "Shape" in ops(graph)
