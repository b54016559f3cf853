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
