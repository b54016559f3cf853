"""The NHWC max-pool Triton kernel (compiled on a GPU, else under the interpreter), against
kiln's MaxPool op."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or Triton's interpreter (set by tests/conftest.py on CPU machines)")

from kiln.kernels.triton.pool import maxpool_nhwc  # noqa: E402
from kiln.ops.conv import resolve_pads  # noqa: E402
from kiln.ops.pool import max_pool  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, else interpreted
CASES = [  # shape, kernel, strides, pads, ceil_mode, auto_pad
    ((2, 5, 9, 7), [3, 3], [2, 2], [1, 1, 1, 1], 0, "NOTSET"),
    ((1, 3, 8, 8), [2, 2], [2, 2], [0, 0, 0, 0], 0, "NOTSET"),
    ((1, 4, 7, 6), [3, 2], [2, 1], [0, 1, 1, 0], 1, "NOTSET"),
    ((2, 3, 6, 5), [2, 2], [2, 2], None, 0, "SAME_UPPER"),
    ((1, 130, 4, 4), [3, 3], [1, 1], [1, 1, 1, 1], 0, "NOTSET"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int8, torch.uint8,
                                   torch.float8_e4m3fn])
def test_matches_reference(case, dtype):
    """Quantized activations too (a quantize step moved in front of the pool): all-negative
    int8 windows check that the padding reads as below every value, not as 0."""
    shape, kernel, strides, pads, ceil, auto_pad = case
    g = torch.Generator().manual_seed(len(str(case)))
    if dtype.is_floating_point:
        x = torch.randn(shape, generator=g) * (30 if dtype == torch.float8_e4m3fn else 1)
    else:
        low = -128 if dtype == torch.int8 else 0
        x = torch.randint(low, low + 256, shape, generator=g)
        if dtype == torch.int8:
            x[:, :1] = -torch.randint(1, 129, x[:, :1].shape, generator=g)
    x = x.to(dtype).to(DEVICE).contiguous(memory_format=torch.channels_last)
    want = max_pool(x.contiguous(), kernel_shape=kernel, strides=strides, pads=pads,
                    ceil_mode=ceil, auto_pad=auto_pad)
    full = resolve_pads(x, kernel, strides, [1, 1], pads, auto_pad)
    got = maxpool_nhwc(x, kernel, strides, list(full), bool(ceil))
    assert got.shape == want.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0)


@pytest.mark.parametrize("key", ["16k", "2k"])
def test_every_tile_matches_reference(key):
    """The tiles the tuner times (programs of more or fewer pixels, more warps), on a map
    whose pixels end inside a program and channels beyond one block."""
    from kiln.kernels.triton.pool import POOL_CONFIGS

    g = torch.Generator().manual_seed(len(key))
    x = torch.randint(-128, 128, (2, 80, 13, 11), generator=g).to(torch.int8)
    x = x.to(DEVICE).contiguous(memory_format=torch.channels_last)
    want = max_pool(x.contiguous(), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    got = maxpool_nhwc(x, [3, 3], [2, 2], [1, 1, 1, 1], False, POOL_CONFIGS[key])
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=0)
