"""reduce_over_stack: ReduceMax/Min/Sum/Mean over the axis a Concat of one-wide slices
stacked becomes Max/Min/Sum/Mean of the slices, computing the same (interpreter and ONNX
Runtime) on fresh random inputs of several shapes; other reductions are left alone."""

from __future__ import annotations

import pytest

from kiln.passes.eliminate_dead import eliminate_dead
from kiln.passes.reduce_over_stack import reduce_over_stack
from tests.graph_support import apply, assert_same_results, copy_graph, ops, random_feeds


def _stack_model(reduce: str, opset: int, axis: int, keepdims: int, dtype: str = "float",
                 n: int = 3) -> str:
    """n inputs [B, L, 4] unsqueezed at `axis` (of rank 4), concatenated, reduced."""
    ins = ", ".join(f"{dtype}[B,L,4] x{i}" for i in range(n))
    axes_input = opset >= 13
    lines = [f"  ax = Constant <value = int64[1] {{{axis}}}> ()"]
    for i in range(n):
        lines.append(f"  u{i} = Unsqueeze(x{i}, ax)" if axes_input else
                     f"  u{i} = Unsqueeze <axes = [{axis}]> (x{i})")
    lines.append(f"  s = Concat <axis = {axis}> ({', '.join(f'u{i}' for i in range(n))})")
    reduce_axes_input = opset >= 18 or (reduce == "ReduceSum" and opset >= 13)
    if reduce_axes_input:
        lines.append(f"  y = {reduce} <keepdims = {keepdims}> (s, ax)")
    else:
        lines.append(f"  y = {reduce} <axes = [{axis}], keepdims = {keepdims}> (s)")
    return (f'<ir_version: 8, opset_import: ["" : {opset}]>\n'
            f"g ({ins}) => ({dtype}[] y) {{\n" + "\n".join(lines) + "\n}")


SIZES = [{"B": 2, "L": 5}, {"B": 1, "L": 1}, {"B": 3, "L": 9}]


@pytest.mark.parametrize("reduce, opset, axis, keepdims, dtype", [
    ("ReduceMax", 13, -1, 0, "float"),     # torch.stack(..., -1).max(-1)
    ("ReduceMin", 18, 1, 0, "float"),      # axes as an input (opset 18)
    ("ReduceSum", 13, 0, 1, "float"),      # keepdims: the Unsqueezes stay
    ("ReduceMean", 11, 2, 0, "float"),     # axes as attributes everywhere (opset 11)
    ("ReduceMax", 12, 0, 0, "double"),
    ("ReduceMax", 13, -2, 0, "int32"),     # integer Max (opset 12 on)
])
def test_reduction_over_a_stack_becomes_elementwise(reduce, opset, axis, keepdims, dtype):
    graph, before = copy_graph(_stack_model(reduce, opset, axis, keepdims, dtype))
    ctx = apply(graph, reduce_over_stack, eliminate_dead)
    assert ctx.rewrites["reduce_over_stack"] == 1
    assert "Concat" not in ops(graph) and reduce not in ops(graph)
    assert reduce[len("Reduce"):] in ops(graph)
    if not keepdims:
        assert "Unsqueeze" not in ops(graph)
    feeds = [random_feeds(before, dims, seed) for seed, dims in enumerate(SIZES)]
    assert_same_results(before, graph, feeds, atol=1e-6, rtol=1e-6)


def test_slices_that_are_not_unsqueezed_are_squeezed_after():
    text = """<ir_version: 8, opset_import: ["" : 13]>
    g (float[B,6] x) => (float[B] y) {
      s0 = Constant <value = int64[1] {0}> ()
      s1 = Constant <value = int64[1] {1}> ()
      s2 = Constant <value = int64[1] {2}> ()
      one = Constant <value = int64[1] {1}> ()
      a = Slice(x, s0, s1, one)
      b = Slice(x, s1, s2, one)
      s = Concat <axis = 1> (a, b)
      y = ReduceMax <axes = [1], keepdims = 0> (s)
    }"""
    graph, before = copy_graph(text)
    ctx = apply(graph, reduce_over_stack, eliminate_dead)
    assert ctx.rewrites["reduce_over_stack"] == 1
    assert "Squeeze" in ops(graph) and "Max" in ops(graph)
    feeds = [random_feeds(before, {"B": b}, b) for b in (1, 4)]
    assert_same_results(before, graph, feeds, atol=0, rtol=0)


@pytest.mark.parametrize("change", ["other_axis", "two_wide", "stack_read_elsewhere",
                                    "two_axes"])
def test_other_reductions_are_left_alone(change):
    concat_axis, width, reduce_axes, outputs = 1, 1, "[1]", "float[] y"
    if change == "other_axis":
        concat_axis = 2
    elif change == "two_wide":
        width = 2
    elif change == "two_axes":
        reduce_axes = "[1, 2]"
    if change == "stack_read_elsewhere":
        outputs += ", float[] s"
    text = f"""<ir_version: 8, opset_import: ["" : 13]>
    g (float[2,{width},4] a, float[2,{width},4] b) => ({outputs}) {{
      s = Concat <axis = {concat_axis}> (a, b)
      y = ReduceMax <axes = {reduce_axes}, keepdims = 0> (s)
    }}"""
    graph, _ = copy_graph(text)
    ctx = apply(graph, reduce_over_stack)
    assert "reduce_over_stack" not in ctx.rewrites
    assert "Concat" in ops(graph) and "ReduceMax" in ops(graph)
