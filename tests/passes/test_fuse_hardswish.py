"""Hard-swish spelled out (x * relu6(x + 3) / 6 and its variants, x * HardSigmoid(x)) is
fused into one node and then into the convolution before it, with the same outputs as
ONNX Runtime on the original graph; chains whose intermediates are used elsewhere stay."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.onnx import read_onnx
from kiln.ops.interpreter import run_graph
from kiln.passes import PassContext, run_pipeline
from tests.ops._kiln_vs_ort import model, run_kiln, tensor


def _const(name: str, value: float) -> helper.TensorProto:
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _spelled(form: str, x: str, y: str, clip_opset: int) -> tuple[list, list]:
    """Nodes computing y = hard-swish(x) as `form`, and the constants they read."""
    consts = [_const("three", 3.0), _const("six", 6.0), _const("sixth", 1 / 6),
              _const("zero", 0.0)]
    if clip_opset >= 11:
        clip = helper.make_node("Clip", ["a", "zero", "six"], ["c"])
    else:
        clip = helper.make_node("Clip", ["a"], ["c"], min=0.0, max=6.0)
    add = helper.make_node("Add", [x, "three"], ["a"])
    if form == "mul_then_div":
        tail = [helper.make_node("Mul", [x, "c"], ["m"]),
                helper.make_node("Div", ["m", "six"], [y])]
    elif form == "sixth_then_mul":
        tail = [helper.make_node("Mul", ["c", "sixth"], ["d"]),
                helper.make_node("Mul", ["d", x], [y])]
    else:  # HardSigmoid
        return [helper.make_node("HardSigmoid", [x], ["h"], alpha=1 / 6, beta=0.5),
                helper.make_node("Mul", [x, "h"], [y])], []
    return [add, clip, *tail], consts


def _conv_then_hardswish(form: str, opset: int, extra_use: bool = False):
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "w")
    nodes, consts = _spelled(form, "x1", "y", opset)
    nodes = [helper.make_node("Conv", ["x", "w"], ["x1"], pads=[1, 1, 1, 1]), *nodes]
    outputs = [tensor("y", TensorProto.FLOAT, None)]
    if extra_use:  # the clipped value also leaves the graph
        outputs.append(tensor("c", TensorProto.FLOAT, None))
    proto = model(nodes, [tensor("x", TensorProto.FLOAT, ["n", 4, "h", "w"])], outputs,
                  opset=opset)
    proto.graph.initializer.extend([w, *consts])
    return proto


@pytest.mark.parametrize("opset", [10, 13])
@pytest.mark.parametrize("form", ["mul_then_div", "sixth_then_mul", "hard_sigmoid"])
def test_fused_into_the_convolution_with_onnx_runtime_outputs(form, opset):
    proto = _conv_then_hardswish(form, opset)
    graph = read_onnx(proto.SerializeToString())
    run_pipeline(graph, PassContext())
    counts = Counter(n.op_type for n in graph.walk_nodes())
    assert counts == Counter({"FusedConv": 1}), counts
    conv = next(n for n in graph.nodes if n.op_type == "FusedConv")
    assert conv.attrs.get("activation") == "HardSwish"
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(opset)
    for shape in ((1, 4, 7, 9), (2, 4, 5, 5)):
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        want = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(run_graph(graph, {"x": x})["y"], want, rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(run_kiln(proto, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_a_chain_with_an_intermediate_used_elsewhere_stays():
    graph = read_onnx(_conv_then_hardswish("mul_then_div", 13, extra_use=True)
                      .SerializeToString())
    run_pipeline(graph, PassContext())
    assert not any(n.op_type == "HardSwish" for n in graph.walk_nodes())


def test_a_lone_hardswish_runs_in_an_old_opset_graph():
    nodes, consts = _spelled("mul_then_div", "x", "y", 10)
    proto = model(nodes, [tensor("x", TensorProto.FLOAT, [3, 8])],
                  [tensor("y", TensorProto.FLOAT, None)], opset=10)
    proto.graph.initializer.extend(consts)
    graph = read_onnx(proto.SerializeToString())
    run_pipeline(graph, PassContext())
    assert [n.op_type for n in graph.walk_nodes()] == ["HardSwish"]
    x = (np.random.default_rng(0).standard_normal((3, 8)) * 4).astype(np.float32)
    want = x * np.clip(x + 3, 0, 6) / 6
    np.testing.assert_allclose(run_kiln(proto, {"x": x})[0], want, rtol=1e-6, atol=1e-6)
