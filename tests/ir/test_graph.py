"""The Graph editing API: edges stay consistent, names survive, errors say how to repair."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from kiln.ir import DType, Graph, Node, Value, captured_values
from kiln.ops.interpreter import run_graph
from tests.graph_support import parse


class Chain(NamedTuple):
    g: Graph
    x: Value
    relu: Node
    neg: Node


def _chain() -> Chain:
    """x -> Relu -> Neg -> (neg)"""
    g = Graph(opsets={"": 17})
    x = g.add_input("x", DType.FLOAT, ("N", 3))
    relu = g.add_node("Relu", [x])
    neg = g.add_node("Neg", [relu.output], name="neg")
    g.outputs.append(neg.output)
    return Chain(g, x, relu, neg)


def _run(g: Graph, seed: int = 0, n: int = 2) -> tuple[np.ndarray, dict]:
    x = np.random.default_rng(seed).standard_normal((n, 3)).astype(np.float32)
    return x, run_graph(g, {"x": x})


def test_set_input_moves_the_consumer_between_values():
    _, x, relu, neg = _chain()
    assert relu.output.consumers == [neg] and x.consumers == [relu]
    neg.set_input(0, x)
    assert relu.output.consumers == [] and x.consumers == [relu, neg]
    neg.set_input(0, None)
    assert x.consumers == [relu] and neg.inputs == (None,)
    neg.set_inputs([relu.output, relu.output])
    assert relu.output.consumers == [neg, neg]
    neg.detach_inputs()
    assert relu.output.consumers == [] and neg.inputs == ()


def test_set_outputs_hands_over_the_producer():
    neg = _chain().neg
    old = neg.output
    new = Value("fresh", DType.FLOAT)
    neg.set_outputs([new])
    assert new.producer is neg and old.producer is None


def test_replace_all_uses_keeps_the_output_name():
    g, x, relu, neg = _chain()
    data, expected = _run(g, seed=1, n=4)
    sig = g.add_node("Sigmoid", [x], name="sig")
    neg2 = g.add_node("Neg", [g.add_node("Relu", [sig.output]).output])
    g.replace_all_uses(neg.output, neg2.output)
    g.remove_node(neg)
    g.remove_node(relu)
    assert [v.name for v in g.outputs] == ["neg"]  # the new value took the name
    assert g.outputs[0] is neg2.output
    g.lint()
    got = run_graph(g, {"x": data})["neg"]
    np.testing.assert_allclose(got, -np.maximum(1 / (1 + np.exp(-data)), 0), rtol=1e-6)
    assert got.shape == expected["neg"].shape


def test_replace_by_a_graph_input_keeps_the_name_with_an_identity():
    g, x, _, neg = _chain()
    g.replace_all_uses(neg.output, x)
    g.remove_node(neg)
    assert g.outputs[0].name == "neg" and g.outputs[0].producer.op_type == "Identity"
    assert g.inputs[0] is x and x.name == "x"
    g.lint()
    data, _ = _run(g)
    np.testing.assert_array_equal(run_graph(g, {"x": data})["neg"], data)


def test_replace_by_a_constant_renames_the_initializer():
    g, _, _, neg = _chain()
    const = g.constant(np.ones((2, 3), np.float32), name="ones")
    g.replace_all_uses(neg.output, const)
    g.remove_node(neg)
    assert g.outputs[0] is const and const.name == "neg"
    assert g.initializers["neg"] is const and "ones" not in g.initializers
    assert neg.output.name != "neg"  # the old value gave its name up


def test_remove_node_refuses_while_its_output_is_used():
    g, _, relu, neg = _chain()
    with pytest.raises(ValueError, match=r"cannot remove node relu_?\w*: its output .* is still "
                                         r"used by neg; call replace_all_uses\(\) first"):
        g.remove_node(relu)
    with pytest.raises(ValueError, match="still used by the graph outputs"):
        g.remove_node(neg)
    assert relu in g.nodes and neg in g.nodes


def test_toposort_is_stable_and_reports_cycles():
    g, x, relu, neg = _chain()
    other = g.add_node("Abs", [x], name="abs")
    g.nodes = [neg, other, relu]
    g.toposort()
    assert g.nodes == [other, relu, neg]  # abs was ready first, relu before its reader
    relu.set_input(0, neg.output)
    with pytest.raises(ValueError, match=r"graph main has a cycle through (relu|neg)"):
        g.toposort()


def test_lint_explains_each_broken_invariant():
    g, x, relu, neg = _chain()
    g.lint()
    g.nodes = [neg, relu]
    with pytest.raises(ValueError, match=r"node neg reads %relu\w* before it is defined; "
                                         r"call toposort\(\)"):
        g.lint()
    g.toposort()
    neg._inputs[0] = x  # an edit that bypasses set_input
    with pytest.raises(ValueError, match=r"%x does not list neg as a consumer; change inputs "
                                         r"with Node.set_input\(\)"):
        g.lint()
    neg._inputs[0] = relu.output
    stray = Node("Abs", [x], [Value("stray")], name="stray")
    g.nodes.append(stray)
    with pytest.raises(ValueError, match=r"node stray is listed in main but its .graph "
                                         r"points elsewhere; insert nodes with Graph.insert\(\)"):
        g.lint()
    g.nodes.remove(stray)
    stray.detach_inputs()
    relu.output.producer = neg
    with pytest.raises(ValueError, match=r"is an output of relu\w* but names another producer"):
        g.lint()
    relu.output.producer = relu
    g.outputs.append(Value("ghost"))
    with pytest.raises(ValueError, match="graph output %ghost is produced by no node"):
        g.lint()


def test_fresh_names_are_unique_across_the_graph_tree():
    g = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[3] x) => (float[3] y) {
      y = If(c) <
        then_branch = t () => (float[3] a) { a = Relu(x) },
        else_branch = e () => (float[3] b) { b = Neg(x) }
      >
    }""")
    branch = g.nodes[0].attrs["then_branch"]
    assert branch.fresh_name("a") != "a" and g.fresh_name("b") != "b"
    assert g.fresh_name("new") == "new" and branch.fresh_name("new") != "new"
    assert g.fresh_node_name("n") == "n" and branch.fresh_node_name("n") != "n"


def test_subgraph_reads_are_consumers_and_captured_values():
    g = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[3] x) => (float[3] y) {
      s = Sigmoid(x)
      y = If(c) <
        then_branch = t () => (float[3] a) { a = Mul(s, x) },
        else_branch = e () => (float[3] b) { k = Constant <value = float {2.0}> ()
                                            b = Mul(x, k) }
      >
    }""")
    sig, if_node = g.nodes
    then_branch, else_branch = if_node.attrs["then_branch"], if_node.attrs["else_branch"]
    assert then_branch.parent is g
    inner_mul = then_branch.nodes[0]
    assert inner_mul in sig.output.consumers  # outer passes see the inner use
    assert [v.name for v in captured_values(then_branch)] == ["s", "x"]
    assert [v.name for v in captured_values(else_branch)] == ["x"]  # k is its own
    g.nodes = [if_node, sig]
    g.toposort()  # the If reads s through its branch, so Sigmoid goes first
    assert g.nodes == [sig, if_node]
    g.lint()
    with pytest.raises(ValueError, match="cannot remove node"):
        g.remove_node(sig)


def test_value_shape_helpers():
    v = Value("v", DType.FLOAT, (2, "N", None))
    assert v.rank == 3 and v.static_shape is None and v.type_str() == "fp32[2,N,?]"
    c = Value("c", const=np.zeros((2, 3), np.int64))
    assert c.is_const and c.dtype is DType.INT64 and c.static_shape == (2, 3)
    assert Value("u").type_str() == "?[?]" and Value("u").rank is None
