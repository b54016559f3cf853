"""An INT8 / FP8 GEMM for short K (up to 256), its weight block held in shared memory while
each program walks several row blocks.

Where K fits one TMA box (ResNet-50's 56x56 1x1 layers: K = 64 or 256), a program of the
plain TMA kernel (_int8_tma._qgemm_tma_kernel) makes one load, one MMA and one epilogue,
and the latency of its load is not hidden behind anything of its own: on the H100 the
1x1 64->256 layer at batch 64 took 0.050 ms for about 0.021 ms of memory traffic. Here a
program loads its [BLOCK_N, K] weight block once and walks TILES row blocks in a loop the
compiler pipelines (num_stages), so the next block's rows are on their way while this
block's epilogue runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kiln.kernels.triton._int8_kernels import _bytes, _epilogue, _finish, _gemm_io
from kiln.kernels.triton._int8_tma import _lines_aligned, gemm_over_pixels
from kiln.kernels.triton._pdl import wait_for_inputs

MAX_K = 256  # a TMA box spans at most 256 elements per axis


@triton.jit
def _qgemm_stationary_kernel(a_desc, w_desc, out_ptr, scales_ptr, bias_ptr, res_ptr, M,
                             stride_om, stride_rm, res_scale, res_zp, out_inv_scale, out_zp,
                             p0, p1, N: tl.constexpr, K: tl.constexpr,
                             HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr,
                             IS_FP8: tl.constexpr, ACT: tl.constexpr,
                             OUT_MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, TILES: tl.constexpr,
                             res_desc=None, out_desc=None, TMA_IO: tl.constexpr = False,
                             PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    # column blocks vary fastest over the grid, so the programs that read the same rows
    # run side by side and the second read comes from L2
    n0 = tl.program_id(0) * BLOCK_N
    w = w_desc.load([n0, 0])
    rn = n0 + tl.arange(0, BLOCK_N)
    first = tl.program_id(1) * TILES
    for t in range(TILES):
        m0 = (first + t) * BLOCK_M
        acc = tl.dot(a_desc.load([m0, 0]), tl.trans(w))  # int32 for int8, float32 for FP8
        if TMA_IO:  # residual and output tiles by TMA: whole lines, the last rows clipped
            r = acc  # no residual: unused
            if RES_MODE != 0:
                r = res_desc.load([m0, n0])
            y = _epilogue(acc, rn, N, scales_ptr, bias_ptr, scales_ptr, r, 0, res_scale,
                          res_zp, out_inv_scale, out_zp, p0, p1, False, HAS_BIAS, RES_MODE,
                          ACT, OUT_MODE, IS_FP8, K <= 256)
            out_desc.store([m0, n0], y)
        else:
            rm = m0 + tl.arange(0, BLOCK_M)
            _finish(acc, rm, rm < M, rn, N, out_ptr, stride_om, scales_ptr, bias_ptr,
                    scales_ptr, res_ptr, stride_rm, 0, res_scale, res_zp, out_inv_scale,
                    out_zp, p0, p1, False, HAS_BIAS, RES_MODE, ACT, OUT_MODE, IS_FP8,
                    K <= 256)


def fits(k: int) -> bool:
    """Whether a GEMM of this depth runs here: one box, rows of whole 16-byte units."""
    return k <= MAX_K and k % 16 == 0


def _box_k(k: int) -> int:
    """The box's depth: a power of two (the copy unit's zero fill past K), at least the
    MMA's 32."""
    return max(32, triton.next_power_of_2(k))


def qgemm_stationary(a: torch.Tensor, w: torch.Tensor, scales: torch.Tensor,
                     bias: torch.Tensor | None, epi: dict, config: tuple,
                     residual: torch.Tensor | None = None) -> torch.Tensor:
    """As _int8_tma.qgemm_tma (a [M, K] rows contiguous and 16-byte aligned, w [N, K],
    zero point 0) for fits(K); config is (BLOCK_M, BLOCK_N, TILES, warps, stages[, TMA_IO]),
    TMA_IO: the residual tile read and the output tile written by TMA too, where their
    lines start on 16-byte boundaries."""
    block_m, block_n, tiles, warps, stages = config[:5]
    m, n, runtime, flags, out, (res, res_mode, stride_rm) = _gemm_io(a, w, epi, residual)
    k = a.shape[1]
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, block_m * tiles))
    box_k = _box_k(k)
    io = {}
    if len(config) > 5 and config[5] and _lines_aligned(n, out, res):
        box = [block_m, block_n]
        io = dict(out_desc=TensorDescriptor(_bytes(out), [m, n], [n, 1], box), TMA_IO=True,
                  res_desc=TensorDescriptor(res, [m, n], [stride_rm, 1], box)
                  if res_mode else None)
    _qgemm_stationary_kernel[grid](
        TensorDescriptor(a, [m, k], [a.stride(0), 1], [block_m, box_k]),
        TensorDescriptor(w, [n, k], [w.stride(0), 1], [block_n, box_k]), _bytes(out), scales,
        bias if bias is not None else scales, res, m, n, stride_rm, **runtime, N=n, K=box_k,
        HAS_BIAS=bias is not None, RES_MODE=res_mode, IS_FP8=a.dtype == torch.float8_e4m3fn,
        **flags, BLOCK_M=block_m, BLOCK_N=block_n, TILES=tiles, **io, num_warps=warps,
        num_stages=stages)
    return out


def qconv1x1_stationary(x: torch.Tensor, w: torch.Tensor, scales: torch.Tensor,
                        bias: torch.Tensor | None, epi: dict, config: tuple,
                        residual: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 stride-1 unpadded convolution of x [B, C, H, W] as the GEMM over its
    [B*H*W, C] rows; returns [B, OC, H, W], channels-last."""
    return gemm_over_pixels(qgemm_stationary, x, residual, w, scales, bias, epi, config)
