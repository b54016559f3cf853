"""The fused residual-add + LayerNorm Triton kernel (compiled on a GPU, else run by Triton's
interpreter) against kiln's reference LayerNorm: several shapes and axes, permuted and
broadcast residuals, with and without scale, shift and the sum output, fp32 and fp16."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from kiln.kernels.triton.layernorm import add_layer_norm, rows_view  # noqa: E402
from kiln.ops.fused import layer_norm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, else interpreted

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or Triton's interpreter (set by tests/conftest.py on CPU machines)")


def _random(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 2 + 0.5).to(dtype).to(DEVICE)


CASES = [  # (shape, axis, residual layout)
    ((4, 6, 32), -1, "same"),
    ((4, 6, 32), -1, "permuted"),     # MHA's output: a [1, 0, 2] view of [6, 4, 32]
    ((3, 5, 40), -1, "broadcast"),    # a [40] residual (a bias)
    ((3, 5, 40), -1, "table"),        # a [1, 5, 40] residual (BERT's position rows)
    ((3, 5, 40), -1, "wider"),        # x broadcasts: a [1, 5, 40] x beside a full residual
    ((2, 3, 4, 10), 2, "same"),       # two normalized dims
    ((7, 100), -1, None),
    ((1, 1, 1030), -1, "permuted"),   # a row wider than one warp's share, odd size
]


@pytest.mark.parametrize("shape, axis, layout", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("config", [None, (1, 1), (4, 1)], ids=str)  # (rows, warps)
def test_matches_reference(shape, axis, layout, dtype, affine, config):
    seed = hash((shape, axis, layout, affine)) % 2**31
    x = _random((1, *shape[1:]) if layout == "wider" else shape, dtype, seed)
    lead = axis if axis >= 0 else len(shape) + axis
    residual = None
    if layout in ("same", "wider"):
        residual = _random(shape, dtype, seed + 1)
    elif layout == "permuted":
        residual = _random((shape[1], shape[0], *shape[2:]), dtype, seed + 1).transpose(0, 1)
    elif layout == "broadcast":
        residual = _random(shape[lead:], dtype, seed + 1)
    elif layout == "table":
        residual = _random((1, *shape[1:]), dtype, seed + 1)
    scale = _random(shape[lead:], dtype, seed + 2) if affine else None
    shift = _random(shape[lead:], dtype, seed + 3) if affine else None
    y, total, q = add_layer_norm(x, residual, scale, shift, axis, 1e-5,
                                 want_sum=residual is not None, config=config)
    assert q is None
    want_y, want_sum = layer_norm(x, residual, scale, shift, axis=axis, epsilon=1e-5,
                                  num_outputs=2)
    tol = 1e-5 if dtype == torch.float32 else 4e-3
    assert y.dtype == dtype and y.shape == want_y.shape
    torch.testing.assert_close(y.float(), want_y.float(), atol=tol, rtol=tol)
    if residual is not None:
        torch.testing.assert_close(total, want_sum, atol=0, rtol=0)  # the same rounded sum


FP8_OUT = pytest.mark.skipif(DEVICE == "cpu", reason="the Triton interpreter's float32 -> "
                             "float8 conversion is wrong; run on a GPU")


@pytest.mark.parametrize("to, zero_point", [("int8", 0), ("uint8", 128),
                                            pytest.param("fp8e4m3", 0, marks=FP8_OUT)])
@pytest.mark.parametrize("want_y", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 40), (2, 1030)], ids=str)
@pytest.mark.parametrize("config", [None, (4, 1)], ids=str)  # 15 rows: the last program's 4th
def test_quantized_output_is_the_quantize_step_of_y(to, zero_point, want_y, shape, config):
    """The third output (fuse_layernorm_quantize) holds y as stored quantized, byte for byte
    as kiln's reference computes it, with or without y written."""
    from kiln.ops.quantized import inverse_scale
    from kiln.quant import arith

    seed = len(to) * 1000 + shape[-1]
    x, residual = _random(shape, torch.float16, seed), _random(shape, torch.float16, seed + 1)
    scale = _random(shape[-1:], torch.float16, seed + 2)
    step = 0.031 if to != "fp8e4m3" else 0.01
    attrs = {"quantize_scale": step, "quantize_zero_point": zero_point, "quantize_to": to}
    y, total, q = add_layer_norm(x, residual, scale, None, -1, 1e-5, want_sum=True,
                                 quantize=attrs, want_y=want_y, config=config)
    want_y_, want_sum, want_q = layer_norm(x, residual, scale, None, epsilon=1e-5,
                                           num_outputs=3, **attrs)
    torch.testing.assert_close(total, want_sum, atol=0, rtol=0)
    assert (y is not None) == want_y and q.dtype == want_q.dtype
    stored = add_layer_norm(x, residual, scale, None, -1, 1e-5, want_sum=False,
                            config=config)[0]
    torch.testing.assert_close(stored.float(), want_y_.float(), atol=4e-3, rtol=4e-3)
    if want_y:
        assert torch.equal(y, stored)
    expected = arith.quantize(stored, inverse_scale(step), zero_point, qtype=to,
                              inv_scale=True)  # of the kernel's own y, as epilogues do
    assert torch.equal(q.view(torch.uint8) if to == "fp8e4m3" else q,
                       expected.view(torch.uint8) if to == "fp8e4m3" else expected)
    assert len(torch.unique(q.float())) > 10  # real values, not one saturated level


def test_rows_view_reads_strides_and_refuses_split_rows():
    t = torch.empty(6, 4, 32).transpose(0, 1)            # [4, 6, 32] with strides (32, 128, 1)
    assert rows_view(t, 2) == (4, 6, 32, 128)
    assert rows_view(torch.empty(2, 3, 5, 8), 3) == (6, 5, 40, 8)  # leading dims merged
    assert rows_view(torch.empty(8, 4).t(), 1) is None            # a row that is not contiguous


@pytest.mark.parametrize("shape,offered", [((8, 128, 768), True), ((8, 128, 4096), False),
                                           (("batch", 128, 768), True),
                                           ((8, 128, "width"), False), (None, False)])
def test_one_warp_tactics_take_static_short_rows(shape, offered, monkeypatch):
    """The one-warp-a-row tactics hold a row in one warp's registers: offered only where the
    normalized size is known and at most SHORT_ROW."""
    from kiln.kernels import LayerSpec, Target, get_tactic

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    spec = LayerSpec("ln", "LayerNorm", "kiln", 1, ["x", "r"], ["y"], {"axis": -1},
                     precision="fp16", input_shapes=[shape, shape])
    target = Target(torch.device(DEVICE), "fp16")
    assert get_tactic("layernorm-triton").supports(spec, target)
    for name in ("layernorm-triton-w1", "layernorm-triton-rows4-w1"):
        assert get_tactic(name).supports(spec, target) == offered


@pytest.mark.parametrize("shape, config", [((3, 5, 40), None), ((2, 1030), (2, 1))], ids=str)
def test_float32_y_from_float16_inputs(shape, config):
    """out_dtype: an FP16 engine's last LayerNorm writes float32 (rounded once, from the
    float32 result) with the sum still in float16."""
    x, residual = _random(shape, torch.float16, 7), _random(shape, torch.float16, 8)
    scale, shift = _random(shape[-1:], torch.float16, 9), _random(shape[-1:], torch.float16, 10)
    y, total, _ = add_layer_norm(x, residual, scale, shift, -1, 1e-5, want_sum=True,
                                 config=config, y_dtype=torch.float32)
    want_y, want_sum = layer_norm(x, residual, scale, shift, axis=-1, epsilon=1e-5,
                                  num_outputs=2, out_dtype=1)
    assert y.dtype == want_y.dtype == torch.float32 and total.dtype == torch.float16
    torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total, want_sum, atol=0, rtol=0)
