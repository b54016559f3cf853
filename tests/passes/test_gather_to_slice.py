"""gather_to_slice: Gathers of activations at constant runs of indices become views."""

from __future__ import annotations

import pytest

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.gather_to_slice import gather_to_slice
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _model(indices: str, axis: int, out: str) -> str:
    return HEADER + f"""
    g (float[3,N,5] x) => ({out} y) {{
      i = Constant <value = {indices}> ()
      g = Gather <axis = {axis}> (x, i)
      y = Relu(g)
    }}"""


@pytest.mark.parametrize("indices, axis, out, expected", [
    ("int64 {1}", 0, "float[N,5]", ["Slice", "Squeeze", "Relu"]),          # MHA's q/k/v pick
    ("int64 {-1}", 2, "float[3,N]", ["Slice", "Squeeze", "Relu"]),
    ("int64[3] {1, 2, 3}", 2, "float[3,N,3]", ["Slice", "Relu"]),
    ("int64[2] {-2, -1}", 0, "float[2,N,5]", ["Slice", "Relu"]),
])
def test_runs_become_slices(indices, axis, out, expected):
    graph, before = copy_graph(_model(indices, axis, out))
    apply(graph, gather_to_slice, eliminate_dead)
    assert ops(graph) == expected
    assert_same_results(before, graph, [random_feeds(before, {"N": n}, n) for n in (1, 4)])


@pytest.mark.parametrize("indices, axis, out", [
    ("int64[2] {2, 1}", 0, "float[2,N,5]"),     # not ascending: a real gather
    ("int64[2] {0, 2}", 2, "float[3,N,2]"),     # a gap
    ("int64 {0}", 1, "float[3,5]"),             # a dynamic axis: range unknown
    ("int64[2] {-1, 0}", 0, "float[2,N,5]"),    # wraps around
])
def test_other_gathers_stay(indices, axis, out):
    graph, _ = copy_graph(_model(indices, axis, out))
    apply(graph, gather_to_slice)
    assert ops(graph) == ["Gather", "Relu"]


@pytest.mark.parametrize("x, indices, out, op, expected", [
    ("float[6,5]", "int64[2,3] {0, 1, 2, 3, 4, 5}", "float[2,3,5]", "Relu", ["Reshape", "Relu"]),
    ("float[6,5]", "int64[1,2] {2, 3}", "float[1,2,5]", "Relu", ["Slice", "Reshape", "Relu"]),
    # Hugging Face's padding mask: a flattened [B * S, 1] bool mask at a [B, 1, 1, S] table
    ("bool[8,1]", "int64[2,1,1,4] {0, 1, 2, 3, 4, 5, 6, 7}", "bool[2,1,1,4,1]", "Not",
     ["Reshape", "Not"]),
    ("float[3,5]", "int64[3] {0, 1, 2}", "float[3,5]", "Relu", ["Relu"]),  # the whole axis
])
def test_index_tables_become_reshapes(x, indices, out, op, expected):
    """A run of indices laid out as a table: a Slice (none for the whole axis) and a
    Reshape to the table's shape; boolean data too."""
    graph, before = copy_graph(HEADER + f"""
    g ({x} x) => ({out} y) {{
      i = Constant <value = {indices}> ()
      g = Gather <axis = 0> (x, i)
      y = {op}(g)
    }}""")
    apply(graph, gather_to_slice, eliminate_dead)
    assert ops(graph) == expected
    assert_same_results(before, graph, [random_feeds(before, {}, seed) for seed in (1, 2)])


def test_integer_tables_stay():
    """Integer Gathers are shape arithmetic, left to fold_shape_chains."""
    graph, _ = copy_graph(HEADER + """
    g (int64[4] x) => (int64[2,2] y) {
      i = Constant <value = int64[2,2] {0, 1, 2, 3}> ()
      y = Gather <axis = 0> (x, i)
    }""")
    apply(graph, gather_to_slice)
    assert ops(graph) == ["Gather"]
