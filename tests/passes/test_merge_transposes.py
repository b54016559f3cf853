"""merge_transposes: Transpose pairs compose, identity Transposes go."""

from __future__ import annotations

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.merge_transposes import merge_transposes
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _feeds(graph, sizes):
    return [random_feeds(graph, dims, seed) for seed, dims in enumerate(sizes)]


def test_transpose_pair_composes_into_one():
    graph, before = copy_graph(HEADER + """
    g (float[N,C,H,W] x) => (float[W,N,H,C] y) {
      t = Transpose <perm = [0, 2, 3, 1]> (x)
      y = Transpose <perm = [2, 0, 1, 3]> (t)
    }""")
    ctx = apply(graph, merge_transposes, eliminate_dead)
    assert ctx.rewrites["merge_transposes"] == 1
    assert ops(graph) == ["Transpose"]
    # y[i] = t[q[i]] = x[p[q[i]]]
    assert graph.nodes[0].attrs["perm"] == [3, 0, 2, 1]
    sizes = [{"N": 1, "C": 2, "H": 3, "W": 4}, {"N": 2, "C": 3, "H": 1, "W": 5}]
    assert_same_results(before, graph, _feeds(before, sizes))


def test_layout_round_trip_cancels_and_keeps_the_output_name():
    graph, before = copy_graph(HEADER + """
    g (float[N,H,W,C] x) => (float[N,H,W,C] y) {
      r = Relu(x)
      t = Transpose <perm = [0, 3, 1, 2]> (r)
      y = Transpose <perm = [0, 2, 3, 1]> (t)
    }""")
    ctx = apply(graph, merge_transposes, eliminate_dead)
    assert ctx.rewrites["merge_transposes"] == 1
    assert ops(graph) == ["Relu"]
    assert graph.outputs[0].name == "y"
    sizes = [{"N": 1, "H": 4, "W": 3, "C": 2}, {"N": 3, "H": 2, "W": 5, "C": 1}]
    assert_same_results(before, graph, _feeds(before, sizes))


def test_default_perm_reverses_the_known_rank():
    graph, before = copy_graph(HEADER + """
    g (float[A,B,C] x) => (float[A,B,C] y) {
      t = Transpose(x)
      y = Transpose <perm = [2, 1, 0]> (t)
    }""")
    ctx = apply(graph, merge_transposes, eliminate_dead)
    assert ctx.rewrites["merge_transposes"] == 1
    # y is the input itself: an Identity keeps the output's name
    assert ops(graph) == ["Identity"] and graph.outputs[0].name == "y"
    assert_same_results(before, graph, _feeds(before, [{"A": 2, "B": 3, "C": 4}]))


def test_unknown_rank_without_perm_is_left_alone():
    graph, _ = copy_graph(HEADER + """
    g (float[2,3] x) => (float[2,3] y) {
      t = Transpose(x)
      y = Transpose(t)
    }""")
    for value in (graph.inputs[0], *(n.output for n in graph.nodes)):
        value.shape = None  # as left where shape inference gave up
    ctx = apply(graph, merge_transposes)
    assert ctx.rewrites.get("merge_transposes", 0) == 0
    assert ops(graph) == ["Transpose", "Transpose"]
