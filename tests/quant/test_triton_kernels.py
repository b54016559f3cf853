"""The Triton INT8/FP8 kernels against kiln's reference quantized operators. Without a GPU
they run in Triton's interpreter (tests/conftest.py), at small sizes; on a GPU the
same cases run compiled (bit-exact integer accumulation; the float epilogue may differ by
an ulp, so requantized outputs may differ by one step in rare elements)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kiln.ops.quantized import combined_scales, epilogue, qconv, qgemm
from tests.quant._triton_cases import (
    DEVICE,
    FP8_OUT,
    SMALL,
    check_offered,
    fp8_conv_case,
    qgemm_spec,
)
from tests.quant._triton_cases import close as _close
from tests.quant._triton_cases import epi as _epi
from tests.quant._triton_cases import ints as _ints

triton = pytest.importorskip("triton")
kernels = pytest.importorskip("kiln.kernels.triton._int8_kernels")
# the interpreter's numpy exp overflows to inf for very negative inputs (sigmoid -> 0)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp")


GEMM_CASES = [  # (M, K, N, input type, zero point, out_scale, activation, out dtype)
    (37, 70, 45, torch.int8, 0, 0.0, "", "fp32"),
    (20, 64, 16, torch.int8, 5, 0.05, "Relu", "fp32"),
    (33, 40, 24, torch.uint8, 131, 0.0, "GeluErf", "fp16"),
    (16, 96, 40, torch.int8, -3, 0.02, "GeluTanh", "fp32"),
    (9, 33, 8, torch.uint8, 128, 0.0, "SiLU", "fp32"),
]


@pytest.mark.parametrize("case", GEMM_CASES)
def test_qgemm_kernel_matches_the_reference(case):
    m, k, n, dtype, zp, out_scale, act, out_dtype = case
    rng = np.random.default_rng(m * n)
    a, w = _ints(rng, (m, k), dtype), _ints(rng, (n, k), torch.int8)
    w_scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    want = qgemm(a, w, a_scale=0.02, a_zero_point=zp, w_scale=w_scale, bias=bias,
                 out_scale=out_scale, activation=act, out_dtype=out_dtype)
    got = kernels.qgemm(a.to(DEVICE), w.to(DEVICE),
                        torch.from_numpy(combined_scales(0.02, w_scale)).to(DEVICE),
                        torch.from_numpy(bias).to(DEVICE), w.int().sum(1).to(DEVICE), zp,
                        _epi(out_scale, activation=act, out_dtype=out_dtype), SMALL)
    assert got.dtype == want.dtype
    _close(got, want)


@pytest.mark.parametrize("case", [c for c in GEMM_CASES if c[3] == torch.int8 and c[4] == 0]
                         + [(45, 64, 40, torch.int8, 0, 0.1, "Relu", "fp32"),
                            (130, 96, 24, torch.int8, 0, 0.0, "GeluErf", "fp16")])
@pytest.mark.parametrize("persistent", [False, True])
def test_tma_qgemm_kernel_matches_the_reference(case, persistent):
    """QGemm through the TMA kernel (zero point 0; rows and K edges from the copy unit's
    zero fill, partial tiles at both edges); persistent: a few programs walking all tiles
    (four on the interpreter, so each program takes several)."""
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    m, k, n, dtype, _, out_scale, act, out_dtype = case
    if k % SMALL[2]:
        k += SMALL[2] - k % SMALL[2]  # whole K steps, as the tactic requires
    rng = np.random.default_rng(m * n + 1)
    a, w = _ints(rng, (m, k), dtype), _ints(rng, (n, k), torch.int8)
    w_scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    want = qgemm(a, w, a_scale=0.02, w_scale=w_scale, bias=bias, out_scale=out_scale,
                 activation=act, out_dtype=out_dtype)
    got = tma.qgemm_tma(a.to(DEVICE), w.to(DEVICE),
                        torch.from_numpy(combined_scales(0.02, w_scale)).to(DEVICE),
                        torch.from_numpy(bias).to(DEVICE),
                        _epi(out_scale, activation=act, out_dtype=out_dtype), SMALL,
                        persistent=persistent)
    assert got.dtype == want.dtype and got.shape == want.shape
    _close(got, want)


class _LaunchSpy:
    """Stands in for a Triton kernel (kernel[grid](...)): records each launch's TMA_OUT,
    then launches the kernel."""

    def __init__(self, kernel) -> None:
        self.kernel, self.tma_out = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.tma_out.append(kwargs["TMA_OUT"])
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("case", [  # (M, K, N, out_scale, out dtype, residual, TMA taken)
    (50, 64, 32, 0.05, "fp32", None, True),  # int8 out, 32-byte rows, a partial row tile
    (33, 64, 48, 0.0, "fp32", None, True),  # float32 out
    (40, 96, 24, 0.0, "fp16", "float", True),  # an fp16 residual read by TMA too
    (70, 64, 32, 0.04, "fp32", "int8", True),  # an int8 residual
    (37, 64, 40, 0.05, "fp32", None, False),  # 40-byte int8 rows: stored by pointer
    (20, 64, 24, 0.0, "fp32", "int8", False),  # 24-byte int8 residual rows: by pointer
], ids=str)
@pytest.mark.parametrize("persistent", [False, True])
def test_tma_qgemm_output_by_tma(case, persistent, monkeypatch):
    """A sixth config field: the output (and residual) tiles by TMA where their rows start
    on 16-byte boundaries, the edges clipped by the copy unit; else by pointer, the same
    values either way."""
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    m, k, n, out_scale, out_dtype, residual, taken = case
    rng = np.random.default_rng(m * n + k)
    a, w = _ints(rng, (m, k), torch.int8), _ints(rng, (n, k), torch.int8)
    w_scale = rng.uniform(0.001, 0.01, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    epi, r, extra = _epi(out_scale, activation="Relu", out_dtype=out_dtype), None, {}
    if residual == "float":
        r = torch.from_numpy(rng.standard_normal((m, n)).astype(np.float16))
    elif residual == "int8":
        r = _ints(rng, (m, n), torch.int8)
        epi.update(residual_scale=0.03, residual_zero_point=0)
        extra = {"residual_scale": 0.03}
    acc = a.double() @ w.double().t()  # exact: |acc| < 2**53
    want = epilogue(acc, torch.from_numpy(combined_scales(0.02, w_scale)),
                    torch.from_numpy(bias), r, extra.get("residual_scale", 0.0), 0, "Relu",
                    None, out_scale, 0, "int8", out_dtype)
    name = "_qgemm_tma_persistent_kernel" if persistent else "_qgemm_tma_kernel"
    spy = _LaunchSpy(getattr(tma, name))
    monkeypatch.setattr(tma, name, spy)
    got = tma.qgemm_tma(a.to(DEVICE), w.to(DEVICE),
                        torch.from_numpy(combined_scales(0.02, w_scale)).to(DEVICE),
                        torch.from_numpy(bias).to(DEVICE), epi, (*SMALL, True),
                        None if r is None else r.to(DEVICE), persistent=persistent)
    assert spy.tma_out == [taken]
    assert got.dtype == want.dtype and got.shape == want.shape
    _close(got, want)


@pytest.mark.parametrize("n,attrs,offered", [
    (32, {"out_scale": 0.05}, True), (40, {"out_scale": 0.05}, False),  # int8 rows
    (40, {"out_dtype": "fp32"}, True), (36, {"out_dtype": "fp16"}, False),
    (24, {"out_dtype": "fp16"}, True)])
def test_tma_store_gemm_tiles_only_for_whole_line_rows(n, attrs, offered, monkeypatch):
    """The -s GEMM tiles store by TMA, which takes rows of whole 16-byte lines; for other
    layers they would be the plain tiles again, so they are not offered."""
    from kiln.kernels import LayerSpec, Target, get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    w = np.ones((n, 64), np.int8)
    spec = LayerSpec("fc", "QGemm", "kiln", 1, ["a", "w"], ["y"],
                     {"a_scale": 0.05, "a_zero_point": 0, "w_scale": 0.01, **attrs},
                     constant_inputs={1: w}, input_dtypes=["int8", "int8"])
    target = Target(torch.device(DEVICE), "int8")
    assert get_tactic("int8-triton-gemm-tma-t4").supports(spec, target)
    assert get_tactic("int8-triton-gemm-tma-t4s").supports(spec, target) == offered


def _fp8_gemm_case(rng, m: int, k: int, n: int) -> tuple:
    """FP8 a [m, k] and w [n, k] spread over E4M3's range, and a float bias."""
    a, w = (torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 30).to(
        torch.float8_e4m3fn) for shape in ((m, k), (n, k)))
    return a, w, rng.standard_normal(n).astype(np.float32)


def test_tma_qgemm_kernel_fp8():
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    a, w, bias = _fp8_gemm_case(np.random.default_rng(16), 50, 64, 40)
    want = qgemm(a, w, a_scale=0.02, w_scale=[0.003] * 40, bias=bias, activation="GeluErf",
                 out_dtype="fp16")
    got = tma.qgemm_tma(a.to(DEVICE), w.to(DEVICE),
                        torch.from_numpy(combined_scales(0.02, [0.003] * 40)).to(DEVICE),
                        torch.from_numpy(bias).to(DEVICE),
                        _epi(activation="GeluErf", out_dtype="fp16"), SMALL)
    _close(got, want)


def _conv_case(rng, sizes: tuple, kernel: tuple, dtype, zp: int, residual: str | None,
               out_scale: float, attrs: dict) -> tuple:
    """Random input, weights, scales, bias and residual of a QConv case, the reference's
    output, and the weights packed as the kernels take them ([OC, KH*KW*C])."""
    b, c, h, wd, oc = sizes
    x, w = _ints(rng, (b, c, h, wd), dtype), _ints(rng, (oc, c, *kernel), torch.int8)
    w_scale = rng.uniform(0.001, 0.01, oc).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    shape = qconv(x, w, x_scale=0.03, x_zero_point=zp, w_scale=w_scale, **attrs).shape
    r, epi = None, _epi(out_scale, activation="Relu")
    if residual == "int8":
        r = _ints(rng, tuple(shape), torch.int8)
        epi.update(residual_scale=0.05, residual_zero_point=2)
    elif residual == "float":
        r = torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))
    want = qconv(x, w, r, x_scale=0.03, x_zero_point=zp, w_scale=w_scale, bias=bias,
                 residual_scale=epi.get("residual_scale", 0.0),
                 residual_zero_point=epi.get("residual_zero_point", 0), out_scale=out_scale,
                 activation="Relu", **attrs)
    packed = w.permute(0, 2, 3, 1).reshape(oc, -1).contiguous()
    return x, packed, w_scale, bias, r, epi, want


CONV_CASES = [  # (B, C, H, W, OC, kernel, stride, pads, dilation, type, zp, residual, out)
    (2, 8, 9, 7, 12, (3, 3), (2, 2), (1, 1, 1, 0), (1, 1), torch.uint8, 128, "int8", 0.1),
    (1, 5, 6, 6, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), torch.int8, 4, None, 0.0),
    (2, 32, 5, 6, 16, (3, 3), (1, 1), (1, 1, 1, 1), (2, 1), torch.int8, -7, "float", 0.0),
    (1, 32, 4, 4, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), torch.int8, 0, "int8", 0.05),
    (1, 3, 11, 9, 8, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), torch.int8, 3, None, 0.1),  # stem
    (1, 24, 5, 5, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), torch.uint8, 120, None, 0.0),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_qconv_kernel_matches_the_reference(case):
    b, c, h, wd, oc, kernel, stride, pads, dil, dtype, zp, residual, out_scale = case
    rng = np.random.default_rng(b * c * h)
    x, packed, w_scale, bias, r, epi, want = _conv_case(
        rng, (b, c, h, wd, oc), kernel, dtype, zp, residual, out_scale,
        {"strides": list(stride), "pads": list(pads), "dilations": list(dil)})
    got = kernels.qconv2d(
        x.to(DEVICE).contiguous(memory_format=torch.channels_last), packed.to(DEVICE), kernel,
        stride, pads, dil, torch.from_numpy(combined_scales(0.03, w_scale)).to(DEVICE),
        torch.from_numpy(bias).to(DEVICE), packed.int().sum(1).to(DEVICE), zp, epi,
        SMALL, None if r is None else r.to(DEVICE))
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    _close(got, want)


def test_fp8_gemm_kernel():
    a, w, bias = _fp8_gemm_case(np.random.default_rng(11), 24, 64, 16)
    want = qgemm(a, w, a_scale=0.02, w_scale=[0.003] * 16, bias=bias, out_dtype="fp16")
    got = kernels.qgemm(a.to(DEVICE), w.to(DEVICE),
                        torch.from_numpy(combined_scales(0.02, [0.003] * 16)).to(DEVICE),
                        torch.from_numpy(bias).to(DEVICE), None, 0,
                        _epi(out_dtype="fp16"), SMALL)
    np.testing.assert_allclose(got.cpu().float().numpy(), want.float().numpy(), rtol=2e-3,
                               atol=2e-3)


def test_triton_tactics_prepare_and_bind_like_the_reference():
    """The tactics' weight re-layout and epilogue plumbing (bound here on the CPU device,
    which the interpreter runs; the builder offers them only on CUDA)."""
    from kiln.kernels import LayerSpec, Target, get_tactic

    rng = np.random.default_rng(12)
    w = rng.integers(-127, 128, (24, 16, 3, 3)).astype(np.int8)
    attrs = {"x_scale": 0.03, "x_zero_point": 3, "w_scale": rng.uniform(0.001, 0.01, 24)
             .astype(np.float32), "bias": rng.standard_normal(24).astype(np.float32),
             "pads": [1, 1, 1, 1], "strides": [1, 1], "activation": "Relu",
             "out_scale": 0.04, "out_zero_point": 0, "out_type": "int8"}
    spec = LayerSpec("conv", "QConv", "kiln", 1, ["x", "w"], ["y"], attrs,
                     constant_inputs={1: w}, input_dtypes=["int8", "int8"])
    tactic = get_tactic("int8-triton-conv-d")
    device = torch.device(DEVICE)
    tensors = {k: t.to(device) for k, t in tactic.prepare(spec, Target(device, "int8")).items()}
    x = _ints(rng, (2, 16, 5, 5), torch.int8)
    got = tactic.bind(spec, tensors, device)(x.to(device))
    _close(got, qconv(x, torch.from_numpy(w), **attrs))

    wg = rng.integers(-127, 128, (40, 48)).astype(np.int8)
    attrs = {"a_scale": 0.05, "a_zero_point": 0, "w_scale": rng.uniform(0.001, 0.01, 40)
             .astype(np.float32), "activation": "GeluTanh", "out_dtype": "fp16"}
    spec = LayerSpec("fc", "QGemm", "kiln", 1, ["a", "w"], ["y"], attrs,
                     constant_inputs={1: wg}, input_dtypes=["int8", "int8"])
    tactic = get_tactic("int8-triton-gemm-d")
    tensors = {k: t.to(device) for k, t in tactic.prepare(spec, Target(device, "int8")).items()}
    a = _ints(rng, (3, 7, 48), torch.int8)
    got = tactic.bind(spec, tensors, device)(a.to(device))
    assert got.shape == (3, 7, 40)
    _close(got, qgemm(a, torch.from_numpy(wg), **attrs))


@pytest.mark.parametrize("qtype,zp", [("int8", 0), ("int8", -5), ("uint8", 128),
                                      pytest.param("fp8e4m3", 0, marks=FP8_OUT)])
def test_quantize_and_dequantize_kernels(qtype, zp):
    from kiln.ops.quantized import dequantize, quantize

    rng = np.random.default_rng(len(qtype) + abs(zp))
    x = torch.from_numpy(rng.standard_normal((2, 6, 5, 7)).astype(np.float32) * 4)
    x.view(-1)[:8] = torch.tensor([0.05, 0.15, -0.25, 1e4, -1e4, 0.0, 2.5, -2.5])  # ties
    x = x.contiguous(memory_format=torch.channels_last)
    want = quantize(x, scale=0.1, zero_point=zp, to=qtype)
    got = kernels.quantize(x.to(DEVICE), 0.1, zp, qtype)
    assert got.dtype == want.dtype and got.stride() == x.stride()
    np.testing.assert_array_equal(got.cpu().float().numpy(), want.float().numpy())
    back = kernels.dequantize(got, 0.1, zp, "fp16")
    np.testing.assert_array_equal(back.cpu().numpy(), dequantize(
        want, scale=0.1, zero_point=zp, out_dtype="fp16").numpy())


@pytest.mark.parametrize("view", ["transposed", "sliced"])
def test_quantize_tactics_take_views_that_do_not_fill_their_storage(view):
    """A permuted view (MultiheadAttention's sequence-first order) or a slice of columns is
    copied to rows first; the bytes are the reference's."""
    from kiln.kernels import LayerSpec, get_tactic
    from kiln.ops.quantized import dequantize, quantize

    rng = np.random.default_rng(len(view))
    base = torch.from_numpy(rng.standard_normal((5, 3, 24)).astype(np.float32) * 3)
    x = base.transpose(0, 1) if view == "transposed" else base[..., 4:20]
    assert not kernels.dense(x)
    device, attrs = torch.device(DEVICE), {"scale": 0.05, "zero_point": 3}
    def bind(name, op, **extra):
        spec = LayerSpec(op, op, "kiln", 1, ["x"], ["y"], {**attrs, **extra})
        return get_tactic(name).bind(spec, {}, device)

    got = bind("quantize-triton", "Quantize")(x.to(DEVICE))
    want = quantize(x, scale=0.05, zero_point=3, to="int8")
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.cpu().numpy(), want.numpy())
    back = bind("dequantize-triton", "Dequantize", out_dtype="fp16")(got.transpose(0, 1).to(DEVICE))
    np.testing.assert_array_equal(back.cpu().numpy(), dequantize(
        want.transpose(0, 1), scale=0.05, zero_point=3, out_dtype="fp16").numpy())


@FP8_OUT
def test_fp8_layers_requantize_to_fp8():
    rng = np.random.default_rng(14)
    a = torch.from_numpy(rng.standard_normal((20, 32)).astype(np.float32) * 30).to(
        torch.float8_e4m3fn)
    w = torch.from_numpy(rng.standard_normal((16, 32)).astype(np.float32) * 30).to(
        torch.float8_e4m3fn)
    want = qgemm(a, w, a_scale=0.02, w_scale=[0.003] * 16, out_scale=0.01,
                 out_type="fp8e4m3")
    got = kernels.qgemm(a.to(DEVICE), w.to(DEVICE),
                        torch.from_numpy(combined_scales(0.02, [0.003] * 16)).to(DEVICE),
                        None, None, 0, _epi(0.01, out_type="fp8e4m3"), SMALL)
    assert got.dtype == torch.float8_e4m3fn
    np.testing.assert_allclose(got.cpu().float().numpy(), want.float().numpy(), rtol=0.07)


TMA_CASES = [  # (B, C, H, W, OC, kernel, stride, pads, dilation, residual, out_scale)
    (2, 32, 6, 6, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), None, 0.05),  # int8 lines of 24
    (2, 32, 6, 6, 48, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "int8", 0.05),
    (3, 32, 8, 10, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), "int8", 0.1),
    (2, 64, 5, 7, 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), "float", 0.0),  # the 2-D GEMM
    (3, 32, 4, 5, 24, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), "int8", 0.05),
    (2, 32, 8, 6, 16, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), None, 0.0),
    (1, 32, 7, 9, 16, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), None, 0.0),  # dilated
    (5, 32, 3, 3, 8, (3, 3), (1, 1), (1, 0, 2, 1), (1, 1), None, 0.05),  # images per tile
    (4, 32, 7, 7, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "int8", 0.05),  # 4 images x 1 row
]


@pytest.mark.parametrize("tma_out", [False, True])
@pytest.mark.parametrize("case", TMA_CASES)
def test_tma_qconv_kernel_matches_the_reference(case, tma_out):
    """The TMA convolution (zero point 0; padding from the copy unit's zero fill), with
    strides through the [B, H/S, S, W/S, S*C] view, tiles of several images, residuals;
    with tma_out the residual and output tiles move by TMA too (clipped at the edges)."""
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    b, c, h, wd, oc, kernel, stride, pads, dil, residual, out_scale = case
    rng = np.random.default_rng(b * c * h + wd)
    x, packed, w_scale, bias, r, epi, want = _conv_case(
        rng, (b, c, h, wd, oc), kernel, torch.int8, 0, residual, out_scale,
        {"strides": list(stride), "pads": list(pads), "dilations": list(dil)})
    assert tma.fits(c, h, wd, kernel, stride, SMALL[2])
    got = tma.qconv2d_tma(
        x.to(DEVICE).contiguous(memory_format=torch.channels_last), packed.to(DEVICE), kernel,
        stride, pads, dil, torch.from_numpy(combined_scales(0.03, w_scale)).to(DEVICE),
        torch.from_numpy(bias).to(DEVICE), epi, (*SMALL, tma_out),
        None if r is None else r.to(DEVICE))
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    _close(got, want)


@pytest.mark.parametrize("block_m,oh,ow,images,want", [
    (64, 14, 14, 64, (16, 2, 2)),  # ResNet-50's 14x14 layers: width first covered 16x16
    (128, 56, 56, 64, (2, 8, 8)), (128, 112, 112, 64, (1, 8, 16)),
    (64, 7, 7, 64, (64, 1, 1)), (64, 7, 7, 1, (1, 8, 8)), (32, 7, 7, 4, (4, 1, 8))])
def test_spatial_tile_computes_the_fewest_rows(block_m, oh, ow, images, want):
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    assert tma.spatial_tile(block_m, oh, ow, images) == want


@pytest.mark.parametrize("args,want", [
    ((64, 14, 14, 64, 2, 132), (16, 2, 2)),  # 392 programs against 512: 3 waves, not 4
    ((64, 7, 7, 64, 4, 132), (1, 8, 8)),  # 196 against 256: 2 waves either way
    ((128, 112, 112, 64, 1, 132), (1, 8, 16))])
def test_spatial_tile_takes_fewer_rows_where_a_wave_is_saved(args, want):
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    assert tma.spatial_tile(*args) == want


def test_spatial_tile_never_computes_more_than_width_first():
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    rng = np.random.default_rng(9)

    def covered(tile, oh, ow, images):
        bb, th, tw = tile
        return -(-images // bb) * bb * -(-oh // th) * th * -(-ow // tw) * tw

    for _ in range(200):
        block_m = 1 << int(rng.integers(4, 9))
        oh, ow, images = (int(v) for v in rng.integers(1, 130, 3))
        tile = tma.spatial_tile(block_m, oh, ow, images)
        assert tile[0] * tile[1] * tile[2] == block_m
        tw = min(1 << (ow - 1).bit_length(), block_m)  # the width-first tile
        th = min(1 << (oh - 1).bit_length(), block_m // tw)
        assert covered(tile, oh, ow, images) <= covered((block_m // (tw * th), th, tw), oh,
                                                        ow, images)


@pytest.mark.parametrize("case", [c for c in TMA_CASES if c[5] == (1, 1) and c[6] == (1, 1)])
def test_persistent_1x1_conv_matches_the_reference(case):
    """A 1x1 stride-1 QConv through the persistent 2-D GEMM, residual included."""
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    b, c, h, wd, oc, kernel, stride, pads, dil, residual, out_scale = case
    rng = np.random.default_rng(b * c + oc)
    x, packed, w_scale, bias, r, epi, want = _conv_case(
        rng, (b, c, h, wd, oc), kernel, torch.int8, 0, residual, out_scale,
        {"strides": list(stride), "pads": list(pads), "dilations": list(dil)})
    got = tma.qconv2d_tma(
        x.to(DEVICE).contiguous(memory_format=torch.channels_last), packed.to(DEVICE), kernel,
        stride, pads, dil, torch.from_numpy(combined_scales(0.03, w_scale)).to(DEVICE),
        torch.from_numpy(bias).to(DEVICE), epi, SMALL, None if r is None else r.to(DEVICE),
        persistent=True)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    _close(got, want)


@pytest.mark.parametrize("tma_out", [False, True])
def test_tma_qconv_kernel_fp8(tma_out):
    tma = pytest.importorskip("kiln.kernels.triton._int8_tma")
    x, w, bias, scales, want = fp8_conv_case(np.random.default_rng(15), (2, 32, 6, 6),
                                             (16, 32, 3, 3), {"strides": [2, 2],
                                                              "pads": [1, 1, 1, 1]})
    packed = w.permute(0, 2, 3, 1).reshape(16, -1).contiguous()
    got = tma.qconv2d_tma(
        x.to(DEVICE).contiguous(memory_format=torch.channels_last), packed.to(DEVICE), (3, 3),
        (2, 2), (1, 1, 1, 1), (1, 1), scales, torch.from_numpy(bias).to(DEVICE),
        _epi(out_dtype="fp16"), (*SMALL, tma_out))
    np.testing.assert_allclose(got.cpu().float().numpy(), want.float().numpy(), rtol=2e-3,
                               atol=2e-3)


@pytest.mark.parametrize("change,offered", [
    ({}, True), ({"x_zero_point": 3}, False), ({"strides": [1, 2]}, False),
    ({"dtype": "uint8"}, False), ({"shape": (2, 96, 6, 6)}, False),  # 1.5 channel blocks
    ({"shape": (2, 64, 7, 7), "strides": [2, 2]}, False),  # the stride does not divide H
    ({"shape": ("batch", 64, 6, 6)}, True)])
def test_tma_tactic_offered_where_the_view_holds(change, offered, monkeypatch):
    from kiln.kernels import LayerSpec

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")  # the interpreter stands in for a GPU
    rng = np.random.default_rng(16)
    shape = change.get("shape", (2, 64, 6, 6))
    w = rng.integers(-127, 128, (16, shape[1], 3, 3)).astype(np.int8)
    attrs = {"x_scale": 0.03, "x_zero_point": change.get("x_zero_point", 0),
             "w_scale": rng.uniform(0.001, 0.01, 16).astype(np.float32),
             "pads": [1, 1, 1, 1], "strides": change.get("strides", [1, 1]),
             "out_scale": 0.04, "out_type": "int8", "activation": "Relu"}
    spec = LayerSpec("conv", "QConv", "kiln", 1, ["x", "w"], ["y"], attrs,
                     constant_inputs={1: w}, input_shapes=[shape, w.shape],
                     input_dtypes=[change.get("dtype", "int8"), "int8"])
    x = _ints(rng, (3, *shape[1:]), torch.int8)
    check_offered("int8-triton-conv-tma-t1", spec, offered, (x,),
                  lambda: qconv(x, torch.from_numpy(w), **attrs))


@pytest.mark.parametrize("kernel,strides,pads,offered", [
    ((1, 1), [1, 1], [0, 0, 0, 0], True), ((3, 3), [1, 1], [1, 1, 1, 1], False),
    ((1, 1), [2, 2], [0, 0, 0, 0], False), ((1, 1), [1, 1], [1, 1, 1, 1], False)])
def test_persistent_conv_tactic_only_for_1x1_stride_1(kernel, strides, pads, offered,
                                                      monkeypatch):
    from kiln.kernels import LayerSpec, Target, get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    rng = np.random.default_rng(17)
    w = rng.integers(-127, 128, (16, 128, *kernel)).astype(np.int8)  # t4: K steps of 128
    attrs = {"x_scale": 0.03, "x_zero_point": 0, "pads": pads, "strides": strides,
             "w_scale": rng.uniform(0.001, 0.01, 16).astype(np.float32),
             "out_scale": 0.04, "out_type": "int8"}
    spec = LayerSpec("conv", "QConv", "kiln", 1, ["x", "w"], ["y"], attrs,
                     constant_inputs={1: w}, input_shapes=[(2, 128, 8, 8), w.shape],
                     input_dtypes=["int8", "int8"])
    tactic = get_tactic("int8-triton-conv-tma-t4-persistent")
    target = Target(torch.device(DEVICE), "int8")
    assert tactic.supports(spec, target) == offered
    float_out = {k: v for k, v in attrs.items() if k not in ("out_scale", "out_type")}
    assert not tactic.supports(dataclasses.replace(spec, attrs=float_out), target)


def test_tma_store_tactic_only_for_residual_layers(monkeypatch):
    """The TMA-store tiles are offered where the layer reads a residual, and the bound
    tactic adds it as the reference does."""
    from kiln.kernels import LayerSpec, Target, get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    rng = np.random.default_rng(17)
    w = rng.integers(-127, 128, (32, 64, 1, 1)).astype(np.int8)
    attrs = {"x_scale": 0.03, "w_scale": rng.uniform(0.001, 0.01, 32).astype(np.float32),
             "residual_scale": 0.05, "out_scale": 0.04, "out_type": "int8",
             "activation": "Relu"}
    spec = LayerSpec("conv", "QConv", "kiln", 1, ["x", "w", "r"], ["y"], attrs,
                     constant_inputs={1: w}, input_shapes=[(2, 64, 5, 6), w.shape, None],
                     input_dtypes=["int8", "int8", "int8"])
    device, tactic = torch.device(DEVICE), get_tactic("int8-triton-conv-tma-t1s")
    target = Target(device, "int8")
    assert not tactic.supports(dataclasses.replace(spec, inputs=["x", "w"]), target)
    assert tactic.supports(spec, target)
    tensors = {k: t.to(device) for k, t in tactic.prepare(spec, target).items()}
    x, r = _ints(rng, (2, 64, 5, 6), torch.int8), _ints(rng, (2, 32, 5, 6), torch.int8)
    cl = torch.channels_last
    got = tactic.bind(spec, tensors, device)(x.to(device).contiguous(memory_format=cl), None,
                                             r.to(device).contiguous(memory_format=cl))
    _close(got, qconv(x, torch.from_numpy(w), r, **attrs))


@pytest.mark.parametrize("m,k,n,out_scale,act", [(37, 48, 32, 0.05, "Relu"),
                                                 (20, 64, 40, 0.0, "GeluTanh")])
@pytest.mark.parametrize("name", ["int8-triton-gemm-tma-t1",
                                  "int8-triton-gemm-tma-t4s",  # output tiles by TMA
                                  "int8-triton-gemm-tma-t4-persistent"])
def test_tma_gemm_tactic_matches_the_reference(m, k, n, out_scale, act, name, monkeypatch):
    """QGemm through the TMA kernel (plain 2-D boxes, one program per tile or per SM; a K
    tail that is not a whole block comes from the zero fill), with a 3-D input whose rows
    are a strided view."""
    from kiln.kernels import Target, get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    rng = np.random.default_rng(m + k)
    spec, w = qgemm_spec(rng, n, k, act, out_scale)
    attrs = spec.attrs
    device = torch.device(DEVICE)
    tactic = get_tactic(name)
    if name.endswith("persistent") and not out_scale:  # float output: more shared memory
        assert not tactic.supports(spec, Target(device, "int8"))  # than the H100 has
        return
    assert tactic.supports(spec, Target(device, "int8"))
    assert not tactic.supports(dataclasses.replace(spec, attrs={**attrs, "a_zero_point": 2}),
                               Target(device, "int8"))
    tensors = {key: t.to(device) for key, t in tactic.prepare(
        spec, Target(device, "int8")).items()}
    wide = _ints(rng, (2, m, k + 8), torch.int8)
    a = wide[..., 8:]  # rows 8 bytes into a wider buffer: copied to aligned rows
    got = tactic.bind(spec, tensors, device)(a.to(device))
    assert got.shape == (2, m, n)
    _close(got, qgemm(a.contiguous(), torch.from_numpy(w), **attrs))


@pytest.mark.parametrize("tile,n,form", [("t1", 40, ""),
                                         ("t4s", 48, ""),  # its output by TMA
                                         ("t4s", 32, "approx")])  # the GPU's tanh
@pytest.mark.parametrize("shape", [(4, 33, 64), (130, 64)], ids=str)
def test_tanh_form_gelu_tactic_stays_within_an_output_step_of_erf(shape, tile, n, form):
    """int8-triton-gemm-tma-*-gelu-tanh[-approx]-for-erf: an erf-GELU layer with INT8
    output through the tanh form gives the exact form's integers (a step apart at most,
    rarely); a layer with another activation is not its to take. The -approx form runs
    the exponential form in the interpreter: its own arithmetic is checked on a GPU."""
    from kiln.kernels import Target, get_tactic

    rng = np.random.default_rng(sum(shape))
    spec, w = qgemm_spec(rng, n, shape[-1], "GeluErf")
    attrs = spec.attrs
    tactic = get_tactic(f"int8-triton-gemm-tma-{tile}-gelu-tanh{'-' if form else ''}{form}"
                        "-for-erf")
    device = torch.device(DEVICE)
    target = Target(device, "int8")
    assert tactic.supports(spec, target) == (DEVICE == "cuda")  # builds on the CPU use none
    assert not tactic.supports(dataclasses.replace(spec, attrs={**attrs, "activation": "Relu"}),
                               target)
    tensors = {k: t.to(device) for k, t in tactic.prepare(spec, target).items()}
    a = _ints(rng, shape, torch.int8)
    got = tactic.bind(spec, tensors, device)(a.to(device))
    want = qgemm(a, torch.from_numpy(w), **attrs)
    assert got.shape == want.shape and len(torch.unique(want)) > 20
    diff = (got.cpu().int() - want.int()).abs()  # the forms differ by 5% of this step at most
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.02
