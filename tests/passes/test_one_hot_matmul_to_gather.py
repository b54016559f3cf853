"""one_hot_matmul_to_gather: MatMul(Cast(Equal(x, c0 + arange(V))), W) becomes a Gather
of W's rows, computing the same (interpreter and ONNX Runtime) on fresh random indices
inside and outside the range."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.one_hot_matmul_to_gather import one_hot_matmul_to_gather
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _model(itype: str, table: list[int], n: int, ftype: str = "float", swap: bool = False,
           table_shape: str | None = None, x_shape: str = "B,L,1") -> str:
    v = len(table)
    rng = np.random.default_rng(v + n)
    weight = ", ".join(f"{w:.4f}" for w in rng.standard_normal(v * n))
    table_shape = table_shape or f"1,1,{v}"
    args = "c, x" if swap else "x, c"
    return HEADER + f"""
    g ({itype}[{x_shape}] x) => ({ftype}[B,L,{n}] y) {{
      c = Constant <value = {itype}[{table_shape}] {{{", ".join(map(str, table))}}}> ()
      w = Constant <value = {ftype}[{v},{n}] {{{weight}}}> ()
      h = Equal({args})
      f = Cast <to = {1 if ftype == "float" else 11}> (h)
      y = MatMul(f, w)
    }}"""


def _feeds(graph, sizes):
    return [random_feeds(graph, dims, seed) for seed, dims in enumerate(sizes)]


@pytest.mark.parametrize("itype, table, n, swap", [
    ("int32", [0, 1, 2, 3], 5, False),      # random indices in [-5, 5]: both sides outside
    ("int64", [-2, -1, 0, 1, 2, 3], 3, True),
    ("int32", [3], 2, False),
])
def test_one_hot_product_becomes_a_row_lookup(itype, table, n, swap):
    graph, before = copy_graph(_model(itype, table, n, swap=swap))
    ctx = apply(graph, one_hot_matmul_to_gather, eliminate_dead)
    assert ctx.rewrites["one_hot_matmul_to_gather"] == 1
    assert "MatMul" not in ops(graph) and "Equal" not in ops(graph)
    assert ops(graph)[-1] == "Gather"
    sizes = [{"B": 2, "L": 7}, {"B": 1, "L": 1}, {"B": 3, "L": 16}]
    assert_same_results(before, graph, _feeds(before, sizes), atol=0, rtol=0)


def test_double_weights_stay_exact():
    graph, before = copy_graph(_model("int64", [0, 1, 2], 4, ftype="double"))
    ctx = apply(graph, one_hot_matmul_to_gather, eliminate_dead)
    assert ctx.rewrites["one_hot_matmul_to_gather"] == 1
    assert_same_results(before, graph, _feeds(before, [{"B": 2, "L": 5}]), atol=0, rtol=0)


@pytest.mark.parametrize("table, table_shape, x_shape", [
    ([0, 2, 4], "1,1,3", "B,L,1"),   # not consecutive: not a one-hot of a range
    ([2, 1, 0], "1,1,3", "B,L,1"),   # descending
    ([0, 1, 2], "1,1,3", "B,L,3"),   # x compared element by element, no one-hot
])
def test_other_comparisons_are_left_alone(table, table_shape, x_shape):
    text = _model("int32", table, 2, table_shape=table_shape, x_shape=x_shape)
    graph, _ = copy_graph(text)
    ctx = apply(graph, one_hot_matmul_to_gather)
    assert "one_hot_matmul_to_gather" not in ctx.rewrites
    assert "MatMul" in ops(graph)


def test_one_hot_read_elsewhere_is_left_alone():
    graph, _ = copy_graph(HEADER + """
    g (int32[B,L,1] x) => (float[B,L,2] y, float[B,L,3] f) {
      c = Constant <value = int32[1,1,3] {0, 1, 2}> ()
      w = Constant <value = float[3,2] {1, 2, 3, 4, 5, 6}> ()
      h = Equal(x, c)
      f = Cast <to = 1> (h)
      y = MatMul(f, w)
    }""")
    ctx = apply(graph, one_hot_matmul_to_gather)
    assert "one_hot_matmul_to_gather" not in ctx.rewrites
