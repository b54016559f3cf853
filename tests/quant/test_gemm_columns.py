"""gemm_columns: the columns a chain of views and slices takes from a layer's output,
checked against ONNX Runtime running the chain on a tensor whose every element is its
column number."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.onnx import write_onnx
from kiln.quant.gemm_columns import path_to, reached_columns
from tests.graph_support import ort_run, parse

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def _ints(values) -> str:
    return ",".join(map(str, values))


def _graph(x_shape, y_shape, body: str):
    return parse(HEADER + f"""
    g (float[{_ints(x_shape)}] x) => (float[{_ints(y_shape)}] y) {{
    {body}
    }}""")


def _reached(graph) -> np.ndarray | None:
    leaf = graph.outputs[0]
    root, nodes = path_to(leaf)
    assert root is graph.inputs[0]
    return reached_columns(root, nodes, leaf)


def _expected(graph, x_shape) -> np.ndarray:
    """The columns the chain takes, by running it on column numbers."""
    numbers = np.broadcast_to(np.arange(x_shape[-1], dtype=np.float32), x_shape).copy()
    y = ort_run(write_onnx(graph), {"x": numbers})["y"]
    return np.unique(y).astype(np.int64)


@pytest.mark.parametrize("sizes", [(4, 4, 4), (3, 5, 8), (16, 8, 8, 2)])
def test_each_piece_of_a_split_of_the_last_axis(sizes):
    x = [2, 3, sum(sizes)]
    for index, size in enumerate(sizes):
        outs = ", ".join("y" if i == index else f"p{i}" for i in range(len(sizes)))
        graph = _graph(x, [2, 3, size], f"""
          split = Constant <value = int64[{len(sizes)}] {{{_ints(sizes)}}}> ()
          {outs} = Split <axis = -1> (x, split)""")
        np.testing.assert_array_equal(_reached(graph), _expected(graph, x))


@pytest.mark.parametrize("s, b, h, d", [(5, 2, 2, 4), (7, 3, 3, 8), (4, 1, 1, 16)])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_torch_multihead_attention_picks_q_k_and_v(s, b, h, d, which):
    """[S, B, 3E] -> [S, B, 3, E] -> [1, S, B, 3, E] -> [3, S, B, 1, E] -> [3, S, B, E]
    -> one of the three -> [S, B, H, D] -> [B, H, S, D], as the export writes it."""
    e = h * d
    x, y = [s, b, 3 * e], [b, h, s, d]
    graph = _graph(x, y, f"""
      packed = Constant <value = int64[4] {{{_ints([s, b, 3, e])}}}> ()
      zero = Constant <value = int64[1] {{0}}> ()
      three = Constant <value = int64[1] {{3}}> ()
      start = Constant <value = int64[1] {{{which}}}> ()
      stop = Constant <value = int64[1] {{{which + 1}}}> ()
      heads = Constant <value = int64[4] {{{_ints([s, b, h, d])}}}> ()
      a = Reshape(x, packed)
      u = Unsqueeze(a, zero)
      t = Transpose <perm = [3, 1, 2, 0, 4]> (u)
      q = Squeeze(t, three)
      one = Slice(q, start, stop, zero)
      r = Reshape(one, heads)
      y = Transpose <perm = [1, 2, 0, 3]> (r)""")
    reached = _reached(graph)
    np.testing.assert_array_equal(reached, _expected(graph, x))
    np.testing.assert_array_equal(reached, np.arange(which * e, (which + 1) * e))


@pytest.mark.parametrize("start, stop", [(-8, 1000), (2, 5), (0, -3)])
def test_slices_of_the_last_axis_clamp_like_onnx(start, stop):
    x = [3, 12]
    width = len(range(12)[slice(start, stop)])
    graph = _graph(x, [3, width], f"""
      starts = Constant <value = int64[1] {{{start}}}> ()
      ends = Constant <value = int64[1] {{{stop}}}> ()
      axes = Constant <value = int64[1] {{-1}}> ()
      y = Slice(x, starts, ends, axes)""")
    np.testing.assert_array_equal(_reached(graph), _expected(graph, x))


def test_a_symbolic_batch_changes_no_column():
    graph = parse(HEADER + """
    g (float[n, 6, 64] x) => (float[n, 2, 6, 16] y) {
      shape = Constant <value = int64[4] {0, 6, 4, 16}> ()
      starts = Constant <value = int64[1] {1}> ()
      ends = Constant <value = int64[1] {3}> ()
      axes = Constant <value = int64[1] {2}> ()
      r = Reshape(x, shape)
      s = Slice(r, starts, ends, axes)
      y = Transpose <perm = [0, 2, 1, 3]> (s)
    }""")
    np.testing.assert_array_equal(_reached(graph), np.arange(16, 48))
    np.testing.assert_array_equal(_reached(graph), _expected(graph, [2, 6, 64]))


@pytest.mark.parametrize("body, y", [
    # a transposed tensor merged: not a view, the probe would be copied
    ("""t = Transpose <perm = [1, 0]> (x)
        shape = Constant <value = int64[1] {48}> ()
        y = Reshape(t, shape)""", [48]),
    # every second column: a strided slice
    ("""starts = Constant <value = int64[1] {0}> ()
        ends = Constant <value = int64[1] {12}> ()
        axes = Constant <value = int64[1] {1}> ()
        steps = Constant <value = int64[1] {2}> ()
        y = Slice(x, starts, ends, axes, steps)""", [4, 6]),
])
def test_chains_that_are_not_plain_views_are_not_followed(body, y):
    graph = _graph([4, 12], y, body)
    assert _reached(graph) is None
