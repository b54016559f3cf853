"""The torch GEMM tactics of kiln.FusedGemm against the reference op, on contiguous and on
permuted inputs (a GEMM over rows in memory order must give the same view of its result);
on the CPU also oneDNN's fused linear with each activation it takes as a post-op."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.kernels import get_tactic
from kiln.kernels.registry import LayerSpec, Target
from kiln.kernels.torch.gemm import storage_order
from kiln.ops.fused import activate

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _spec(k: int, n: int, activation: str, seed: int) -> LayerSpec:
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    return LayerSpec(name="gemm", op="FusedGemm", domain="kiln", opset=1,
                     inputs=["a", "w", "b"], outputs=["y"],
                     attrs={"trans_b": 1, "activation": activation},
                     constant_inputs={1: weight, 2: bias}, input_dtypes=["fp32"] * 3)


def _input(shape, layout: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if layout == "contiguous":
        return torch.randn(shape, generator=g).to(DEVICE)
    # stored [seq, batch, k], read as [batch, seq, k]: MultiheadAttention's Transpose
    return torch.randn((shape[1], shape[0], *shape[2:]), generator=g).to(DEVICE).transpose(0, 1)


TACTICS = ["gemm-linear", "gemm-matmul"] + (["gemm-onednn-fused"] if DEVICE.type == "cpu" else [])


@pytest.mark.parametrize("tactic", TACTICS)
@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
@pytest.mark.parametrize("shape, n, activation", [((3, 5, 16), 24, ""), ((2, 7, 32), 8, "Relu"),
                                                  ((4, 2, 3, 8), 12, "GeluErf"),
                                                  ((5, 9), 7, "GeluTanh"), ((2, 6, 8), 5, "SiLU"),
                                                  ((3, 4, 8), 6, "Clip")])
def test_tactic_matches_reference(tactic, layout, shape, n, activation):
    if layout == "permuted" and len(shape) < 3:
        pytest.skip("a 2-D input has no leading dims to permute")
    spec = _spec(shape[-1], n, activation, seed=n)
    if activation == "Clip":
        spec.attrs["activation_params"] = [-0.3, 0.4]
    chosen = get_tactic(tactic)
    target = Target(DEVICE)
    assert chosen.supports(spec, target)
    fn = chosen.bind(spec, {k: v.to(DEVICE) for k, v in chosen.prepare(spec, target).items()},
                     DEVICE)
    a = _input(shape, layout, seed=len(shape) + n)
    weight, bias = (torch.from_numpy(spec.constant_inputs[i]).to(DEVICE) for i in (1, 2))
    want = activate(a.contiguous() @ weight.T + bias, activation,
                    spec.attrs.get("activation_params"))
    got = fn(a)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_storage_order():
    x = torch.empty(6, 4, 32)
    assert storage_order(x.transpose(0, 1)) == [1, 0, 2]
    assert storage_order(x) is None                      # already row-major
    assert storage_order(x.transpose(1, 2)) is None      # the last dim is not innermost
    assert storage_order(x[:, :2].transpose(0, 1)) is None  # not dense


@pytest.mark.skipif(DEVICE.type != "cuda", reason="cuBLASLt epilogues need a CUDA GPU")
@pytest.mark.parametrize("activation, precision, tactic", [
    ("Relu", "fp32", "gemm-lt-epilogue"), ("GeluTanh", "fp16", "gemm-lt-epilogue"),
    ("GeluErf", "fp16", "gemm-lt-gelu-tanh-for-erf")])
@pytest.mark.parametrize("shape, n", [((4, 33, 64), 96), ((257, 128), 320)])
def test_cublaslt_epilogues_match_the_exact_activation(activation, precision, tactic, shape, n):
    """Against the exact activation in float64: erf GELU through the tanh form stays within
    FP16's own error of the GEMM (the forms differ by at most 4.8e-4)."""
    spec = _spec(shape[-1], n, activation, seed=n)
    spec.precision = precision
    dtype = torch.float16 if precision == "fp16" else torch.float32
    chosen = get_tactic(tactic)
    assert chosen.supports(spec, Target(DEVICE, precision))
    tensors = {k: v.to(DEVICE, dtype) for k, v in chosen.prepare(spec, Target(DEVICE)).items()}
    a = torch.randn(shape, generator=torch.Generator().manual_seed(n)).to(DEVICE, dtype)
    weight, bias = (torch.from_numpy(spec.constant_inputs[i]).double() for i in (1, 2))
    want = activate(a.double().cpu() @ weight.T + bias, activation, None)
    got = chosen.bind(spec, tensors, DEVICE)(a).double().cpu()
    tol = 2e-3 if precision == "fp16" else 1e-4
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_erf_gelu_keeps_its_exact_form_outside_fp16():
    spec = _spec(16, 8, "GeluErf", seed=1)
    approx = get_tactic("gemm-lt-gelu-tanh-for-erf")
    assert not approx.supports(spec, Target(torch.device("cuda")))  # an FP32 layer
    spec.precision = "fp16"
    assert not approx.supports(spec, Target(torch.device("cpu")))
