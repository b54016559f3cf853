"""The reference interpreter on an accelerator: shape arithmetic comes back on the host
(Shape makes CPU tensors), so an op meeting host and device tensors gets its data inputs
on the device, while inputs read as numbers stay put. The "meta" device stands in for a
GPU on machines without one; with CUDA, the same graph also runs end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.ir import Graph
from kiln.onnx import read_onnx
from kiln.ops.interpreter import _one_device, compile_graph


def test_mixed_inputs_move_to_the_device_and_host_inputs_stay():
    seen = []

    def op(data, other, shape):
        seen.append((data.device.type, other.device.type, shape.device.type))
        return data

    run = _one_device(op, torch.device("meta"), host_inputs={2})
    run(torch.ones(2, device="meta"), torch.ones(2), torch.tensor([2]))
    run(torch.ones(2), torch.ones(2), torch.tensor([2]))  # all on the host: left there
    assert seen == [("meta", "meta", "cpu"), ("cpu", "cpu", "cpu")]


def _shape_concat_model() -> Graph:
    """y = Concat(Shape(x), const) as floats, then added to a device tensor."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Concat", ["s", "c"], ["sc"], axis=0),
             helper.make_node("Cast", ["sc"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["f", "z"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
                     helper.make_tensor_value_info("z", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(np.array([7], np.int64), "c")])
    return read_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_shape_arithmetic_meets_device_tensors_on_cuda():
    program = compile_graph(_shape_concat_model(), "cuda")
    z = torch.tensor([0.5, 1.5, 2.5], device="cuda")
    out = program.run({"x": torch.ones(2, 3, device="cuda"), "z": z})
    y = out["y"] if isinstance(out, dict) else out[0]
    np.testing.assert_allclose(y.cpu().numpy(), [2.5, 4.5, 9.5])
