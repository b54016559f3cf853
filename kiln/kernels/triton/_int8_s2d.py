"""A stride-2 convolution over few channels (an RGB stem) as a stride-1 one over whole
channel blocks, for the TMA kernel (_int8_tma).

With kh = 2a + r and kw = 2b + s (r, s in {0, 1}), a stride-2 KHxKW convolution is

    y[oh, ow] = sum over a, b, r, s, c of  w[c, 2a+r, 2b+s] * xp[2(oh+a) + r, 2(ow+b) + s, c]

(xp the padded input), as MLPerf's ResNet submissions and TensorRT rewrite the stem
("space to depth"). `space_to_depth` writes each 2x2 block of input pixels as one pixel of
G channels (4*C real, padded to whole 16-byte units):

    d[n, i, j, (r*2 + s)*C + c] = xp[n, 2i + r, 2j + s, c]

and the TMA kernel reads d through a view whose pixels overlap: pixel (i, j) of the view
is the CP = T*G bytes of d's pixels j .. j+T-1 in row i (T >= ceil(KW/2), so that CP is
whole K blocks; the weights of the taps past ceil(KW/2) are zero). The layer is then a
ceil(KH/2) x 1 stride-1 unpadded convolution over CP channels, one box per (tap, channel
block) as for any wide layer. ResNet-50's 7x7/2 stem over 3 channels becomes 4 taps of 64
channels (48 real) read from 16-byte pixels: the tensor written between the two kernels is
a quarter of what writing the 64 channels out (an unfold) took, and the overlapping reads
are served from L2.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kiln.kernels.triton._int8_kernels import _bytes
from kiln.kernels.triton._int8_tma import _launch
from kiln.kernels.triton._pdl import launch, wait_for_inputs


@triton.jit
def _space_to_depth_kernel(x_ptr, d_ptr, H, W, HD, WD, sxb, sxc, sxh, sxw, PT, PL,
                           C: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
                           BLOCK_J: tl.constexpr, PDL: tl.constexpr = False):
    """The tile is [GP, BLOCK_J], so a warp's lanes run along the output columns j and a
    load reads every other byte of one input row (lanes along the channels, whose sources
    lie in C planes and two rows, ran the stem's unfold 1.3x slower on the H100)."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)  # image * HD + i: one row of d
    image = row // HD
    i = row % HD
    j = (tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J))[None, :]
    g = tl.arange(0, GP)[:, None]
    c = g % C
    s = (g // C) % 2
    r = g // (2 * C)
    h = 2 * i + r - PT
    w = 2 * j + s - PL
    in_row = j < WD
    inside = in_row & (g < 4 * C) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    v = tl.load(x_ptr + image.to(tl.int64) * sxb + h * sxh + c * sxc + w * sxw, mask=inside,
                other=0)
    tl.store(d_ptr + (row.to(tl.int64) * WD + j) * G + g, v, mask=in_row & (g < G))


def real_channels(c: int, kw: int) -> int:
    """The view's channels that carry input values: ceil(KW/2) * 4 * C."""
    return (kw + 1) // 2 * 4 * c


def pixel_channels(c: int) -> int:
    """G: the channels of one pixel of d, 4 * C rounded up to whole 16-byte units (the
    view's pixel stride)."""
    return -(-4 * c // 16) * 16


def channels(c: int, kw: int, block_k: int) -> int:
    """CP: the view's channels, ceil(KW/2) pixels of d rounded up to whole K blocks (and
    whole pixels)."""
    g = pixel_channels(c)
    unit = g * block_k // math.gcd(g, block_k)
    return -(-(kw + 1) // 2 * g // unit) * unit


def pack_weights(w: torch.Tensor, block_k: int) -> torch.Tensor:
    """[OC, C, KH, KW] -> [OC, ceil(KH/2) * CP]: taps a major, then the view's pixels b and
    d's channels (r, s, c); zero for the padding taps, pixels and channels. int8 or float8
    (moved as bytes: 0 is +0.0)."""
    oc, c, kh, kw = w.shape
    a, b = (kh + 1) // 2, (kw + 1) // 2
    g = pixel_channels(c)
    raw = _bytes(w)
    padded = torch.zeros((oc, c, 2 * a, 2 * b), dtype=raw.dtype, device=w.device)
    padded[:, :, :kh, :kw] = raw
    # [oc, c, a, r, b, s] -> [oc, a, b, r, s, c]
    taps = padded.reshape(oc, c, a, 2, b, 2).permute(0, 2, 4, 3, 5, 1).reshape(oc, a, b, -1)
    out = torch.zeros((oc, a, channels(c, kw, block_k) // g, g), dtype=raw.dtype,
                      device=w.device)
    out[:, :, :b, :4 * c] = taps
    return out.reshape(oc, -1).view(w.dtype)


def space_to_depth(x: torch.Tensor, kernel: tuple[int, int], pads: tuple, block_k: int,
                   block_j: int = 128) -> torch.Tensor:
    """x [N, C, H, W] (any memory order) -> d [N, HD, WD, G], HD = OH + ceil(KH/2) - 1 and
    WD = OW + CP/G - 1 (the last view pixel's last d pixel), for the stride-2 convolution
    with these pads (top, left, bottom, right); each program writes block_j pixels of one
    row of d."""
    n, c, h, wd = x.shape
    _, (hd, wdd) = _sizes(x.shape, kernel, pads, block_k)
    g = pixel_channels(c)
    d = torch.empty((n, hd, wdd, g), dtype=x.dtype, device=x.device)
    _space_to_depth_kernel[(n * hd, triton.cdiv(wdd, block_j))](
        _bytes(x), _bytes(d), h, wd, hd, wdd, *x.stride(), pads[0], pads[1],
        C=c, G=g, GP=triton.next_power_of_2(g), BLOCK_J=block_j, **launch(x.device))
    return d


def _sizes(shape: tuple, kernel: tuple[int, int], pads: tuple,
           block_k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((OH, OW), (HD, WD)) of the stride-2 convolution and of d."""
    _, c, h, wd = shape
    kh, kw = kernel
    oh = (h + pads[0] + pads[2] - kh) // 2 + 1
    ow = (wd + pads[1] + pads[3] - kw) // 2 + 1
    pixels = channels(c, kw, block_k) // pixel_channels(c)  # d's pixels per view pixel
    return (oh, ow), (oh + (kh + 1) // 2 - 1, ow + pixels - 1)


def qconv2d_s2d(x: torch.Tensor, packed: torch.Tensor, kernel: tuple[int, int], pads: tuple,
                scales: torch.Tensor, bias: torch.Tensor | None, epi: dict, config: tuple,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """The stride-2 QConv of x [N, C, H, W] (int8 with zero point 0, or float8) with
    weights from pack_weights(w, config[2]); returns [N, OC, OH, OW], channels-last."""
    block_k = config[2]
    (oh, ow), _ = _sizes(x.shape, kernel, pads, block_k)
    d = space_to_depth(x, kernel, pads, block_k)
    n, hd, wdd, g = d.shape
    cp = channels(x.shape[1], kernel[1], block_k)
    # [images, HD, 1 (the stride axis), OW, CP]: view pixel j is d's pixels j .. j+CP/G-1
    view = ([n, hd, 1, ow, cp], [hd * wdd * g, wdd * g, wdd * g, g, 1])
    taps = (kernel[0] + 1) // 2
    return _launch(d, view, (oh, ow), packed, (1, taps * cp, 1, (0, 0), (1, 1)), scales,
                   bias, epi, config, ((n, packed.shape[0], oh, ow), torch.channels_last),
                   residual)
