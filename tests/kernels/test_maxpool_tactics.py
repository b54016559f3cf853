"""The CPU max-pooling tactics against ONNX Runtime: the separable running maximum and
torch's max_pool, over 1-D to 3-D windows, strides, dilations, asymmetric and SAME pads,
ceil mode, NCHW and channels-last inputs; and a built engine that picks one of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from kiln.kernels import Target
from kiln.kernels.registry import LayerSpec, candidates, get_tactic
from tests.ops._kiln_vs_ort import model, run_kiln, run_ort, tensor

CASES = [  # (input shape, window, strides, dilations, pads or auto_pad, ceil_mode)
    ((1, 10, 17, 17), (2, 2), (2, 2), (1, 1), [0, 0, 0, 0], 1),
    ((2, 6, 12, 11), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1], 0),
    ((2, 5, 9, 9), (5, 5), (1, 1), (1, 1), [2, 2, 2, 2], 0),
    ((1, 4, 10, 13), (3, 2), (2, 3), (2, 1), [1, 0, 2, 1], 1),
    ((3, 3, 8, 7), (3, 3), (2, 1), (1, 1), "SAME_UPPER", 0),
    ((1, 3, 7, 8), (2, 3), (1, 2), (1, 1), "SAME_LOWER", 0),
    ((2, 4, 15), (4,), (3,), (2,), [1, 2], 1),
    ((1, 2, 5, 6, 7), (2, 3, 2), (2, 1, 2), (1, 1, 1), [0, 1, 1, 0, 1, 0], 0),
    ((1, 3, 6, 6), (1, 1), (2, 2), (1, 1), [0, 0, 0, 0], 0),
    ((2, 4, 46, 46), (3, 3), (2, 2), (1, 1), "SAME_UPPER", 0),  # mtcnn's: one tap partial
    ((1, 3, 9, 11), (5, 5), (1, 1), (1, 1), [2, 2, 2, 2], 0),  # YOLO's SPPF: four partial
    ((1, 2, 3, 5), (2, 2), (1, 1), (1, 1), [1, 1, 1, 1], 0),  # no tap covers every output
    ((1, 2, 11, 10), (3, 3), (2, 2), (2, 2), [2, 1, 2, 2], 1),  # dilated, ceil, pads
]


def _attrs(window, strides, dilations, pads, ceil) -> dict:
    attrs = {"kernel_shape": list(window), "strides": list(strides),
             "dilations": list(dilations), "ceil_mode": ceil}
    attrs.update({"auto_pad": pads} if isinstance(pads, str) else {"pads": list(pads)})
    return attrs


def _ort_max_pool(x: np.ndarray, attrs: dict) -> np.ndarray:
    shape = list(x.shape)
    node = helper.make_node("MaxPool", ["x"], ["y"], **attrs)
    proto = model([node], [tensor("x", TensorProto.FLOAT, shape)],
                  [tensor("y", TensorProto.FLOAT, None)])
    return run_ort(proto, {"x": x})[0]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_both_tactics_match_onnx_runtime(case, channels_last):
    shape, window, strides, dilations, pads, ceil = case
    attrs = _attrs(window, strides, dilations, pads, ceil)
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    expected = _ort_max_pool(x, attrs)
    spec = LayerSpec("pool", "MaxPool", "", 12, ["x"], ["y"], attrs, input_dtypes=["fp32"])
    target = Target(torch.device("cpu"), "fp32")
    given = torch.from_numpy(x)
    if channels_last and given.dim() == 4:
        given = given.contiguous(memory_format=torch.channels_last)
    for name in ("maxpool-separable", "maxpool-torch"):
        tactic = get_tactic(name)
        assert tactic.supports(spec, target)
        out = tactic.bind(spec, {}, target.device)(given)
        np.testing.assert_array_equal(out.numpy(), expected, err_msg=name)
        assert out.data_ptr() != given.data_ptr()  # its own buffer, even for a 1x1 window


def test_only_float_single_output_pools_on_the_cpu():
    attrs = {"kernel_shape": [2, 2]}
    cpu, cuda = Target(torch.device("cpu"), "fp32"), Target(torch.device("cuda"), "fp32")
    plain = LayerSpec("pool", "MaxPool", "", 12, ["x"], ["y"], attrs, input_dtypes=["fp32"])
    indices = LayerSpec("pool", "MaxPool", "", 12, ["x"], ["y", "i"], attrs,
                        input_dtypes=["fp32"])
    ints = LayerSpec("pool", "MaxPool", "", 12, ["x"], ["y"], attrs, input_dtypes=["u8"])
    tactic = get_tactic("maxpool-separable")
    assert tactic.supports(plain, cpu)
    assert not any(tactic.supports(s, cpu) for s in (indices, ints))
    assert not tactic.supports(plain, cuda)
    assert [t.name for t in candidates(plain, cpu)] == ["maxpool-separable", "maxpool-torch"]


@pytest.mark.parametrize("shape", [(1, 8, 23, 21), (3, 16, 12, 12)])
def test_an_engine_after_a_convolution_matches_onnx_runtime(shape):
    rng = np.random.default_rng(shape[1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [shape[1], shape[1], 3, 3],
                           rng.standard_normal((shape[1], shape[1], 3, 3)).ravel() * 0.2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                              ceil_mode=1)]
    proto = model(nodes, [tensor("x", TensorProto.FLOAT, list(shape))],
                  [tensor("y", TensorProto.FLOAT, None)])
    proto.graph.initializer.append(w)
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(run_kiln(proto, {"x": x})[0], run_ort(proto, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)
