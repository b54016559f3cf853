"""The space-to-depth stem tactic (kiln/kernels/triton/int8_s2d.py) against kiln's
reference QConv. Without a GPU the kernels run in Triton's interpreter (small sizes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.ops.quantized import combined_scales, inverse_scale, qconv
from tests.quant._triton_cases import (
    DEVICE,
    FP8_OUT,
    SMALL,
    check_offered,
    close,
    fp8_conv_case,
    ints,
)

pytest.importorskip("triton")
s2d = pytest.importorskip("kiln.kernels.triton._int8_s2d")
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp")


CASES = [  # (N, C, H, W, OC, kernel, pads, out_scale)
    (2, 3, 11, 9, 8, (7, 7), (3, 3, 3, 3), 0.05),  # ResNet's stem, odd sizes
    (1, 3, 8, 8, 16, (3, 3), (1, 1, 1, 1), 0.0),
    (2, 1, 9, 12, 8, (5, 5), (2, 1, 1, 2), 0.05),  # uneven pads
    (1, 4, 7, 6, 24, (4, 4), (0, 0, 0, 0), 0.0),  # even kernel, no padding
    (1, 2, 10, 7, 8, (3, 5), (1, 2, 0, 2), 0.1),  # rectangular
    (1, 12, 8, 8, 8, (3, 3), (1, 1, 1, 1), 0.05),  # pixels of 48 channels
    (1, 5, 10, 9, 8, (7, 7), (3, 3, 3, 3), 0.05),  # 4 pixels of 32 (20 real)
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_s2d_conv_matches_the_reference(case):
    n, c, h, w, oc, kernel, pads, out_scale = case
    rng = np.random.default_rng(n * c * h + w)
    x, weight = ints(rng, (n, c, h, w)), ints(rng, (oc, c, *kernel))
    w_scale = rng.uniform(0.001, 0.01, oc).astype(np.float32)
    bias = rng.standard_normal(oc).astype(np.float32)
    attrs = {"strides": [2, 2], "pads": list(pads)}
    want = qconv(x, weight, x_scale=0.03, w_scale=w_scale, bias=bias, out_scale=out_scale,
                 activation="Relu", **attrs)
    epi = {"activation": "Relu", "out_type": "int8", "out_dtype": "fp32"}
    if out_scale:
        epi.update(out_scale=out_scale, out_inv_scale=inverse_scale(out_scale))
    packed = s2d.pack_weights(weight, SMALL[2]).to(DEVICE)
    assert packed.shape == (oc, (kernel[0] + 1) // 2 * s2d.channels(c, kernel[1], SMALL[2]))
    got = s2d.qconv2d_s2d(x.to(DEVICE), packed, kernel, pads,
                          torch.from_numpy(combined_scales(0.03, w_scale)).to(DEVICE),
                          torch.from_numpy(bias).to(DEVICE), epi, SMALL)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    close(got, want)


@pytest.mark.parametrize("block_j", [128, 4])
@pytest.mark.parametrize("channels_last", [True, False])
def test_space_to_depth_places_each_pixel(block_j, channels_last):
    """d[n, i, j, (r*2 + s)*C + c] = xp[n, 2i + r, 2j + s, c], zero in the padding
    channels and outside the image; a row of d in one program or split over several."""
    rng = np.random.default_rng(3)
    x = ints(rng, (2, 3, 7, 9))
    pads, kernel = (2, 1, 2, 1), (5, 3)
    xd = x.to(DEVICE)
    if channels_last:
        xd = xd.contiguous(memory_format=torch.channels_last)
    d = s2d.space_to_depth(xd, kernel, pads, 32, block_j).cpu()
    # OH 4 + 3 taps - 1 rows; OW 5 + 2 pixels a view pixel (CP 32 of G 16) - 1 columns
    assert d.shape == (2, 6, 6, 16)
    xp = torch.nn.functional.pad(x, (pads[1], 8, pads[0], 8))
    for i in range(d.shape[1]):
        for j in range(d.shape[2]):
            want = [xp[:, c, 2 * i + r, 2 * j + s] for r in range(2) for s in range(2)
                    for c in range(3)]
            assert torch.equal(d[:, i, j, :12], torch.stack(want, dim=1))
    assert not d[..., 12:].any()


@pytest.mark.parametrize("c,kw,block_k,want", [
    (3, 7, 64, (16, 64)),  # ResNet's stem: 4 pixels of 16 (12 real)
    (3, 7, 32, (16, 64)), (1, 3, 64, (16, 64)),  # 2 pixels of weights, 4 read
    (12, 3, 32, (48, 96)), (12, 7, 64, (48, 192)),  # whole pixels and whole K blocks
    (5, 5, 32, (32, 96))])
def test_view_channels_are_whole_pixels_and_k_blocks(c, kw, block_k, want):
    assert (s2d.pixel_channels(c), s2d.channels(c, kw, block_k)) == want


def _stem_spec(rng, c=3, kernel=(7, 7), strides=(2, 2), zero_point=0, dtype="int8"):
    from kiln.kernels import LayerSpec

    w = rng.integers(-127, 128, (16, c, *kernel)).astype(np.int8)
    attrs = {"x_scale": 0.03, "x_zero_point": zero_point, "strides": list(strides),
             "w_scale": rng.uniform(0.001, 0.01, 16).astype(np.float32),
             "pads": [k // 2 for k in kernel] * 2, "out_scale": 0.04, "out_type": "int8",
             "activation": "Relu", "bias": rng.standard_normal(16).astype(np.float32)}
    return LayerSpec("stem", "QConv", "kiln", 1, ["x", "w"], ["y"], attrs,
                     constant_inputs={1: w}, input_shapes=[(2, c, 12, 10), w.shape],
                     input_dtypes=[dtype, "int8"]), w


@pytest.mark.parametrize("change,offered", [
    ({}, True), ({"strides": (1, 1)}, False), ({"zero_point": 2}, False),
    ({"dtype": "uint8"}, False), ({"kernel": (1, 1)}, False),
    ({"c": 16}, False)])  # 4 taps x 4 x 16 = 256 channels: wide enough already
def test_s2d_tactic_offered_for_stride_2_over_few_channels(change, offered, monkeypatch):
    monkeypatch.setenv("KILN_TRITON_ON_CPU", "1")  # the interpreter stands in for a GPU
    rng = np.random.default_rng(5)
    spec, w = _stem_spec(rng, **change)
    x = ints(rng, (2, 3, 12, 10))
    check_offered("int8-triton-conv-s2d-128x64", spec, offered, (x,),
                  lambda: qconv(x, torch.from_numpy(w), **spec.attrs))


@FP8_OUT
def test_s2d_conv_fp8():
    x, w, bias, scales, want = fp8_conv_case(np.random.default_rng(15), (2, 3, 10, 10),
                                             (16, 3, 7, 7), {"strides": [2, 2],
                                                             "pads": [3, 3, 3, 3]})
    got = s2d.qconv2d_s2d(x.to(DEVICE), s2d.pack_weights(w, 64).to(DEVICE), (7, 7),
                          (3, 3, 3, 3), scales, torch.from_numpy(bias).to(DEVICE),
                          {"out_type": "int8", "out_dtype": "fp16"}, (64, 64, 64, 4, 3))
    np.testing.assert_allclose(got.cpu().float().numpy(), want.float().numpy(), rtol=2e-3,
                               atol=2e-3)
