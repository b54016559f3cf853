"""PRelu's per-channel fast path (F.prelu) and the general broadcast, and Softmax /
LogSoftmax over a Transpose's view (run where the data lies), against ONNX Runtime on
fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.ops.activation import _per_channel
from tests.ops._kiln_vs_ort import assert_same, model, run_kiln, run_ort, tensor

SLOPES = [  # (input shape, slope shape, takes the per-channel path)
    ((2, 5, 7, 6), (5, 1, 1), True),
    ((2, 5, 7, 6), (1, 5, 1, 1), True),
    ((2, 5, 7, 6), (1,), True),
    ((3, 4), (4,), True),  # rank 2: the last axis is the channel axis
    ((2, 4, 9), (4, 1), True),
    ((2, 5, 7, 6), (7, 6), False),
    ((2, 5, 7, 6), (5, 7, 1), False),
    ((2, 1, 7, 6), (1, 1, 1), True),
]


@pytest.mark.parametrize("case", SLOPES, ids=str)
def test_prelu_matches_onnx_runtime(case):
    shape, slope_shape, _ = case
    rng = np.random.default_rng(len(shape) * 10 + len(slope_shape))
    slope = rng.uniform(-0.5, 0.5, slope_shape).astype(np.float32)
    node = helper.make_node("PRelu", ["x", "slope"], ["y"])
    proto = model([node], [tensor("x", TensorProto.FLOAT, list(shape))],
                  [tensor("y", TensorProto.FLOAT, None)])
    proto.graph.initializer.append(numpy_helper.from_array(slope, "slope"))
    x = rng.standard_normal(shape).astype(np.float32)
    assert_same(run_kiln(proto, {"x": x})[0], run_ort(proto, {"x": x})[0])


@pytest.mark.parametrize("case", SLOPES, ids=str)
def test_per_channel_path_is_taken_only_where_it_is_the_same(case):
    shape, slope_shape, fast = case
    x, slope = torch.randn(shape), torch.rand(slope_shape)
    weight = _per_channel(x, slope)
    assert (weight is not None) == fast
    if weight is not None:
        expected = torch.where(x < 0, x * slope, x)
        torch.testing.assert_close(torch.nn.functional.prelu(x, weight), expected)


def test_prelu_slope_of_another_type_takes_the_general_path():
    assert _per_channel(torch.randn(2, 3, 4), torch.rand(3, 1, dtype=torch.float64)) is None


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("perm,axis", [([0, 2, 3, 1], -1), ([0, 2, 3, 1], 1),
                                       ([2, 0, 1], 0), ([1, 0], -1), ([0, 2, 1, 3], 2)])
def test_softmax_over_a_transposed_view_matches_onnx_runtime(op, perm, axis):
    # above kiln's small-tensor cut-off (256 elements), so the memory-order path runs
    shape = {2: [80, 60], 3: [12, 20, 24], 4: [4, 6, 25, 12]}[len(perm)]
    rng = np.random.default_rng(len(perm) + axis + 7)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm),
             helper.make_node(op, ["t"], ["y"], axis=axis)]
    proto = model(nodes, [tensor("x", TensorProto.FLOAT, shape)],
                  [tensor("y", TensorProto.FLOAT, None)])
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    assert_same(run_kiln(proto, {"x": x})[0], run_ort(proto, {"x": x})[0], rtol=1e-5,
                atol=1e-6)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", [((300, 7, 2), -1), ((20, 6, 8, 5), 3), ((300, 16), 1),
                                        ((12, 9, 40), -1), ((5, 1000), 0), ((3, 7, 2), -1),
                                        ((360, 10), 1), ((30, 10), -1)])  # the cut-off's sides
@pytest.mark.parametrize("opset", [11, 21])  # before 13: softmax over the flattened tail
def test_softmax_along_short_and_long_axes_matches_onnx_runtime(op, shape, axis, opset):
    rng = np.random.default_rng(sum(shape) + axis)
    proto = model([helper.make_node(op, ["x"], ["y"], axis=axis)],
                  [tensor("x", TensorProto.FLOAT, list(shape))],
                  [tensor("y", TensorProto.FLOAT, None)], opset=opset)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    assert_same(run_kiln(proto, {"x": x})[0], run_ort(proto, {"x": x})[0], rtol=1e-5,
                atol=1e-6)
