"""simplify_reshapes: reshape chains collapse, (Un)Squeeze pairs cancel, no-ops go."""

from __future__ import annotations

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.simplify_reshapes import simplify_reshapes
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _feeds(graph, sizes):
    return [random_feeds(graph, dims, seed) for seed, dims in enumerate(sizes)]


def _simplified(text, sizes, *, rewrites, left):
    graph, before = copy_graph(HEADER + text)
    ctx = apply(graph, simplify_reshapes, eliminate_dead)
    assert ctx.rewrites.get("simplify_reshapes", 0) == rewrites
    assert ops(graph) == left
    assert_same_results(before, graph, _feeds(before, sizes))
    return graph


def test_reshape_of_flatten_and_reshape_reads_the_original():
    graph = _simplified("""
    g (float[N,4,6] x) => (float[N,3,8] y) {
      f = Flatten <axis = 1> (x)
      a = Constant <value = int64[3] {-1, 8, 3}> ()
      r = Reshape(f, a)
      b = Constant <value = int64[3] {-1, 3, 8}> ()
      y = Reshape(r, b)
    }""", [{"N": 1}, {"N": 3}], rewrites=2, left=["Reshape"])
    assert graph.nodes[0].inputs[0] is graph.inputs[0]


def test_squeeze_unsqueeze_pairs_cancel():
    _simplified("""
    g (float[N,1,5] x) => (float[N,1,5] y, float[N,1,5] z) {
      ax = Constant <value = int64[1] {-2}> ()
      s = Squeeze(x, ax)
      y = Unsqueeze(s, ax)
      one = Constant <value = int64[2] {0, 3}> ()
      u = Unsqueeze(x, one)
      z = Squeeze(u, one)
    }""", [{"N": 2}, {"N": 4}], rewrites=2, left=["Identity", "Identity"])


def test_reshape_and_expand_that_keep_the_shape_go():
    _simplified("""
    g (float[N,3,4] x, float[2,3,4] s) => (float[N,3,4] y, float[2,3,4] z) {
      keep = Constant <value = int64[3] {0, 3, 4}> ()
      r = Reshape(x, keep)
      ones = Constant <value = int64[2] {1, 4}> ()
      e = Expand(r, ones)
      y = Relu(e)
      same = Constant <value = int64[3] {2, -1, 4}> ()
      t = Reshape(s, same)
      z = Neg(t)
    }""", [{"N": 1}, {"N": 5}], rewrites=3, left=["Relu", "Neg"])


def test_copying_target_is_not_merged():
    # the 0 copies dim 0 of the middle tensor (2), not of the input (N)
    _simplified("""
    g (float[N,4,6] x) => (float[A,B] y) {
      a = Constant <value = int64[3] {2, -1, 6}> ()
      r = Reshape(x, a)
      b = Constant <value = int64[2] {0, -1}> ()
      y = Reshape(r, b)
    }""", [{"N": 1}, {"N": 3}], rewrites=0, left=["Reshape", "Reshape"])


def test_squeeze_without_axes_and_different_axes_do_not_cancel():
    _simplified("""
    g (float[3,1,5] x) => (float[3,5,1] y, float[3,5] z) {
      a = Constant <value = int64[1] {1}> ()
      s = Squeeze(x, a)
      b = Constant <value = int64[1] {2}> ()
      y = Unsqueeze(s, b)
      u = Unsqueeze(x, a)
      z = Squeeze(u)
    }""", [{}], rewrites=0,
        left=["Squeeze", "Unsqueeze", "Unsqueeze", "Squeeze"])


def test_minus_one_beside_copied_dims_is_a_no_op():
    # [0, -1, 4] keeps x: [N, M, 4] (the -1 is M) for every N but 0, where the Reshape
    # itself fails (the -1 is undefined); SDPA exports write it after every attention
    _simplified("""
    g (float[N,M,4] x) => (float[N,M,4] y) {
      keep = Constant <value = int64[3] {0, -1, 4}> ()
      r = Reshape(x, keep)
      y = Neg(r)
    }""", [{"N": 2, "M": 3}, {"N": 1, "M": 5}], rewrites=1, left=["Neg"])


def test_minus_one_beside_an_unknown_dim_is_not_a_no_op():
    # [2, -1, 4] keeps x: [N, M, 4] only where N is 2
    _simplified("""
    g (float[N,M,4] x) => (float[2,M,4] y) {
      keep = Constant <value = int64[3] {2, -1, 4}> ()
      y = Reshape(x, keep)
    }""", [{"N": 2, "M": 3}], rewrites=0, left=["Reshape"])
