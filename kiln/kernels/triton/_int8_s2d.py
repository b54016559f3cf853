"""A stride-2 convolution over few channels (an RGB stem) as a stride-1 one over whole
channel blocks, for the TMA kernel (_int8_tma.qconv2d_tma).

With kh = 2a + r and kw = 2b + s (r, s in {0, 1}), a stride-2 KHxKW convolution is

    y[oh, ow] = sum over a, b, r, s, c of  w[c, 2a+r, 2b+s] * xp[2(oh+a) + r, 2(ow+b) + s, c]

(xp the padded input), as MLPerf's ResNet submissions and TensorRT rewrite the stem
("space to depth"). `unfold` writes

    u[n, i, j, ((b*2 + r)*2 + s)*C + c] = xp[n, 2i + r, 2(j + b) + s, c]

for b < ceil(KW/2), which makes the layer a ceil(KH/2) x 1 stride-1 unpadded convolution
over u's CP = round_up(ceil(KW/2)*4*C, BLOCK_K) channels, zero where a tap or channel is
padding. The TMA kernel then loads one box per (tap, channel block) as for any wide layer.
ResNet-50's 7x7/2 stem over 3 channels becomes 4 taps of 64 channels (48 real): the
gathering kernel had computed an address for each of its 147 (kh, kw, c) columns.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.kernels.triton._int8_kernels import _bytes
from kiln.kernels.triton._int8_tma import qconv2d_tma
from kiln.kernels.triton._pdl import launch, wait_for_inputs


@triton.jit
def _unfold_kernel(x_ptr, u_ptr, H, W, HU, OW, sxb, sxc, sxh, sxw, PT, PL,
                   C: tl.constexpr, CK: tl.constexpr, CP: tl.constexpr,
                   BLOCK_J: tl.constexpr, PDL: tl.constexpr = False):
    """The tile is [CP, BLOCK_J], so a warp's lanes run along the output columns j and a
    load reads every other byte of one input row; with the tile [BLOCK_J, CP] they ran
    along u's channels, whose sources lie in C planes and two rows (H100, ResNet-50's stem
    at batch 64: 0.075 ms, now 0.056 with BLOCK_J 128)."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)  # image * HU + i: one row of u
    image = row // HU
    i = row % HU
    j = (tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J))[None, :]
    ch = tl.arange(0, CP)[:, None]
    c = ch % C
    s = (ch // C) % 2
    r = (ch // (2 * C)) % 2
    b = ch // (4 * C)
    h = 2 * i + r - PT
    w = 2 * (j + b) + s - PL
    in_row = j < OW
    inside = in_row & (ch < CK) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    v = tl.load(x_ptr + image.to(tl.int64) * sxb + h * sxh + c * sxc + w * sxw, mask=inside,
                other=0)
    tl.store(u_ptr + (row.to(tl.int64) * OW + j) * CP + ch, v, mask=in_row)


def real_channels(c: int, kw: int) -> int:
    """u's channels that carry input values: ceil(KW/2) * 4 * C."""
    return (kw + 1) // 2 * 4 * c


def channels(c: int, kw: int, block_k: int) -> int:
    """CP: u's channels, the real ones rounded up to whole K blocks."""
    return triton.cdiv(real_channels(c, kw), block_k) * block_k


def pack_weights(w: torch.Tensor, block_k: int) -> torch.Tensor:
    """[OC, C, KH, KW] -> [OC, ceil(KH/2) * CP]: taps a major, u's channels minor, zero
    for the padding taps and channels. int8 or float8 (moved as bytes: 0 is +0.0)."""
    oc, c, kh, kw = w.shape
    a, b = (kh + 1) // 2, (kw + 1) // 2
    raw = _bytes(w)
    padded = torch.zeros((oc, c, 2 * a, 2 * b), dtype=raw.dtype, device=w.device)
    padded[:, :, :kh, :kw] = raw
    # [oc, c, a, r, b, s] -> [oc, a, b, r, s, c]
    taps = padded.reshape(oc, c, a, 2, b, 2).permute(0, 2, 4, 3, 5, 1).reshape(oc, a, -1)
    out = torch.zeros((oc, a, channels(c, kw, block_k)), dtype=raw.dtype, device=w.device)
    out[:, :, :taps.shape[2]] = taps
    return out.reshape(oc, -1).view(w.dtype)


def unfold(x: torch.Tensor, kernel: tuple[int, int], pads: tuple, block_k: int,
           block_j: int = 128) -> torch.Tensor:
    """x [N, C, H, W] (any memory order) -> u as [N, CP, HU, OW] in channels-last memory,
    HU = OH + ceil(KH/2) - 1, for the stride-2 convolution with these pads (top, left,
    bottom, right); each program writes block_j columns of one row of u."""
    n, c, h, wd = x.shape
    kh, kw = kernel
    oh = (h + pads[0] + pads[2] - kh) // 2 + 1
    ow = (wd + pads[1] + pads[3] - kw) // 2 + 1
    hu, cp = oh + (kh + 1) // 2 - 1, channels(c, kw, block_k)
    u = torch.empty((n, hu, ow, cp), dtype=x.dtype, device=x.device)
    _unfold_kernel[(n * hu, triton.cdiv(ow, block_j))](
        _bytes(x), _bytes(u), h, wd, hu, ow, *x.stride(), pads[0], pads[1],
        C=c, CK=real_channels(c, kw), CP=cp, BLOCK_J=block_j, **launch(x.device))
    return u.permute(0, 3, 1, 2)


def qconv2d_s2d(x: torch.Tensor, packed: torch.Tensor, kernel: tuple[int, int], pads: tuple,
                scales: torch.Tensor, bias: torch.Tensor | None, epi: dict, config: tuple,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """The stride-2 QConv of x [N, C, H, W] (int8 with zero point 0, or float8) with
    weights from pack_weights(w, config[2]); returns [N, OC, OH, OW], channels-last."""
    u = unfold(x, kernel, pads, config[2])
    return qconv2d_tma(u, packed, ((kernel[0] + 1) // 2, 1), (1, 1), (0, 0, 0, 0), (1, 1),
                       scales, bias, epi, config, residual)
