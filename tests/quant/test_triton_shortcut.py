"""kiln.QConvShortcut: the fused kernel (kiln/kernels/triton/_int8_shortcut.py) and its
tactics against the reference, which is the two layers one after the other. Without a GPU
the kernels run in Triton's interpreter (small sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.ops.qconv_shortcut import qconv_shortcut
from kiln.ops.quantized import combined_scales, inverse_scale, qconv
from tests.quant._triton_cases import DEVICE, check_offered, close, epi, ints

pytest.importorskip("triton")
fused = pytest.importorskip("kiln.kernels.triton._int8_shortcut")

TILE = (32, 32, 3, 4, 2)  # BLOCK_M, BLOCK_N, row blocks per program, warps, stages

CASES = [  # (batch, C, H, W, projection C, stride, N, activation, out, projection out)
    (2, 32, 5, 6, 48, 2, 40, "Relu", "int8", "int8"),  # SC short of its box; a partial N block
    (3, 64, 4, 4, 64, 1, 64, "Relu", "int8", "int8"),  # rows end inside a program's blocks
    (1, 96, 3, 5, 32, 2, 32, "", "fp32", "uint8"),  # C short of its box; a float output
    (2, 16, 7, 3, 256, 1, 48, "Relu", "uint8", "int8"),  # the deepest projection
]


def _attrs(rng, n: int, stride: int, act: str, out: str, s_out: str) -> dict:
    attrs = {"x_scale": 0.02, "w_scale": rng.uniform(0.002, 0.01, n).astype(np.float32),
             "bias": rng.standard_normal(n).astype(np.float32), "activation": act,
             "residual_scale": 0.06, "residual_zero_point": 0,
             "shortcut_x_scale": 0.03, "shortcut_strides": [stride, stride],
             "shortcut_w_scale": rng.uniform(0.002, 0.01, n).astype(np.float32),
             "shortcut_bias": rng.standard_normal(n).astype(np.float32),
             "shortcut_out_scale": 0.06, "shortcut_out_type": s_out,
             "shortcut_out_zero_point": 128 if s_out == "uint8" else 0}
    if s_out == "uint8":
        attrs["residual_zero_point"] = 128
    if out == "fp32":
        attrs["out_dtype"] = "fp32"
    else:
        attrs.update(out_scale=0.05, out_type=out, out_zero_point=0 if out == "int8" else 20)
    return attrs


def _operands(case):
    batch, c, h, w, sc, stride, n, act, out, s_out = case
    rng = np.random.default_rng(batch * c + sc + n)
    x, sx = ints(rng, (batch, c, h, w)), ints(rng, (batch, sc, h * stride, w * stride))
    wt, swt = ints(rng, (n, c, 1, 1)), ints(rng, (n, sc, 1, 1))
    return x, wt, sx, swt, _attrs(rng, n, stride, act, out, s_out)


def test_the_reference_is_the_two_layers():
    x, w, sx, sw, attrs = _operands(CASES[0])
    r = qconv(sx, sw, x_scale=0.03, w_scale=attrs["shortcut_w_scale"],
              bias=attrs["shortcut_bias"], strides=[2, 2], out_scale=0.06)
    assert r.dtype == torch.int8 and r.shape[2:] == x.shape[2:]
    plain = {k: v for k, v in attrs.items() if not k.startswith("shortcut_")}
    assert torch.equal(qconv_shortcut(x, w, sx, sw, **attrs), qconv(x, w, r, **plain))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fused_kernel_matches_the_two_layers(case):
    x, w, sx, sw, attrs = _operands(case)
    want = qconv_shortcut(x, w, sx, sw, **attrs)
    s_epi = {"out_scale": 0.06, "out_inv_scale": inverse_scale(0.06),
             "out_type": attrs["shortcut_out_type"],
             "out_zero_point": attrs["shortcut_out_zero_point"]}
    layer_epi = epi(attrs.get("out_scale", 0.0), activation=attrs["activation"],
                    residual_scale=0.06, residual_zero_point=attrs["residual_zero_point"],
                    **{k: attrs[k] for k in ("out_type", "out_zero_point") if k in attrs})

    def on(t):
        return t.to(DEVICE)

    def last(t):
        return on(t).contiguous(memory_format=torch.channels_last)

    got = fused.qconv_shortcut(
        last(x), on(w.reshape(w.shape[0], -1)).contiguous(),
        on(torch.from_numpy(combined_scales(0.02, attrs["w_scale"]))), on(torch.from_numpy(
            attrs["bias"])), layer_epi, last(sx), on(sw.reshape(sw.shape[0], -1)).contiguous(),
        on(torch.from_numpy(combined_scales(0.03, attrs["shortcut_w_scale"]))),
        on(torch.from_numpy(attrs["shortcut_bias"])), s_epi, case[5], TILE)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    close(got, want)


def _spec(case, zero_point: int = 0):
    from kiln.kernels import LayerSpec

    x, w, sx, sw, attrs = _operands(case)
    attrs["x_zero_point"] = zero_point
    spec = LayerSpec("tail", "QConvShortcut", "kiln", 1, ["x", "w", "sx", "sw"], ["y"], attrs,
                     constant_inputs={1: w.numpy(), 3: sw.numpy()},
                     input_shapes=[tuple(x.shape), tuple(w.shape), tuple(sx.shape),
                                   tuple(sw.shape)],
                     input_dtypes=["int8", "int8", "int8", "int8"])
    return spec, (x, None, sx, None), lambda: qconv_shortcut(x, w, sx, sw, **attrs)


@pytest.mark.parametrize("tactic", ["int8-triton-conv-shortcut-64x64x8",
                                    "int8-triton-conv-shortcut-split"])
@pytest.mark.parametrize("case", [(2, 32, 3, 4, 64, 2, 40, "Relu", "int8", "int8"), CASES[1]],
                         ids=str)
def test_tactics_match_the_reference(tactic, case, monkeypatch):
    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")  # the interpreter stands in for a GPU
    spec, args, want = _spec(case)
    check_offered(tactic, spec, True, args, want)


@pytest.mark.parametrize("tactic", ["int8-triton-conv-shortcut-128x64x8",
                                    "int8-triton-conv-shortcut-split"])
@pytest.mark.parametrize("change", ["deep", "zero point", "projection zero point"])
def test_tactics_not_offered(tactic, change, monkeypatch):
    """Beyond one box of depth (which fuse_projection_shortcut does not fold), or with a
    zero point on either input (the kernels subtract none), neither form runs."""
    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    case = (1, 32, 2, 2, 512, 1, 32, "Relu", "int8", "int8") if change == "deep" else CASES[0]
    spec, args, want = _spec(case, zero_point=3 if change == "zero point" else 0)
    if change == "projection zero point":
        spec.attrs["shortcut_x_zero_point"] = -2
    check_offered(tactic, spec, False, args, want)


def test_split_tactic_needs_the_strided_map_size(monkeypatch):
    """A stride-2 projection over a map of dynamic size: the split form (whose TMA view is
    laid out at build) is not offered, the fused one (pointer loads) is, and runs."""
    import dataclasses

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    spec, args, want = _spec((2, 32, 3, 4, 64, 2, 40, "Relu", "int8", "int8"))
    shapes = list(spec.input_shapes)
    shapes[0], shapes[2] = (None, 32, None, None), (None, 64, None, None)
    spec = dataclasses.replace(spec, input_shapes=shapes)
    check_offered("int8-triton-conv-shortcut-split", spec, False, args, want)
    check_offered("int8-triton-conv-shortcut-64x64x8", spec, True, args, want)


@pytest.mark.parametrize("depths,folds", [((64, 64), True), ((128, 256), True),
                                          ((256, 512), False), ((48, 40), False)])
def test_foldable_where_the_fused_kernel_runs(depths, folds, monkeypatch):
    from kiln.kernels.triton.int8_shortcut import foldable

    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")
    assert foldable(torch.device(DEVICE), *depths) == folds
