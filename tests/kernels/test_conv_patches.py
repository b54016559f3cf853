"""The patch-embedding convolution tactic (window == stride, as one GEMM) against the plain
convolution tactic on the same layers: square and oblong windows, sizes that leave a
remainder the convolution drops, bias, residual and activation epilogues, NCHW and
channels-last inputs; and the layers it must leave to the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.kernels import Target
from kiln.kernels.registry import LayerSpec, get_tactic

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
REFERENCE = "conv-nhwc" if DEVICE.type == "cuda" else "conv-nchw"

CASES = [  # (input shape, OC, window, bias, residual, activation)
    ((2, 3, 32, 32), 24, (16, 16), True, False, ""),
    ((3, 3, 30, 29), 16, (4, 4), True, True, "Relu"),  # 2 rows and 1 column left over
    ((1, 5, 12, 18), 7, (3, 6), False, False, "GeluErf"),
    ((2, 8, 10, 10), 12, (2, 2), True, True, "LeakyRelu"),
]


def _spec(w: np.ndarray, bias: np.ndarray | None, attrs: dict, residual: bool) -> LayerSpec:
    constants = {1: w} if bias is None else {1: w, 2: bias}
    inputs = ["x", "w", "b" if bias is not None else None, "r" if residual else None]
    return LayerSpec("patches", "FusedConv", "kiln", 1, inputs, ["y"], attrs,
                     constant_inputs=constants, input_dtypes=["fp32"])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_the_plain_convolution(case, layout, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # exact FP32 on the GPU
    shape, oc, window, bias, residual, act = case
    rng = np.random.default_rng(sum(shape) + oc)
    w = rng.standard_normal((oc, shape[1], *window)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32) if bias else None
    attrs = {"strides": list(window), "group": 1, "activation": act}
    if act == "LeakyRelu":
        attrs["activation_params"] = [0.1]
    spec = _spec(w, b, attrs, residual)
    target = Target(DEVICE, "fp32")
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(DEVICE)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    runs = {}
    for name in ("conv-patches", REFERENCE):
        tactic = get_tactic(name)
        assert tactic.supports(spec, target)
        tensors = {k: t.to(DEVICE) for k, t in tactic.prepare(spec, target).items()}
        runs[name] = tactic.bind(spec, tensors, DEVICE)
    expected = runs[REFERENCE](x.clone())
    r = None
    if residual:
        r = torch.from_numpy(rng.standard_normal(tuple(expected.shape)).astype(np.float32))
        r = r.to(DEVICE)
        expected = runs[REFERENCE](x.clone(), residual=r.clone())
    got = runs["conv-patches"](x, residual=None if r is None else r.clone())
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2]},  # 3x3 windows at stride 2 overlap
    {"strides": [3, 3], "pads": [1, 1, 1, 1]},
    {"strides": [3, 3], "dilations": [2, 2]},
    {"strides": [3, 3], "auto_pad": "SAME_UPPER"},
    {"strides": [3, 3], "group": 2},
], ids=str)
def test_other_convolutions_are_left_to_the_others(attrs):
    w = np.ones((4, 2, 3, 3), np.float32)
    spec = _spec(w, None, attrs, False)
    assert not get_tactic("conv-patches").supports(spec, Target(DEVICE, "fp32"))


def test_a_one_by_one_convolution_is_left_to_the_others():
    """1x1 at stride 1 is a plain GEMM already (the channels-last tactics run it so)."""
    spec = _spec(np.ones((4, 2, 1, 1), np.float32), None, {"strides": [1, 1]}, False)
    assert not get_tactic("conv-patches").supports(spec, Target(DEVICE, "fp32"))
