"""eliminate_dead: nodes and constants nobody reads go; outputs and captured values stay."""

from __future__ import annotations

import numpy as np

from kiln.passes.eliminate_dead import eliminate_dead
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def test_dead_chains_and_unused_constants_go():
    graph, before = copy_graph(HEADER + """
    g (float[N,3] x) => (float[N,3] y) {
      unused = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
      d1 = Relu(x)
      d2 = Neg(d1)
      w = Constant <value = float[3] {0.5, 0.25, 2.0}> ()
      y = Mul(x, w)
    }""")
    ctx = apply(graph, eliminate_dead)
    assert ctx.rewrites["eliminate_dead"] == 3  # Neg, Relu and the unused constant
    assert ops(graph) == ["Mul"]
    assert list(graph.initializers) == ["w"]
    feeds = [random_feeds(before, {"N": n}, n) for n in (1, 4)]
    assert_same_results(before, graph, feeds)


def test_live_multi_output_nodes_and_graph_outputs_stay():
    graph, before = copy_graph(HEADER + """
    g (float[N,6] x) => (int64[N,2] idx, float[N,6] r) {
      k = Constant <value = int64[1] {2}> ()
      vals, idx = TopK(x, k)
      r = Relu(x)
    }""")
    ctx = apply(graph, eliminate_dead)
    assert ctx.rewrites.get("eliminate_dead", 0) == 0
    assert ops(graph) == ["TopK", "Relu"]
    feeds = [random_feeds(before, {"N": n}, n) for n in (2, 3)]
    assert_same_results(before, graph, feeds)


def test_dead_nodes_in_branches_go_and_captured_values_stay():
    graph, before = copy_graph(HEADER + """
    g (bool c, float[3] x) => (float[3] y) {
      outer = Sigmoid(x)
      y = If(c) <
        then_branch = t () => (float[3] a) {
          dead = Exp(x)
          a = Mul(outer, x)
        },
        else_branch = e () => (float[3] b) {
          b = Neg(x)
        }
      >
    }""")
    ctx = apply(graph, eliminate_dead)
    assert ctx.rewrites["eliminate_dead"] == 1  # the Exp; Sigmoid is read by the branch
    assert sorted(ops(graph)) == ["If", "Mul", "Neg", "Sigmoid"]
    feeds = [dict(random_feeds(before, {}, seed), c=np.array(flag))
             for seed, flag in enumerate([True, False])]
    assert_same_results(before, graph, feeds)
