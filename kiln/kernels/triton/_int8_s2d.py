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

from kiln.kernels.triton._int8_kernels import _OUT_TORCH, OUT_MODES, _bytes, quantized
from kiln.kernels.triton._int8_tma import qconv2d_tma


@triton.jit
def _unfold_kernel(x_ptr, u_ptr, H, W, HU, OW, sxb, sxc, sxh, sxw, PT, PL, inv_scale,
                   C: tl.constexpr, CK: tl.constexpr, CP: tl.constexpr,
                   BLOCK_J: tl.constexpr, COLUMNS_INNER: tl.constexpr,
                   QUANTIZE: tl.constexpr):
    """COLUMNS_INNER: the tile is [CP, BLOCK_J], so a warp's lanes run along the output
    columns j and its loads read every other byte of one input row; the tile [BLOCK_J, CP]
    has them run along u's channels, whose sources lie in C planes and two rows.
    QUANTIZE (an output mode of _int8_kernels.quantized, or 0): x is float and quantized
    here by inv_scale (zero point 0), the input's Quantize step fused."""
    row = tl.program_id(0)  # image * HU + i: one row of u
    image = row // HU
    i = row % HU
    j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    ch = tl.arange(0, CP)
    if COLUMNS_INNER:
        j2, ch2 = j[None, :], ch[:, None]
    else:
        j2, ch2 = j[:, None], ch[None, :]
    c = ch2 % C
    s = (ch2 // C) % 2
    r = (ch2 // (2 * C)) % 2
    b = ch2 // (4 * C)
    h = 2 * i + r - PT
    w = 2 * (j2 + b) + s - PL
    in_row = j2 < OW
    inside = in_row & (ch2 < CK) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    src = image.to(tl.int64) * sxb + h * sxh + c * sxc + w * sxw
    v = tl.load(x_ptr + src, mask=inside, other=0)
    if QUANTIZE != 0:  # padding stays 0: zero point 0
        v = quantized(v.to(tl.float32), inv_scale, 0, QUANTIZE, INVERSE=True)
    dst = (row.to(tl.int64) * OW + j2) * CP + ch2
    tl.store(u_ptr + dst, v, mask=in_row)


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
           columns_inner: bool = True, block_j: int = 64,
           quantize: tuple[float, str] | None = None) -> torch.Tensor:
    """x [N, C, H, W] (any memory order) -> u as [N, CP, HU, OW] in channels-last memory,
    HU = OH + ceil(KH/2) - 1, for the stride-2 convolution with these pads (top, left,
    bottom, right). quantize (1 / scale, "int8" or "fp8e4m3"): x is float and u its
    quantized values."""
    n, c, h, wd = x.shape
    kh, kw = kernel
    oh = (h + pads[0] + pads[2] - kh) // 2 + 1
    ow = (wd + pads[1] + pads[3] - kw) // 2 + 1
    hu, cp = oh + (kh + 1) // 2 - 1, channels(c, kw, block_k)
    mode = OUT_MODES[quantize[1]] if quantize else 0
    u = torch.empty((n, hu, ow, cp), dtype=_OUT_TORCH[mode] if mode else x.dtype,
                    device=x.device)
    _unfold_kernel[(n * hu, triton.cdiv(ow, block_j))](
        _bytes(x), _bytes(u), h, wd, hu, ow, *x.stride(), pads[0], pads[1],
        quantize[0] if quantize else 1.0, C=c, CK=real_channels(c, kw), CP=cp,
        BLOCK_J=block_j, COLUMNS_INNER=columns_inner, QUANTIZE=mode)
    return u.permute(0, 3, 1, 2)


def qconv2d_s2d(x: torch.Tensor, packed: torch.Tensor, kernel: tuple[int, int], pads: tuple,
                scales: torch.Tensor, bias: torch.Tensor | None, epi: dict, config: tuple,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """The stride-2 QConv of x [N, C, H, W] (int8 with zero point 0, or float8) with
    weights from pack_weights(w, config[2]); returns [N, OC, OH, OW], channels-last."""
    u = unfold(x, kernel, pads, config[2])
    return qconv2d_tma(u, packed, ((kernel[0] + 1) // 2, 1), (1, 1), (0, 0, 0, 0), (1, 1),
                       scales, bias, epi, config, residual)
