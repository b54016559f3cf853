"""What the tests of kiln's Triton INT8/FP8 kernels share: the device they run on (a GPU,
else Triton's interpreter), a small tile, random operands, and the comparison with the
reference quantized operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.ops.quantized import combined_scales, inverse_scale, qconv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = (32, 32, 32, 4, 1)  # BLOCK_M, BLOCK_N, BLOCK_K, warps, stages
# Triton's interpreter rounds float32 -> float8 without carrying into the exponent (31.9
# becomes 16); the GPU's conversion is exact, so FP8 outputs are checked there only
FP8_OUT = pytest.mark.skipif(DEVICE == "cpu", reason="the Triton interpreter's float32 -> "
                             "float8 conversion is wrong; run on a GPU")


def ints(rng, shape, dtype=torch.int8):
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.from_numpy(rng.integers(lo, hi, shape)).to(dtype)


def epi(out_scale=0.0, **extra):
    epilogue = {"out_scale": out_scale, "out_type": "int8", "out_dtype": "fp32", **extra}
    if out_scale:
        epilogue["out_inv_scale"] = inverse_scale(out_scale)
    return epilogue


def close(got, want):
    got, want = got.cpu(), want.cpu()
    if want.is_floating_point():  # fp16 outputs: an ulp where float32 math rounds apart
        tol = 1e-5 if want.dtype == torch.float32 else 2e-3
        np.testing.assert_allclose(got.float().numpy(), want.float().numpy(), rtol=tol,
                                   atol=tol)
    else:  # requantized: the float epilogue may round an element one step apart
        diff = (got.int() - want.int()).abs()
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3


def fp8_conv_case(rng, x_shape: tuple, w_shape: tuple, attrs: dict) -> tuple:
    """FP8 input and weights, a bias, the per-channel factors on DEVICE, and the
    reference's FP16 output of that QConv (x scale 0.02, weight scale 0.003)."""
    x, w = (torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 30).to(
        torch.float8_e4m3fn) for shape in (x_shape, w_shape))
    oc = w_shape[0]
    bias = rng.standard_normal(oc).astype(np.float32)
    want = qconv(x, w, x_scale=0.02, w_scale=[0.003] * oc, bias=bias, out_dtype="fp16",
                 **attrs)
    scales = torch.from_numpy(combined_scales(0.02, [0.003] * oc)).to(DEVICE)
    return x, w, bias, scales, want


def qgemm_spec(rng, n: int, k: int, activation: str, out_scale: float = 0.01,
               w_scale: tuple[float, float] = (0.001, 0.01)) -> tuple:
    """A QGemm layer of random int8 weights [n, k] (returned too), per-column weight scales
    drawn from w_scale, a bias and the activation, on int8 input (scale 0.05, zero point 0);
    an int8 output with out_scale, else a float32 one."""
    from kiln.kernels import LayerSpec

    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    attrs = {"a_scale": 0.05, "a_zero_point": 0, "activation": activation,
             "w_scale": rng.uniform(*w_scale, n).astype(np.float32),
             "bias": rng.standard_normal(n).astype(np.float32), "out_type": "int8"}
    if out_scale:
        attrs.update(out_scale=out_scale, out_zero_point=0)
    return LayerSpec("fc", "QGemm", "kiln", 1, ["a", "w"], ["y"], attrs,
                     constant_inputs={1: w}, input_dtypes=["int8", "int8"]), w


def check_offered(tactic_name: str, spec, offered: bool, args: tuple, want) -> None:
    """The tactic is offered for the layer spec on DEVICE exactly when `offered`; where it
    is, it is prepared, bound and run as an engine would on args (4-D tensors moved to
    DEVICE channels-last, None kept) and matches want(), the reference's output."""
    from kiln.kernels import Target, get_tactic

    device = torch.device(DEVICE)
    tactic, target = get_tactic(tactic_name), Target(device, "int8")
    assert tactic.supports(spec, target) == offered
    if offered:
        tensors = {k: t.to(device) for k, t in tactic.prepare(spec, target).items()}
        moved = [None if a is None else a.to(device).contiguous(
            memory_format=torch.channels_last) for a in args]
        close(tactic.bind(spec, tensors, device)(*moved), want())
