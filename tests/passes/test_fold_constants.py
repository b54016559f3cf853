"""fold_constants: nodes whose inputs are all constants are computed at build time."""

from __future__ import annotations

import numpy as np
import onnx.parser

from kiln.onnx import read_onnx
from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.fold_constants import fold_constants
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _feeds(graph, sizes):
    return [random_feeds(graph, dims, seed) for seed, dims in enumerate(sizes)]


def test_constant_subexpressions_fold_and_the_rest_stays():
    graph, before = copy_graph(HEADER + """
    g (float[N,4] x) => (float[N,4] y) {
      a = Constant <value = float[4] {1.0, 2.0, 3.0, 4.0}> ()
      b = Constant <value = float {0.5}> ()
      ab = Mul(a, b)
      c = Sqrt(ab)
      y = Add(x, c)
    }""")
    ctx = apply(graph, fold_constants, eliminate_dead)
    assert ctx.rewrites["fold_constants"] == 2  # Mul, then Sqrt of its result
    assert ops(graph) == ["Add"]
    np.testing.assert_allclose(graph.nodes[0].inputs[1].const,
                               np.sqrt(np.array([1, 2, 3, 4], np.float32) * 0.5), rtol=1e-6)
    assert list(graph.initializers) == [graph.nodes[0].inputs[1].name]
    assert_same_results(before, graph, _feeds(before, [{"N": 1}, {"N": 3}]))


def test_shape_generators_fold_and_graph_outputs_keep_their_names():
    graph, before = copy_graph(HEADER + """
    g (float[N,3] x) => (float[N,3] y, float[2,3] filled, int64[4] steps) {
      shape = Constant <value = int64[2] {2, 3}> ()
      filled = ConstantOfShape <value = float[1] {0.25}> (shape)
      start = Constant <value = int64 {1}> ()
      limit = Constant <value = int64 {9}> ()
      delta = Constant <value = int64 {2}> ()
      steps = Range(start, limit, delta)
      y = Relu(x)
    }""")
    ctx = apply(graph, fold_constants, eliminate_dead)
    assert ctx.rewrites["fold_constants"] == 2
    assert ops(graph) == ["Relu"]
    assert [v.name for v in graph.outputs] == ["y", "filled", "steps"]
    assert graph.outputs[2].const.tolist() == [1, 3, 5, 7]
    assert_same_results(before, graph, _feeds(before, [{"N": 2}]))


def test_constants_fold_inside_branches():
    graph, before = copy_graph(HEADER + """
    g (bool c, float[3] x) => (float[3] y) {
      y = If(c) <
        then_branch = t () => (float[3] a) {
          k = Constant <value = float[3] {1.0, 4.0, 9.0}> ()
          r = Sqrt(k)
          a = Mul(x, r)
        },
        else_branch = e () => (float[3] b) {
          b = Neg(x)
        }
      >
    }""")
    ctx = apply(graph, fold_constants, eliminate_dead)
    assert ctx.rewrites["fold_constants"] == 1
    assert sorted(ops(graph)) == ["If", "Mul", "Neg"]
    feeds = [dict(random_feeds(before, {}, seed), c=np.array(flag))
             for seed, flag in enumerate([True, False])]
    assert_same_results(before, graph, feeds)


# ------------------------------------------------------------------------ refusals
def test_random_ops_are_not_folded():
    # read without the op check: the refusal happens before kiln would need to run it
    graph = read_onnx(onnx.parser.parse_model(HEADER + """
    g (float[2] x) => (float[2] y) {
      r = RandomUniform <shape = [2], seed = 1.0> ()
      y = Add(x, r)
    }"""), check_ops=False)
    ctx = apply(graph, fold_constants)
    assert ctx.rewrites.get("fold_constants", 0) == 0
    assert ops(graph) == ["RandomUniform", "Add"]


def test_results_much_larger_than_their_inputs_are_not_materialized():
    graph, before = copy_graph(HEADER + """
    g (float[1] x) => (float[1024,1024] y, float[4,4] small) {
      one = Constant <value = float {1.0}> ()
      big = Constant <value = int64[2] {1024, 1024}> ()
      e = Expand(one, big)
      y = Add(e, x)
      four = Constant <value = int64[2] {4, 4}> ()
      small = Expand(one, four)
    }""")
    ctx = apply(graph, fold_constants, eliminate_dead)
    assert ctx.rewrites["fold_constants"] == 1  # only the 4x4 Expand (4 MiB stays lazy)
    assert ops(graph) == ["Expand", "Add"]
    assert_same_results(before, graph, _feeds(before, [{}]))


def test_a_node_that_fails_is_left_for_run_time_with_a_note():
    graph, _ = copy_graph(HEADER + """
    g (float[5] x) => (float[5] y) {
      k = Constant <value = float[6] {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}> ()
      shape = Constant <value = int64[1] {5}> ()
      r = Reshape(k, shape)
      y = Add(x, r)
    }""")
    ctx = apply(graph, fold_constants)
    assert ctx.rewrites.get("fold_constants", 0) == 0
    assert ops(graph) == ["Reshape", "Add"]
    assert len(ctx.log) == 1 and "(Reshape) not folded" in ctx.log[0]


def test_bfloat16_results_fold_into_typed_constants():
    graph, before = copy_graph(HEADER + """
    g (float[N,3] x) => (float[N,3] y) {
      k = Constant <value = float[3] {1.0, 0.333333, 1000.7}> ()
      kb = Cast <to = 16> (k)
      back = Cast <to = 1> (kb)
      y = Mul(x, back)
    }""")
    ctx = apply(graph, fold_constants, eliminate_dead)
    assert ctx.rewrites["fold_constants"] == 2
    assert ops(graph) == ["Mul"]
    # rounded through bfloat16 (8 bits of mantissa), as the model says
    assert graph.nodes[0].inputs[1].const.tolist() == [1.0, 0.333984375, 1000.0]
    assert_same_results(before, graph, _feeds(before, [{"N": 2}]))
