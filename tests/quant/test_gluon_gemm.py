"""The Gluon INT8 GEMM (kiln/kernels/triton/_int8_gluon.py) against kiln's reference QGemm.
Gluon kernels do not run in Triton's interpreter: the values are checked on a Hopper GPU
only; what it takes is checked everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.ops.quantized import combined_scales, qgemm
from tests.quant._triton_cases import close, ints, qgemm_spec

pytest.importorskip("triton")
gluon_gemm = pytest.importorskip("kiln.kernels.triton._int8_gluon")
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)
W_SCALE = (0.0005, 0.002)  # K up to 768: outputs of a few steps, not all saturated


def _epi(out_scale: float, activation: str, out_dtype: str = "fp16", **extra) -> dict:
    epi = {"activation": activation, "out_type": "int8", "out_dtype": out_dtype, **extra}
    if out_scale:
        epi.update(out_scale=out_scale, out_inv_scale=1.0 / out_scale)
    return epi


@pytest.mark.skipif(not HOPPER, reason="Gluon's Hopper kernel: a GPU of compute capability 9.0")
@pytest.mark.parametrize("case", [  # (M, K, N, out_scale, activation, tile)
    (200, 256, 256, 0.05, "Relu", "g3"),  # rows past the last whole tile
    (130, 96, 48, 0.0, "", "g3"),  # K and N shorter than a tile: the copy unit's zero fill
    (256, 768, 512, 0.02, "GeluTanh", "g4"),
    (96, 384, 256, 0.0, "GeluTanh", "g4k64"),  # float16 out, four stages
    (150, 512, 128, 0.05, "Relu", "g6"),  # one warpgroup, 64-row tiles
    (2048, 256, 1152, 0.05, "GeluTanh", "g3p"),  # 144 tiles: some programs take two
    (300, 384, 512, 0.0, "Relu", "g4p"),  # float16 out through the persistent kernel
    (4100, 256, 768, 0.0, "", "g6p"),  # 65 x 6 tiles over the SMs: uneven shares
    (300, 256, 768, 0.05, "Relu", "g5"),  # 128 + 64 columns a tile
    (200, 512, 208, 0.0, "GeluTanh", "g5"),  # the second part's columns mostly past N
    (130, 384, 112, 0.05, "", "g5"),  # the second part wholly past N (its zero fill)
    (4100, 256, 2304, 0.05, "GeluTanh", "g5p"),  # 33 x 12 tiles, persistent
    (2100, 320, 1024, 0.05, "GeluTanh", "g4k64p"),  # K steps of 64, the last one short
    (700, 384, 400, 0.0, "Relu", "g5k64p"),
], ids=str)
def test_gluon_gemm_matches_the_reference(case):
    m, k, n, out_scale, act, tile = case
    rng = np.random.default_rng(m + k + n)
    a, w = ints(rng, (m, k)), ints(rng, (n, k))
    w_scale = rng.uniform(0.0005, 0.002, n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    want = qgemm(a, w, a_scale=0.02, w_scale=w_scale, bias=bias, out_scale=out_scale,
                 activation=act, out_dtype="fp16")
    got = gluon_gemm.qgemm_gluon(
        a.cuda(), w.cuda(), torch.from_numpy(combined_scales(0.02, w_scale)).cuda(),
        torch.from_numpy(bias).cuda(), _epi(out_scale, act), gluon_gemm.GLUON_CONFIGS[tile])
    assert got.dtype == want.dtype and got.shape == want.shape
    close(got, want)


def test_gelu_needs_no_clamp_below_its_least_value():
    """low_clamp drops the clamp at -128 for GELU outputs only where the tanh form's least
    value, with room for the tanh instruction's error, stays above it in output steps."""
    y = torch.linspace(-8, 8, 200001, dtype=torch.float64)
    gelu = 0.5 * y * (1 + torch.tanh(0.7978845608028654 * (y + 0.044715 * y ** 3)))
    assert float(gelu.min()) > -gluon_gemm.GELU_LEAST * (1 - 2 ** -10)
    act = gluon_gemm.ACTIVATIONS
    assert not gluon_gemm.low_clamp(act["GeluTanh"], 64.0)  # BERT FC1's step, 1/64
    assert gluon_gemm.low_clamp(act["GeluTanh"], 1000.0)  # -0.17 * 1000 < -128
    assert gluon_gemm.low_clamp(act[""], 1.0) and not gluon_gemm.low_clamp(act["Relu"], 1e6)


@pytest.mark.parametrize("epi,n,k,taken", [
    (_epi(0.05, "Relu"), 64, 128, True), (_epi(0.0, "GeluTanh"), 24, 96, True),
    (_epi(0.05, "Sigmoid"), 64, 128, False),  # an activation it does not compute
    (_epi(0.05, "", out_zero_point=3), 64, 128, False),
    (_epi(0.0, "", out_dtype="fp32"), 64, 128, False),
    (_epi(0.05, "Relu"), 40, 128, False),  # 40-byte rows: no TMA store
    (_epi(0.05, "Relu"), 64, 100, False),  # K not in whole 32-byte steps
    (_epi(0.05, "Relu", residual_scale=0.1), 64, 128, False)])
def test_gluon_gemm_takes_what_it_computes(epi, n, k, taken):
    assert gluon_gemm.supported(epi, n, k) == taken
    if not taken:
        with pytest.raises(ValueError, match="not one it takes"):
            gluon_gemm.qgemm_gluon(torch.zeros(8, k, dtype=torch.int8),
                                   torch.zeros(n, k, dtype=torch.int8), torch.ones(n), None,
                                   epi, gluon_gemm.GLUON_CONFIGS["g3"])


def test_gluon_tactics_are_offered_on_hopper_only():
    """Offered to the tuner on a Hopper GPU only, for the layers the kernel takes; the erf
    form computes the tanh form by the tanh instruction."""
    from kiln.kernels import Target, get_tactic

    spec, _ = qgemm_spec(np.random.default_rng(1), 64, 128, "Relu", w_scale=W_SCALE)
    erf_spec, _ = qgemm_spec(np.random.default_rng(2), 64, 128, "GeluErf", w_scale=W_SCALE)
    plain, erf = get_tactic("int8-gluon-gemm-g4"), get_tactic(
        "int8-gluon-gemm-g4-gelu-tanh-approx-for-erf")
    assert erf.epilogue(erf_spec)["activation"] == "GeluTanh"
    assert erf.epilogue(erf_spec)["fast_tanh"] and "fast_tanh" not in plain.epilogue(spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = Target(device, "int8")
    assert plain.supports(spec, target) == HOPPER
    assert not plain.supports(erf_spec, target) and erf.supports(erf_spec, target) == HOPPER
    assert not erf.supports(spec, target)


@pytest.mark.skipif(not HOPPER, reason="Gluon's Hopper kernel: a GPU of compute capability 9.0")
@pytest.mark.parametrize("name,activation", [("int8-gluon-gemm-g3p", "Relu"),
                                             ("int8-gluon-gemm-g4", ""),
                                             ("int8-gluon-gemm-g5", "Relu"),
                                             ("int8-gluon-gemm-g4-gelu-tanh-approx-for-erf",
                                              "GeluErf")])
def test_gluon_tactic_matches_the_reference(name, activation):
    """Bound as an engine binds it, on a 3-D input whose rows are a strided view; the erf
    form stays within an output step of erf (rarely a step apart)."""
    from kiln.kernels import Target, get_tactic

    rng = np.random.default_rng(len(name))
    spec, w = qgemm_spec(rng, 96, 256, activation, w_scale=W_SCALE)
    tactic, device = get_tactic(name), torch.device("cuda")
    assert tactic.supports(spec, Target(device, "int8"))
    tensors = {k: t.to(device) for k, t in tactic.prepare(spec, Target(device, "int8")).items()}
    wide = ints(rng, (2, 150, 256 + 16))
    a = wide[..., 16:]
    got = tactic.bind(spec, tensors, device)(a.to(device)).cpu()
    want = qgemm(a.contiguous(), torch.from_numpy(w), **spec.attrs)
    assert got.shape == want.shape
    diff = (got.int() - want.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.02


@pytest.mark.parametrize("config,ok", [
    ((128, 256, 128, 8, 3), True), ((64, 128, 128, 4, 4, True), True),
    ((128, 192, 128, 8, 3), True), ((128, 96, 64, 8, 4), True),  # 128 + 64, 64 + 32
    ((128, 224, 128, 8, 3), False),  # 128 + 96: no power of two for the second part
    ((128, 128, 128, 4, 3), False),  # 4 warps of 16 rows cover 64, not 128
    ((128, 128, 128, 8, 1), False),  # one slot: the refill would overwrite the MMA's operands
    ((128, 120, 128, 8, 3), False)])  # no int8 MMA width divides 120
def test_gluon_tiles_are_checked(config, ok):
    assert all(gluon_gemm.check_config(c) is None for c in gluon_gemm.GLUON_CONFIGS.values())
    if ok:
        gluon_gemm.check_config(config)
    else:
        with pytest.raises(ValueError, match="BLOCK_M = 16 x warps"):
            gluon_gemm.check_config(config)
