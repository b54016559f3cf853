"""kiln's native depthwise convolution (conv-depthwise-native) against torch's grouped
convolution in float64: one-column layers run along H (fsmn-vad's), rows wider than the
16 lanes, dilations, asymmetric and SAME pads, bias, residual and activation epilogues,
NCHW and channels-last inputs; and the layers it leaves to the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.kernels import Target
from kiln.kernels.native import conv_depthwise
from kiln.kernels.registry import LayerSpec, get_tactic
from kiln.ops.conv import resolve_pads

CPU = Target(torch.device("cpu"), "fp32")
pytestmark = pytest.mark.skipif(conv_depthwise.kernel() is None,
                                reason="no C compiler or no AVX-512 here")
CASES = [  # (input shape, window, dilations, pads or auto_pad, bias, residual, act)
    ((1, 16, 23, 1), (20, 1), (1, 1), [0, 0, 0, 0], False, True, ""),  # fsmn-vad's
    ((2, 3, 19, 1), (4, 1), (2, 1), [2, 0, 3, 0], True, False, "Relu"),  # a padded column
    ((2, 6, 9, 8), (3, 3), (1, 1), [1, 1, 1, 1], True, False, "Relu"),
    ((1, 5, 11, 10), (5, 5), (1, 1), [2, 2, 2, 2], True, True, "HardSwish"),
    ((3, 4, 8, 7), (3, 2), (2, 1), [1, 0, 2, 1], False, False, "Sigmoid"),
    ((1, 8, 6, 6), (3, 3), (1, 1), "SAME_UPPER", True, False, ""),
    ((1, 3, 5, 37), (1, 5), (1, 1), [0, 2, 0, 2], True, True, ""),  # three 16-lane chunks
]


def _spec(rng, shape, window, dilations, pads, bias, residual, act, strides=(1, 1),
          multiplier=1):
    c = shape[1]
    constants = {1: rng.standard_normal((c * multiplier, 1, *window)).astype(np.float32)}
    if bias:
        constants[2] = rng.standard_normal(c * multiplier).astype(np.float32)
    attrs = {"strides": list(strides), "dilations": list(dilations), "group": c,
             "activation": act}
    attrs.update({"auto_pad": pads} if isinstance(pads, str) else {"pads": pads})
    inputs = ["x", "w", "b" if bias else None, "r" if residual else None]
    return LayerSpec("conv", "FusedConv", "kiln", 1, inputs, ["y"], attrs,
                     constant_inputs=constants, input_dtypes=["fp32"])


def _reference(x, spec, residual):
    """torch's grouped convolution in float64, padded as ONNX says, then the epilogue."""
    attrs = spec.attrs
    w = torch.from_numpy(spec.constant_inputs[1]).double()
    b = spec.constant_inputs.get(2)
    full = resolve_pads(x, list(w.shape[2:]), attrs["strides"], attrs["dilations"],
                        attrs.get("pads"), attrs.get("auto_pad", "NOTSET"))
    y = F.conv2d(F.pad(x.double(), (full[1], full[3], full[0], full[2])), w,
                 None if b is None else torch.from_numpy(b).double(), attrs["strides"], 0,
                 attrs["dilations"], x.shape[1])
    if residual is not None:
        y = y + residual.double()
    return {"": y, "Relu": F.relu(y), "Sigmoid": torch.sigmoid(y),
            "HardSwish": F.hardswish(y)}[attrs["activation"]]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_a_float64_grouped_convolution(case, layout):
    rng = np.random.default_rng(sum(case[0]) + len(case[1]))
    spec = _spec(rng, *case)
    tactic = get_tactic("conv-depthwise-native")
    assert tactic.supports(spec, CPU)
    run = tactic.bind(spec, tactic.prepare(spec, CPU), CPU.device)
    x = torch.from_numpy(rng.standard_normal(case[0]).astype(np.float32))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    residual = None
    if case[5]:
        shape = _reference(x, spec, None).shape
        residual = torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))
    got = run(x, residual=residual)
    torch.testing.assert_close(got.double(), _reference(x, spec, residual), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("change", ["stride", "dense", "multiplier", "fp16", "cuda", "1-D"])
def test_left_to_the_others(change):
    rng = np.random.default_rng(9)
    args = ((1, 4, 6, 6), (3, 3), (1, 1), [1, 1, 1, 1], False, False, "")
    spec = _spec(rng, *args, strides=(2, 2) if change == "stride" else (1, 1),
                 multiplier=2 if change == "multiplier" else 1)
    attrs, constants, dtypes, target = dict(spec.attrs), dict(spec.constant_inputs), ["fp32"], CPU
    if change == "dense":
        attrs["group"] = 1
        constants[1] = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    elif change == "fp16":
        dtypes = ["fp16"]
    elif change == "cuda":
        target = Target(torch.device("cuda"), "fp32")
    elif change == "1-D":
        constants[1] = constants[1][..., 0]
    changed = LayerSpec("conv", "FusedConv", "kiln", 1, spec.inputs, ["y"], attrs,
                        constant_inputs=constants, input_dtypes=dtypes)
    assert not get_tactic("conv-depthwise-native").supports(changed, target)
