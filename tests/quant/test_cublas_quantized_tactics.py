"""Quantized dense layers through cuBLAS against kiln's reference QGemm, on a GPU: INT8
through torch._int_mm (int8-int-mm), FP8 through cuBLASLt (fp8-scaled-mm, and
fp8-scaled-mm-triton with kiln's Triton epilogue after it). The builder's tuner skips a
tactic that raises, so only these tests catch one that never runs. The Triton epilogue
alone (rows_epilogue) runs against the reference epilogue in the interpreter too."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from kiln.kernels import get_tactic
from kiln.kernels.registry import LayerSpec, Target
from kiln.ops.quantized import epilogue, inverse_scale, qgemm

kernels = pytest.importorskip("kiln.kernels.triton._int8_kernels")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FP8_GPU = DEVICE.type == "cuda" and torch.cuda.get_device_capability() >= (8, 9)

EPILOGUES = [  # (activation, out_scale, out_type, out_dtype)
    ("GeluErf", 0.05, "int8", "fp16"),
    ("Relu", 0.0, "int8", "fp16"),
    ("GeluTanh", 0.0, "int8", "fp32"),
    ("", 0.1, "int8", "fp16"),
    ("SiLU", 0.0, "int8", "bf16"),
]
FP8_OUT = [("GeluErf", 0.04, "fp8e4m3", "fp16"), ("", 0.02, "fp8e4m3", "fp16")]


def _epi(activation, out_scale, out_type, out_dtype):
    epi = {"activation": activation, "out_scale": out_scale, "out_type": out_type,
           "out_dtype": out_dtype}
    if out_scale:
        epi["out_inv_scale"] = inverse_scale(out_scale)
    return epi


def _reference_epilogue(y: torch.Tensor, epi: dict) -> torch.Tensor:
    return epilogue(y.float(), 1.0, None, None, 0.0, 0, epi["activation"], None,
                    epi["out_scale"], 0, epi["out_type"], epi["out_dtype"])


def _compare(got: torch.Tensor, want: torch.Tensor, quantized: bool) -> None:
    got, want = got.cpu(), want.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    if quantized and got.dtype == torch.int8:  # one step where float rounding ties differ
        assert int((got.int() - want.int()).abs().max()) <= 1
    elif quantized:  # FP8: one step of its 3-bit mantissa (the product is rounded to fp16
        # first), in a few elements; near zero, where the FP8 tensor cores' accumulator
        # (about 2^-13 of the partial sums, not float32) moves small sums by a few steps,
        # 0.05 of an output unit
        diff = (got.float() - want.float()).abs()
        step = torch.maximum(want.float().abs() / 8, torch.full_like(diff, 0.05))
        bad = ~(diff <= step * 1.01)
        assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} beyond one step: got "
                               f"{got.float()[bad][:6].tolist()}, want "
                               f"{want.float()[bad][:6].tolist()}")
        assert float((diff > 0).float().mean()) < 0.02
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("case", EPILOGUES + (FP8_OUT if DEVICE.type == "cuda" else []))
@pytest.mark.parametrize("shape", [(37, 45), (130, 24), (8, 300)])
def test_rows_epilogue_matches_the_reference(case, shape):
    g = torch.Generator().manual_seed(shape[0] * 7 + len(case[0]))
    y = (torch.randn(shape, generator=g) * 3).to(torch.float16).to(DEVICE)
    epi = _epi(*case)
    got = kernels.rows_epilogue(y, torch.ones(shape[1], device=DEVICE), epi)
    _compare(got, _reference_epilogue(y.cpu(), epi), bool(case[1]))


def _fp8_layer(k: int, n: int, case: tuple, seed: int) -> LayerSpec:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 40).astype(ml_dtypes.float8_e4m3fn)
    activation, out_scale, out_type, out_dtype = case
    attrs = {"a_scale": 0.02, "w_scale": 0.004, "bias": rng.standard_normal(n).astype(
        np.float32), "activation": activation, "out_scale": out_scale, "out_type": out_type,
        "out_dtype": out_dtype}
    return LayerSpec(name="fc", op="QGemm", domain="kiln", opset=1, inputs=["a", "w"],
                     outputs=["y"], attrs=attrs, constant_inputs={1: w},
                     input_dtypes=["fp8e4m3", "fp8e4m3"])


@pytest.mark.skipif(not FP8_GPU, reason="cuBLASLt FP8 needs an Ada or Hopper GPU")
@pytest.mark.parametrize("tactic", ["fp8-scaled-mm", "fp8-scaled-mm-triton"])
@pytest.mark.parametrize("case", EPILOGUES + FP8_OUT + [("", 0.0, "int8", "fp16")])
@pytest.mark.parametrize("rows, k, n", [(64, 128, 96), (3 * 50, 256, 32)])
def test_fp8_scaled_mm_tactics_match_the_reference(tactic, case, rows, k, n):
    layer = _fp8_layer(k, n, case, seed=rows + k + n)
    chosen, target = get_tactic(tactic), Target(DEVICE, "fp8")
    if not chosen.supports(layer, target):
        assert tactic == "fp8-scaled-mm-triton" and not case[0] and not case[1] \
            and case[3] in ("fp16", "bf16")  # nothing after the product: the plain tactic
        return
    fn = chosen.bind(layer, {key: v.to(DEVICE) for key, v in chosen.prepare(
        layer, target).items()}, DEVICE)
    g = torch.Generator().manual_seed(rows)
    a = (torch.randn(rows, k, generator=g) * 40).to(torch.float8_e4m3fn)
    attrs = layer.attrs
    w = torch.from_numpy(layer.constant_inputs[1].view(np.uint8)).view(torch.float8_e4m3fn)
    want = qgemm(a, w, a_scale=0.02, w_scale=0.004, bias=attrs["bias"],
                 activation=case[0], out_scale=case[1], out_type=case[2], out_dtype=case[3])
    got = fn(a.to(DEVICE))
    # the product is rounded to fp16 before the epilogue (cuBLASLt's output type)
    _compare(got, want, bool(case[1]))


@pytest.mark.skipif(DEVICE.type != "cuda", reason="torch._int_mm needs a CUDA GPU")
@pytest.mark.parametrize("case", EPILOGUES[:4] + [("", 0.0, "int8", "fp32")])
@pytest.mark.parametrize("rows, k, n, zero_point", [(64, 128, 96, 0), (150, 64, 40, 3),
                                                     (5, 32, 24, 0)])
def test_int_mm_tactic_matches_the_reference(case, rows, k, n, zero_point):
    rng = np.random.default_rng(rows + k + n)
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    w_scale = (rng.random(n) * 0.01 + 0.001).astype(np.float32)
    activation, out_scale, out_type, out_dtype = case
    attrs = {"a_scale": 0.02, "a_zero_point": zero_point, "w_scale": w_scale,
             "bias": rng.standard_normal(n).astype(np.float32), "activation": activation,
             "out_scale": out_scale, "out_type": out_type, "out_dtype": out_dtype}
    layer = LayerSpec(name="fc", op="QGemm", domain="kiln", opset=1, inputs=["a", "w"],
                      outputs=["y"], attrs=attrs, constant_inputs={1: w},
                      input_dtypes=["int8", "int8"])
    chosen, target = get_tactic("int8-int-mm"), Target(DEVICE, "int8")
    assert chosen.supports(layer, target)
    fn = chosen.bind(layer, {key: v.to(DEVICE) for key, v in chosen.prepare(
        layer, target).items()}, DEVICE)
    a = torch.from_numpy(rng.integers(-128, 128, (rows, k)).astype(np.int8))
    want = qgemm(a, torch.from_numpy(w), **attrs)
    _compare(fn(a.to(DEVICE)), want, bool(out_scale))
