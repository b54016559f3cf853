"""The patch-embedding QConv tactics (kiln/kernels/triton/int8_patches.py: window == stride
as one TMA GEMM over the reordered windows) against kiln's reference QConv. Without a GPU
the kernels run in Triton's interpreter (small sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.ops.quantized import qconv
from tests.quant._triton_cases import check_offered, ints

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp")

CASES = [  # (N, C, H, W, OC, window, out_scale, residual, tactic)
    (2, 3, 8, 8, 16, (4, 4), 0.05, None, "t3"),  # a ViT's patches over RGB, requantized
    (1, 3, 10, 13, 24, (4, 4), 0.0, None, "t6"),  # rows and columns past the last window
    (2, 2, 6, 8, 8, (2, 4), 0.04, "int8", "t4"),  # oblong windows, an int8 residual
    (1, 4, 4, 6, 8, (2, 2), 0.0, "float", "t3"),  # a float residual, a float output
]


def _spec(rng, c, window, out_scale, residual, x_shape, oc=16, zero_point=0, dtype="int8",
          extra=None):
    from kiln.kernels import LayerSpec

    w = rng.integers(-127, 128, (oc, c, *window)).astype(np.int8)
    attrs = {"x_scale": 0.03, "x_zero_point": zero_point, "strides": list(window),
             "w_scale": rng.uniform(0.001, 0.01, oc).astype(np.float32),
             "bias": rng.standard_normal(oc).astype(np.float32), "out_type": "int8",
             "activation": "Relu", **(extra or {})}
    if out_scale:
        attrs.update(out_scale=out_scale, out_zero_point=0)
    if residual == "int8":
        attrs.update(residual_scale=0.02, residual_zero_point=0)
    inputs = ["x", "w", "r"] if residual else ["x", "w"]
    return LayerSpec("patches", "QConv", "kiln", 1, inputs, ["y"], attrs,
                     constant_inputs={1: w}, input_shapes=[x_shape, w.shape],
                     input_dtypes=[dtype, "int8"]), w


@pytest.mark.parametrize("case", CASES, ids=str)
def test_patch_conv_matches_the_reference(case, monkeypatch):
    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")  # the interpreter stands in for a GPU
    n, c, h, w, oc, window, out_scale, residual, key = case
    rng = np.random.default_rng(n * c * h + w)
    spec, weight = _spec(rng, c, window, out_scale, residual, (n, c, h, w), oc)
    x = ints(rng, (n, c, h, w))
    out = (n, oc, h // window[0], w // window[1])
    r = None
    if residual == "int8":
        r = ints(rng, out)
    elif residual == "float":
        r = torch.from_numpy(rng.standard_normal(out).astype(np.float32))
    check_offered(f"int8-triton-conv-patches-{key}", spec, True, (x, None, r),
                  lambda: qconv(x, torch.from_numpy(weight), r, **spec.attrs))


@pytest.mark.parametrize("change", [
    {"extra": {"strides": [2, 2]}},  # 4x4 windows at stride 2 overlap
    {"extra": {"pads": [1, 1, 1, 1]}},
    {"zero_point": 3}, {"dtype": "uint8"},  # TMA's zero fill needs zero point 0
    {"c": 1, "window": (2, 2)},  # 4 bytes a row: TMA rows are multiples of 16
], ids=str)
def test_patch_conv_left_to_the_others(change, monkeypatch):
    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    rng = np.random.default_rng(9)
    args = {"c": 3, "window": (4, 4), **change}
    spec, _ = _spec(rng, args.pop("c"), args.pop("window"), 0.05, None, (1, 3, 8, 8), **args)
    check_offered("int8-triton-conv-patches-t3", spec, False, (), None)
