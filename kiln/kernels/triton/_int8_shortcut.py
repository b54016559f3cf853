"""kiln.QConvShortcut in one kernel: a 1x1 INT8 layer and the 1x1 projection its residual
comes from, both products per output tile, the projection's int8 output never stored.

The stationary GEMM's shape (_int8_stationary.py): a program holds both [BLOCK_N, K] weight
blocks in shared memory and walks TILES row blocks; the layer's rows come by TMA, and so do
the projection's at stride 1; a strided projection's come by pointers (it reads every S-th
pixel of every S-th row, which no 2-D box over flat output rows can describe). Per tile:
the projection's product and its requantizing epilogue give the int8 residual tile in
registers, in the layout of the layer's own accumulator; the layer's product and epilogue
read it as they would have read it from memory, so the answers are the two layers'.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kiln.kernels.triton._int8_kernels import _OUT_TORCH, _bytes, _epilogue, _epilogue_args
from kiln.kernels.triton._int8_stationary import _box_k
from kiln.kernels.triton._int8_stationary import fits as stationary_fits
from kiln.kernels.triton._pdl import wait_for_inputs


@triton.jit
def _qconv_shortcut_kernel(a_desc, w_desc, s_ptr, sw_desc, out_ptr, scales_ptr, bias_ptr,
                           s_scales_ptr, s_bias_ptr, M, OH, OW, s_sn, s_sh, s_sw, stride_om,
                           s_inv_scale, s_zp, res_scale, res_zp, out_inv_scale, out_zp, p0,
                           p1, N: tl.constexpr, K: tl.constexpr, SC: tl.constexpr,
                           SK: tl.constexpr, HAS_BIAS: tl.constexpr,
                           S_HAS_BIAS: tl.constexpr, S_OUT_MODE: tl.constexpr,
                           ACT: tl.constexpr, OUT_MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_N: tl.constexpr, TILES: tl.constexpr, s_desc=None,
                           S_TMA: tl.constexpr = False, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    n0 = tl.program_id(0) * BLOCK_N
    w = w_desc.load([n0, 0])
    sw = sw_desc.load([n0, 0])
    rn = n0 + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, SK)
    first = tl.program_id(1) * TILES
    for t in range(TILES):
        m0 = (first + t) * BLOCK_M
        rm = m0 + tl.arange(0, BLOCK_M)
        row_ok = rm < M
        if S_TMA:  # stride 1: the projection's rows are the output's, a 2-D box
            sa = s_desc.load([m0, 0])
        else:
            # output pixel (image, i, j) reads the projection's input pixel (image, S*i,
            # S*j): the strides s_sh and s_sw carry S
            pixel = (rm // (OH * OW)) * s_sn + ((rm // OW) % OH) * s_sh + (rm % OW) * s_sw
            if SC == SK:
                mask = row_ok[:, None]
            else:
                mask = row_ok[:, None] & (rk < SC)[None, :]
            sa = tl.load(s_ptr + pixel[:, None] + rk[None, :], mask=mask, other=0)
        sacc = tl.dot(sa, tl.trans(sw))
        r = _epilogue(sacc, rn, N, s_scales_ptr, s_bias_ptr, s_scales_ptr, sacc, 0, 0.0, 0,
                      s_inv_scale, s_zp, 0.0, 0.0, False, S_HAS_BIAS, 0, 0, S_OUT_MODE,
                      False, True)
        acc = tl.dot(a_desc.load([m0, 0]), tl.trans(w))
        y = _epilogue(acc, rn, N, scales_ptr, bias_ptr, scales_ptr, r, 0, res_scale, res_zp,
                      out_inv_scale, out_zp, p0, p1, False, HAS_BIAS, 2, ACT, OUT_MODE, False,
                      True)
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], y,
                 mask=row_ok[:, None] & (rn < N)[None, :])


def fits(k: int, shortcut_k: int) -> bool:
    """Whether both depths fit the stationary GEMM's one box of whole 16-byte units."""
    return stationary_fits(k) and stationary_fits(shortcut_k)


def qconv_shortcut(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor,
                   bias: torch.Tensor | None, epi: dict, sx: torch.Tensor, sw: torch.Tensor,
                   s_scales: torch.Tensor, s_bias: torch.Tensor | None, s_epi: dict,
                   stride: int, config: tuple) -> torch.Tensor:
    """x [B, C, H, W] and sx [B, SC, S*H', S*W'] int8, channels-last; w [N, C] and sw
    [N, SC] int8; epi the layer's epilogue (an int8 residual), s_epi the projection's (an
    int8/uint8 output). config: (BLOCK_M, BLOCK_N, TILES, warps, stages). Returns [B, N,
    H, W], channels-last."""
    block_m, block_n, tiles, warps, stages = config
    batch, c, h, wd = x.shape
    n, sc = w.shape[0], sw.shape[1]
    x = x.contiguous(memory_format=torch.channels_last)
    sx = sx.contiguous(memory_format=torch.channels_last)
    rows = x.permute(0, 2, 3, 1).reshape(-1, c)
    m = rows.shape[0]
    runtime, flags = _epilogue_args(epi, x.device)
    s_runtime, s_flags = _epilogue_args(s_epi, x.device)
    out = torch.empty((batch, n, h, wd), dtype=_OUT_TORCH[flags["OUT_MODE"]], device=x.device,
                      memory_format=torch.channels_last)
    box_k, s_box_k = _box_k(c), _box_k(sc)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m * tiles))
    io = {}
    if stride == 1:
        s_rows = sx.permute(0, 2, 3, 1).reshape(-1, sc)
        io = dict(s_desc=TensorDescriptor(s_rows, [m, sc], [s_rows.stride(0), 1],
                                          [block_m, s_box_k]), S_TMA=True)
    _qconv_shortcut_kernel[grid](
        TensorDescriptor(rows, [m, c], [rows.stride(0), 1], [block_m, box_k]),
        TensorDescriptor(w, [n, c], [w.stride(0), 1], [block_n, box_k]), sx,
        TensorDescriptor(sw, [n, sc], [sw.stride(0), 1], [block_n, s_box_k]), _bytes(out),
        scales, bias if bias is not None else scales, s_scales,
        s_bias if s_bias is not None else s_scales, m, h, wd, sx.stride(0),
        sx.stride(2) * stride, sx.stride(3) * stride, n, s_runtime["out_inv_scale"],
        s_runtime["out_zp"], **runtime, N=n, K=box_k, SC=sc, SK=s_box_k,
        HAS_BIAS=bias is not None, S_HAS_BIAS=s_bias is not None,
        S_OUT_MODE=s_flags["OUT_MODE"], **flags, BLOCK_M=block_m, BLOCK_N=block_n,
        TILES=tiles, **io, num_warps=warps, num_stages=stages)
    return out

