"""remove_identity: Identity, inference Dropout and same-type Cast are bypassed."""

from __future__ import annotations

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.remove_identity import remove_identity
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _feeds(graph):
    return [random_feeds(graph, {"N": n}, n) for n in (1, 3)]


def test_no_ops_are_bypassed_and_output_names_kept():
    graph, before = copy_graph(HEADER + """
    g (float[N,4] x) => (float[N,4] y) {
      a = Identity(x)
      b = Relu(a)
      c = Dropout(b)
      d = Cast <to = 1> (c)
      e = Neg(d)
      y = Identity(e)
    }""")
    ctx = apply(graph, remove_identity, eliminate_dead)
    assert ctx.rewrites["remove_identity"] == 4
    assert ops(graph) == ["Relu", "Neg"]
    assert graph.outputs[0].name == "y" and graph.outputs[0].producer.op_type == "Neg"
    assert_same_results(before, graph, _feeds(before))


def test_real_work_and_name_keepers_stay():
    graph, before = copy_graph(HEADER + """
    g (float[N,4] x) => (float[N,4] y, bool[N,4] mask, float[N,4] passed, double[N,4] z) {
      y, mask = Dropout(x)
      passed = Identity(x)
      z = Cast <to = 11> (x)
    }""")
    ctx = apply(graph, remove_identity)
    assert ctx.rewrites.get("remove_identity", 0) == 0
    # the mask is read, the Identity names an input as an output, the Cast converts
    assert ops(graph) == ["Dropout", "Identity", "Cast"]
    assert_same_results(before, graph, _feeds(before))
