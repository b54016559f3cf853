"""GELU as other exporters spell it: the cube as a product of three x (jax2tf), Pow(x, 2)
times x, and the tail as x * ((1 + tanh) * 0.5); each becomes one kiln.Gelu with the
outputs of ONNX Runtime on the original graph, and a formula whose intermediate is used
elsewhere stays as it is."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.onnx import read_onnx
from kiln.ops.interpreter import run_graph
from kiln.passes import PassContext, run_pipeline
from tests.ops._kiln_vs_ort import model, tensor

CONSTS = {"c": 0.044715, "k": math.sqrt(2 / math.pi), "one": 1.0, "half": 0.5, "two": 2.0,
          "rt2": math.sqrt(2.0)}


def _cube(form: str) -> list:
    if form == "products":  # x * (x * (c * x))
        return [helper.make_node("Mul", ["c", "x"], ["p0"]),
                helper.make_node("Mul", ["x", "p0"], ["p1"]),
                helper.make_node("Mul", ["x", "p1"], ["cube"])]
    return [helper.make_node("Pow", ["x", "two"], ["sq"]),  # (x^2 * x) * c
            helper.make_node("Mul", ["sq", "x"], ["p1"]),
            helper.make_node("Mul", ["p1", "c"], ["cube"])]


def _tail(start: str) -> list:
    return [helper.make_node("Add", ["one", start], ["s"]),
            helper.make_node("Mul", ["s", "half"], ["h"]),
            helper.make_node("Mul", ["x", "h"], ["y"])]


def _graph(nodes: list, shape: list, extra_output: str | None = None):
    outputs = [tensor("y", TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(tensor(extra_output, TensorProto.FLOAT, None))
    proto = model(nodes, [tensor("x", TensorProto.FLOAT, shape)], outputs, opset=17)
    proto.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), k)
                                   for k, v in CONSTS.items())
    return proto


def _tanh_gelu(cube: str, extra_output: str | None = None):
    nodes = [*_cube(cube), helper.make_node("Add", ["x", "cube"], ["inner"]),
             helper.make_node("Mul", ["inner", "k"], ["arg"]),
             helper.make_node("Tanh", ["arg"], ["t"]), *_tail("t")]
    return _graph(nodes, ["n", 16], extra_output)


def _check(proto, approximate: str) -> None:
    graph = read_onnx(proto.SerializeToString())
    run_pipeline(graph, PassContext())
    gelus = [n for n in graph.walk_nodes() if n.op_type == "Gelu"]
    assert len(gelus) == 1 and gelus[0].attrs.get("approximate") == approximate, Counter(
        n.op_type for n in graph.walk_nodes())
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for rows in (3, 9):
        x = (rng.standard_normal((rows, 16)) * 3).astype(np.float32)
        np.testing.assert_allclose(run_graph(graph, {"x": x})["y"],
                                   session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cube", ["products", "pow_square"])
def test_tanh_forms_become_one_gelu(cube):
    _check(_tanh_gelu(cube), "tanh")


def test_erf_form_with_the_half_before_x():
    nodes = [helper.make_node("Div", ["x", "rt2"], ["d"]),
             helper.make_node("Erf", ["d"], ["e"]), *_tail("e")]
    _check(_graph(nodes, ["n", 16]), "none")


def test_a_cube_used_elsewhere_keeps_the_formula():
    graph = read_onnx(_tanh_gelu("products", extra_output="p1").SerializeToString())
    run_pipeline(graph, PassContext())
    assert not any(n.op_type == "Gelu" for n in graph.walk_nodes())
