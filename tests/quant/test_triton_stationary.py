"""The stationary-weight GEMM (kiln/kernels/triton/_int8_stationary.py) and its QGemm and
1x1 QConv tactics against kiln's reference quantized operators. Without a GPU the kernels
run in Triton's interpreter (small sizes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kiln.ops.quantized import combined_scales, qconv, qgemm
from tests.quant._triton_cases import DEVICE, check_offered, close, epi, fp8_conv_case, ints

pytest.importorskip("triton")
stationary = pytest.importorskip("kiln.kernels.triton._int8_stationary")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp")

TILE = (32, 32, 3, 4, 2)  # BLOCK_M, BLOCK_N, row blocks per program, warps, stages


def pixels(t: torch.Tensor) -> torch.Tensor:
    """[M, K] as [M, K, 1, 1]: the reference QConv reads a residual, its QGemm does not."""
    return t[:, :, None, None]

CASES = [  # (M, K, N, out_scale, activation, out dtype, residual)
    (100, 64, 64, 0.05, "Relu", "fp32", None),  # rows end inside a program's third block
    (70, 32, 96, 0.0, "", "fp16", None),
    (130, 128, 40, 0.05, "Relu", "fp32", "int8"),  # a partial column block
    (100, 64, 48, 0.05, "Relu", "fp32", "int8"),  # int8 lines of 48: TMA-aligned
    (45, 96, 32, 0.0, "SiLU", "fp32", "float"),  # K short of the box: the zero fill
    (31, 256, 16, 0.1, "", "fp32", None),  # the deepest K: one box of 256
]


@pytest.mark.parametrize("tma_io", [False, True])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_stationary_qgemm_matches_the_reference(case, tma_io):
    """tma_io: the residual and output tiles by TMA too, where their lines are whole
    16-byte units (int8 lines of 40 fall back to pointers)."""
    m, k, n, out_scale, act, out_dtype, residual = case
    rng = np.random.default_rng(m * k + n)
    a, w = ints(rng, (m, k)), ints(rng, (n, k))
    w_scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    extra, r = {}, None
    if residual == "int8":
        r, extra = ints(rng, (m, n)), {"residual_scale": 0.05, "residual_zero_point": 0}
    elif residual == "float":
        r = torch.from_numpy(rng.standard_normal((m, n)).astype(np.float32))
    want = qconv(pixels(a), pixels(w), None if r is None else pixels(r), x_scale=0.02,
                 w_scale=w_scale, bias=bias, out_scale=out_scale, activation=act,
                 out_dtype=out_dtype, **extra)[:, :, 0, 0]
    got = stationary.qgemm_stationary(
        a.to(DEVICE), w.to(DEVICE), torch.from_numpy(combined_scales(0.02, w_scale)).to(DEVICE),
        torch.from_numpy(bias).to(DEVICE),
        epi(out_scale, activation=act, out_dtype=out_dtype, **extra), (*TILE, tma_io),
        None if r is None else r.to(DEVICE))
    assert got.dtype == want.dtype and got.shape == want.shape
    close(got, want)


@pytest.mark.parametrize("act,params", [("", None), ("Relu", None), ("LeakyRelu", [0.1]),
                                        ("SiLU", None)])
@pytest.mark.parametrize("out_type,zp", [("int8", 0), ("int8", -5), ("uint8", 128)])
@pytest.mark.parametrize("residual", [None, "int8", "float"])
def test_requantizing_epilogues(act, params, out_type, zp, residual):
    """Every requantizing epilogue: in output steps from the start (no activation, ReLU,
    LeakyRelu) or through float32 values (SiLU), with zero points and residuals; the
    saturation at both ends of the type's range is exercised (outputs of tens of steps)."""
    rng = np.random.default_rng(len(act) * 7 + abs(zp) + len(str(residual)))
    a, w = ints(rng, (64, 64)), ints(rng, (48, 64))
    w_scale = rng.uniform(0.01, 0.04, 48).astype(np.float32)
    bias = rng.standard_normal(48).astype(np.float32) * 5
    attrs = {"x_scale": 0.02, "w_scale": w_scale, "bias": bias, "out_scale": 0.5,
             "out_zero_point": zp, "out_type": out_type, "activation": act}
    if params:
        attrs["activation_params"] = params
    r = None
    if residual == "int8":
        r = ints(rng, (64, 48))
        attrs.update(residual_scale=0.3, residual_zero_point=0)
    elif residual == "float":
        r = torch.from_numpy(rng.standard_normal((64, 48)).astype(np.float32) * 20)
    want = qconv(pixels(a), pixels(w), None if r is None else pixels(r), **attrs)[:, :, 0, 0]
    layer_epi = epi(0.5, out_type=out_type, out_zero_point=zp, activation=act,
                    **({"activation_params": params} if params else {}),
                    **{k: attrs[k] for k in ("residual_scale", "residual_zero_point")
                       if k in attrs})
    got = stationary.qgemm_stationary(
        a.to(DEVICE), w.to(DEVICE), torch.from_numpy(combined_scales(0.02, w_scale)).to(DEVICE),
        torch.from_numpy(bias).to(DEVICE), layer_epi, TILE, None if r is None else r.to(DEVICE))
    assert got.dtype == want.dtype
    lo, hi = (-128, 127) if out_type == "int8" else (0, 255)
    assert (want == hi).any() and (act != "" or (want == lo).any())
    close(got, want)


def test_stationary_1x1_conv_fp8():
    x, w, bias, scales, want = fp8_conv_case(np.random.default_rng(21), (2, 32, 5, 7),
                                             (24, 32, 1, 1), {})
    got = stationary.qconv1x1_stationary(
        x.to(DEVICE).contiguous(memory_format=torch.channels_last),
        w.reshape(24, 32).contiguous().to(DEVICE), scales, torch.from_numpy(bias).to(DEVICE),
        epi(out_dtype="fp16"), TILE)
    assert got.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(got.cpu().float().numpy(), want.float().numpy(), rtol=2e-3,
                               atol=2e-3)


def _conv_spec(rng, c=64, kernel=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0), zero_point=0):
    from kiln.kernels import LayerSpec

    w = rng.integers(-127, 128, (64, c, *kernel)).astype(np.int8)
    attrs = {"x_scale": 0.03, "x_zero_point": zero_point, "strides": list(strides),
             "pads": list(pads), "w_scale": rng.uniform(0.001, 0.01, 64).astype(np.float32),
             "residual_scale": 0.05, "out_scale": 0.04, "out_type": "int8",
             "activation": "Relu", "bias": rng.standard_normal(64).astype(np.float32)}
    return LayerSpec("conv", "QConv", "kiln", 1, ["x", "w", "r"], ["y"], attrs,
                     constant_inputs={1: w}, input_shapes=[(2, c, 5, 6), w.shape, None],
                     input_dtypes=["int8", "int8", "int8"]), w


@pytest.mark.parametrize("change,offered", [
    ({}, True), ({"c": 512}, False),  # K beyond one box
    ({"kernel": (3, 3), "pads": (1, 1, 1, 1)}, False), ({"strides": (2, 2)}, False),
    ({"pads": (1, 1, 1, 1)}, False), ({"zero_point": 4}, False)])
def test_stationary_conv_tactic_offered_for_short_1x1_layers(change, offered, monkeypatch):
    """Where offered, run with an int8 residual."""
    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")  # the interpreter stands in for a GPU
    rng = np.random.default_rng(22)
    spec, w = _conv_spec(rng, **change)
    x, r = ints(rng, (2, 64, 5, 6)), ints(rng, (2, 64, 5, 6))
    check_offered("int8-triton-conv-stationary-128x64x8", spec, offered, (x, None, r),
                  lambda: qconv(x, torch.from_numpy(w), r, **spec.attrs))


@pytest.mark.parametrize("residual", [True, False])
def test_stationary_tma_io_tactic_only_for_residual_layers(residual, monkeypatch):
    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    rng = np.random.default_rng(24)
    spec, w = _conv_spec(rng)
    x, r = ints(rng, (2, 64, 5, 6)), ints(rng, (2, 64, 5, 6))
    if not residual:
        spec = dataclasses.replace(spec, inputs=spec.inputs[:2],
                                   input_shapes=spec.input_shapes[:2],
                                   input_dtypes=spec.input_dtypes[:2])
    check_offered("int8-triton-conv-stationary-64x64x8s", spec, residual, (x, None, r),
                  lambda: qconv(x, torch.from_numpy(w), r, **spec.attrs))


def test_stationary_gemm_tactic_matches_the_reference(monkeypatch):
    """A 3-D QGemm input; not offered with a zero point (the TMA zero fill pads)."""
    from kiln.kernels import LayerSpec, Target, get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    rng = np.random.default_rng(23)
    w = rng.integers(-127, 128, (64, 96)).astype(np.int8)
    attrs = {"a_scale": 0.05, "a_zero_point": 0, "activation": "Relu",
             "w_scale": rng.uniform(0.001, 0.01, 64).astype(np.float32),
             "bias": rng.standard_normal(64).astype(np.float32), "out_type": "int8",
             "out_scale": 0.05, "out_zero_point": 0}
    spec = LayerSpec("fc", "QGemm", "kiln", 1, ["a", "w"], ["y"], attrs,
                     constant_inputs={1: w}, input_dtypes=["int8", "int8"])
    device, target = torch.device(DEVICE), Target(torch.device(DEVICE), "int8")
    tactic = get_tactic("int8-triton-gemm-stationary-64x64x8")
    assert tactic.supports(spec, target)
    assert not tactic.supports(dataclasses.replace(spec, attrs={**attrs, "a_zero_point": 3}),
                               target)
    tensors = {k: t.to(device) for k, t in tactic.prepare(spec, target).items()}
    a = ints(rng, (2, 37, 96))
    got = tactic.bind(spec, tensors, device)(a.to(device))
    assert got.shape == (2, 37, 64)
    close(got, qgemm(a, torch.from_numpy(w), **attrs))


@pytest.mark.parametrize("kernel", ["stationary", "tma"])
def test_accumulators_at_the_bounds_of_the_exact_conversion(kernel):
    """At K = 256 an int8 accumulator reaches +-2**22 (every product -128 * -128), the edge
    of the epilogue's conversion by adding 1.5 * 2**23; float outputs show it exact."""
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    rng = np.random.default_rng(24)
    a = ints(rng, (40, 256))
    a[:8] = -128
    w = ints(rng, (32, 256))
    w[:4], w[4:8] = -128, 127
    scales = torch.ones(32, device=DEVICE)
    bias = torch.zeros(32, device=DEVICE)
    want = a.double() @ w.double().T  # float64: every value exact
    assert want.abs().max() == 2**22
    if kernel == "stationary":
        got = stationary.qgemm_stationary(a.to(DEVICE), w.to(DEVICE), scales, bias, epi(),
                                          TILE)
    else:
        got = tma.qgemm_tma(a.to(DEVICE), w.to(DEVICE), scales, bias, epi(), (32, 32, 64, 4, 1))
    assert torch.equal(got.cpu().double(), want)
