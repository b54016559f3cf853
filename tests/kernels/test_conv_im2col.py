"""The im2col convolution tactics (NCHW unfold; channels-last windows) against the plain
NCHW one (oneDNN) on the same layers: window shapes from 1x1 to 7x7 and [5, 1], 1-D
windows, strides, dilations, asymmetric and SAME pads, bias, residual and activation
epilogues, NCHW and channels-last inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.kernels import Target
from kiln.kernels.registry import LayerSpec, get_tactic

CASES = [  # (input shape, OC, window, strides, dilations, pads or auto_pad, bias, residual, act)
    ((2, 6, 9, 1), 8, (5, 1), (1, 1), (1, 1), [2, 0, 2, 0], True, False, "Relu"),
    ((1, 3, 11, 10), 5, (7, 7), (2, 2), (1, 1), [3, 3, 3, 3], True, False, ""),
    ((2, 4, 8, 7), 6, (3, 3), (1, 2), (2, 1), [1, 0, 2, 1], False, True, "Sigmoid"),
    ((3, 8, 5, 5), 4, (1, 1), (1, 1), (1, 1), "SAME_UPPER", True, True, "LeakyRelu"),
    ((1, 5, 7, 6), 3, (2, 3), (2, 1), (1, 1), "SAME_LOWER", False, False, "Tanh"),
]
CASES_1D = [
    ((1, 6, 31), 9, (5,), (1,), (3,), [6, 6], True, False, "Relu"),
    ((2, 4, 17), 5, (9,), (2,), (2,), [8, 3], False, True, ""),
    ((3, 5, 12), 7, (3,), (1,), (1,), "SAME_UPPER", True, True, "Sigmoid"),
    ((1, 8, 10), 4, (1,), (1,), (1,), [0, 0], True, False, ""),
]
TACTICS = ["conv-im2col", "conv-im2col-nhwc"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize("case", CASES + CASES_1D, ids=str)
def test_matches_the_nchw_tactic(case, tactic, layout):
    shape, oc, window, strides, dilations, pads, bias, residual, act = case
    rng = np.random.default_rng(sum(shape) + oc)
    w = rng.standard_normal((oc, shape[1], *window)).astype(np.float32)
    constants = {1: w}
    if bias:
        constants[2] = rng.standard_normal(oc).astype(np.float32)
    attrs = {"strides": list(strides), "dilations": list(dilations), "group": 1,
             "activation": act}  # no kernel_shape: ONNX lets it be left out
    if act == "LeakyRelu":
        attrs["activation_params"] = [0.2]
    attrs.update({"auto_pad": pads} if isinstance(pads, str) else {"pads": pads})
    inputs = ["x", "w", "b" if bias else None, "r" if residual else None]
    spec = LayerSpec("conv", "FusedConv", "kiln", 1, inputs, ["y"], attrs,
                     constant_inputs=constants, input_dtypes=["fp32"])
    target = Target(torch.device("cpu"), "fp32")
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    if layout == "channels_last":  # the same values, channels innermost (a Transpose's view)
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    if tactic == "conv-im2col" and len(shape) == 3:
        assert not get_tactic(tactic).supports(spec, target)
        return
    runs = {}
    for name in (tactic, "conv-nchw"):
        found = get_tactic(name)
        assert found.supports(spec, target)
        runs[name] = found.bind(spec, found.prepare(spec, target), torch.device("cpu"))
    r = None
    if residual:  # one residual of the output's shape, for both
        shape_out = runs["conv-nchw"](x).shape
        r = torch.from_numpy(rng.standard_normal(tuple(shape_out)).astype(np.float32))
    outputs = {name: run(x, residual=r) for name, run in runs.items()}
    torch.testing.assert_close(outputs[tactic], outputs["conv-nchw"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tactic", TACTICS)
def test_grouped_convolutions_are_left_to_the_others(tactic):
    w = np.ones((4, 2, 3, 3), np.float32)
    spec = LayerSpec("conv", "FusedConv", "kiln", 1, ["x", "w", None, None], ["y"],
                     {"group": 2}, constant_inputs={1: w}, input_dtypes=["fp32"])
    assert not get_tactic(tactic).supports(spec, Target(torch.device("cpu"), "fp32"))
