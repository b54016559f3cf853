"""Regressions: a branch that returns an enclosing graph's constant, and attention whose
additive bias is a scalar (both built, run, and compared with onnx's reference)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import kiln.backend
from tests.ops.reference import assert_close


def _run(model, feeds):
    expected = ReferenceEvaluator(model).run(None, feeds)
    got = kiln.backend.prepare(model).run(feeds)
    return list(got), list(expected)


def test_branch_returning_an_outer_constant() -> None:
    # then: Identity(outer constant) -> the body's output *is* the outer constant once
    # the Identity is removed; dead-code elimination and lowering must keep it
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3])])
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_branch,
                          else_branch=else_branch)],
        "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array([1.5, -2.0, 4.0], np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    x = np.random.default_rng(0).standard_normal(3).astype(np.float32)
    for cond in (True, False):
        assert_close(*_run(model, {"cond": np.array(cond), "x": x}))


def test_attention_pattern_with_a_scalar_bias() -> None:
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(np.float32) for _ in range(3))
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
         helper.make_node("MatMul", ["q", "kt"], ["s"]),
         helper.make_node("Add", ["s", "bias"], ["sb"]),
         helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
         helper.make_node("MatMul", ["p", "v"], ["y"])],
        "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 3, 4])
              for n in "qkv"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 4])],
        [numpy_helper.from_array(np.array(0.7, np.float32), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert_close(*_run(model, {"q": q, "k": k, "v": v}), rtol=1e-5, atol=1e-6)
