"""The im2col convolution tactic against the plain NCHW one (oneDNN) on the same layers:
window shapes from 1x1 to 7x7 and [5, 1], strides, dilations, asymmetric and SAME pads,
bias, residual and activation epilogues."""

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


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_nchw_tactic(case):
    shape, oc, window, strides, dilations, pads, bias, residual, act = case
    rng = np.random.default_rng(sum(shape) + oc)
    w = rng.standard_normal((oc, shape[1], *window)).astype(np.float32)
    constants = {1: w}
    if bias:
        constants[2] = rng.standard_normal(oc).astype(np.float32)
    attrs = {"kernel_shape": list(window), "strides": list(strides),
             "dilations": list(dilations), "group": 1, "activation": act}
    if act == "LeakyRelu":
        attrs["activation_params"] = [0.2]
    attrs.update({"auto_pad": pads} if isinstance(pads, str) else {"pads": pads})
    inputs = ["x", "w", "b" if bias else None, "r" if residual else None]
    spec = LayerSpec("conv", "FusedConv", "kiln", 1, inputs, ["y"], attrs,
                     constant_inputs=constants)
    target = Target(torch.device("cpu"), "fp32")
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    runs = {}
    for name in ("conv-im2col", "conv-nchw"):
        tactic = get_tactic(name)
        assert tactic.supports(spec, target)
        runs[name] = tactic.bind(spec, tactic.prepare(spec, target), torch.device("cpu"))
    r = None
    if residual:  # one residual of the output's shape, for both
        shape_out = runs["conv-nchw"](x).shape
        r = torch.from_numpy(rng.standard_normal(tuple(shape_out)).astype(np.float32))
    outputs = {name: run(x, residual=r) for name, run in runs.items()}
    torch.testing.assert_close(outputs["conv-im2col"], outputs["conv-nchw"],
                               rtol=1e-4, atol=1e-4)


def test_grouped_convolutions_are_left_to_the_others():
    w = np.ones((4, 2, 3, 3), np.float32)
    spec = LayerSpec("conv", "FusedConv", "kiln", 1, ["x", "w", None, None], ["y"],
                     {"group": 2}, constant_inputs={1: w})
    assert not get_tactic("conv-im2col").supports(spec, Target(torch.device("cpu"), "fp32"))
