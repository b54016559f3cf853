"""late_broadcast and attention_mask_unexpanded: masks stay rows until a reader needs them
whole, checked against the graph before (the interpreter and ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.passes import PassContext, run_pipeline
from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.late_broadcast import late_broadcast
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


@pytest.mark.parametrize("op, table, expected", [
    ("And", "1", ["Not", "Where", "Expand"]),
    ("Or", "0", ["Not", "Where", "Expand"]),
    ("And", "0", ["Not", "And", "Where"]),   # not the identity: stays
])
def test_identity_operand_becomes_a_late_expand(op, table, expected):
    """And(x, all true) and Or(x, all false) broadcast x: an Expand, which then moves
    below the Where, so the Where computes B x S values instead of B x S x S."""
    values = ", ".join([table] * 4)
    graph, before = copy_graph(HEADER + f"""
    g (bool[3,1,1,4] m) => (float[3,1,4,4] y) {{
      t = Constant <value = bool[1,1,4,1] {{{values}}}> ()
      zero = Constant <value = float[1] {{0.0}}> ()
      low = Constant <value = float[1] {{-10000.0}}> ()
      n = Not(m)
      a = {op}(t, n)
      y = Where(a, zero, low)
    }}""")
    apply(graph, late_broadcast, late_broadcast, eliminate_dead)
    assert ops(graph) == expected
    assert_same_results(before, graph, [random_feeds(before, {}, seed) for seed in (3, 4)])


def test_same_shape_identity_is_dropped():
    graph, before = copy_graph(HEADER + """
    g (bool[2,5] m) => (bool[2,5] y) {
      t = Constant <value = bool[1,5] {1, 1, 1, 1, 1}> ()
      a = And(m, t)
      y = Not(a)
    }""")
    apply(graph, late_broadcast, eliminate_dead)
    assert ops(graph) == ["Not"]
    assert_same_results(before, graph, [random_feeds(before, {}, 5)])


def test_attention_reads_the_padding_mask_as_rows():
    """Hugging Face's padding mask, end to end through the pipeline: the flattened mask
    gathered at a [B, 1, 1, S] table, And-ed with an all-true table, made additive by a
    Where, added to the scores: the fused Attention takes a [B, 1, 1, S] mask (one row a
    sequence) and the graph still matches ONNX Runtime."""
    b, h, s, d = 2, 3, 5, 4
    table = ", ".join(str(i) for i in range(b * s))
    graph, before = copy_graph(HEADER + f"""
    g (float[{b},{h},{s},{d}] q, float[{b},{h},{s},{d}] k, float[{b},{h},{s},{d}] v,
       int64[{b},{s}] mask) => (float[{b},{h},{s},{d}] y) {{
      idx = Constant <value = int64[{b},1,1,{s}] {{{table}}}> ()
      t = Constant <value = bool[1,1,{s},1] {{{", ".join(["1"] * s)}}}> ()
      zero = Constant <value = float[1] {{0.0}}> ()
      low = Constant <value = float[1] {{-3.4e38}}> ()
      scale = Constant <value = float {{0.5}}> ()
      m = Cast <to = 9> (mask)
      f = Flatten <axis = 2> (m)
      gm = Gather <axis = 0> (f, idx)
      shape = Constant <value = int64[4] {{{b}, 1, 1, {s}}}> ()
      r = Reshape(gm, shape)
      a = And(t, r)
      bias = Where(a, zero, low)
      kt = Transpose <perm = [0, 1, 3, 2]> (k)
      qk = MatMul(q, kt)
      scaled = Mul(qk, scale)
      scores = Add(scaled, bias)
      p = Softmax <axis = -1> (scores)
      y = MatMul(p, v)
    }}""")
    run_pipeline(graph, PassContext())
    graph.lint()
    attention = next(n for n in graph.nodes if n.op_type == "Attention")
    assert tuple(attention.inputs[3].shape) == (b, 1, 1, s)
    assert not {"Gather", "And", "Expand"} & set(ops(graph))
    rng = np.random.default_rng(6)
    feeds = []
    for seed in (7, 8):
        feed = random_feeds(before, {}, seed)
        feed["mask"] = (rng.random((b, s)) < 0.7).astype(np.int64)
        feed["mask"][:, 0] = 1  # a row with every key masked is NaN in both
        feeds.append(feed)
    from kiln.ops.interpreter import run_graph

    for feed in feeds:
        np.testing.assert_allclose(run_graph(graph, feed)["y"], run_graph(before, feed)["y"],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ids, gathered", [
    ("0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0", (1, 1)),   # token types: all zeros
    ("0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3", (1, 4)),   # positions, repeated per row
    ("0, 1, 2, 3, 1, 2, 3, 0, 2, 3, 0, 1", (3, 4)),   # rows differ: a real gather
])
def test_repeated_rows_of_a_constant_table_fold_to_one_broadcast_row(ids, gathered):
    """A constant table gathered at constant ids that repeat along the batch is one row
    broadcast: the gather at one row folds, and the Add broadcasts it without an Expand."""
    rng = np.random.default_rng(9)
    values = ", ".join(f"{v:.4f}" for v in rng.standard_normal(4 * 5))
    graph, before = copy_graph(HEADER + f"""
    g (float[3,4,5] x) => (float[3,4,5] y) {{
      table = Constant <value = float[4,5] {{{values}}}> ()
      ids = Constant <value = int64[3,4] {{{ids}}}> ()
      rows = Gather <axis = 0> (table, ids)
      y = Add(x, rows)
    }}""")
    from kiln.passes.fold_constants import fold_constants

    apply(graph, late_broadcast)
    gather = next(n for n in graph.nodes if n.op_type == "Gather")
    assert gather.inputs[1].const.shape == gathered
    apply(graph, fold_constants, late_broadcast, eliminate_dead)
    assert ops(graph) == ["Add"]
    if gathered != (3, 4):
        assert graph.nodes[0].inputs[1].const.shape == (1, *gathered[1:], 5)
    assert_same_results(before, graph, [random_feeds(before, {}, seed) for seed in (10, 11)])
