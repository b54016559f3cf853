"""INT8 / FP8 implicit-GEMM convolution whose operand tiles arrive by TMA (Hopper).

The gathering kernel (_int8_kernels.qconv2d) computes an address per row of every K step;
here each K step is one rectangular box that the TMA unit copies into shared memory while
the tensor cores work on the previous one. The NHWC activation is viewed, without a copy,
as [B, H/S, S, W/S, S*C] (S the stride): for output pixel (oh, ow) and tap offset
dh = kh*DH - PH the input row S*oh + dh sits at (oh + dh div S, dh mod S) in the view, so
a tile of output rows (BB images x TH rows x TW columns) reads one box
[BB, TH, 1, TW, BLOCK_K] per step. Padding comes from TMA's zero fill of boxes that
reach outside the tensor, so the kernel takes zero-point-0 inputs only (symmetric int8,
FP8). QGemm, and a 1x1 stride-1 convolution as the GEMM over its [B*H*W, C] rows, take a
kernel over plain 2-D boxes (_qgemm_tma_kernel); the TMA-store tiles keep such a
convolution in the box kernel, as [B*H*W, 1, 1, 1, C].
Output rows outside the image (tiles are powers of two) are computed and not stored.
The epilogue's values come from _int8_kernels._epilogue; with TMA_OUT the residual tile
is read and the output tile written by TMA too (the `s` tiles, which pay where a residual
is read), otherwise _int8_kernels._finish stores by pointer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kiln.kernels.triton._int8_kernels import (
    _OUT_TORCH,
    _bytes,
    _epilogue,
    _epilogue_args,
    _finish,
    _gemm_io,
    _residual,
    _tile_of,
    _tile_start,
)
from kiln.kernels.triton._pdl import wait_for_inputs


@triton.jit
def _qconv_tma_kernel(x_desc, w_desc, out_desc, res_desc, out_ptr, scales_ptr, bias_ptr, res_ptr,
                      B, OH, OW, tiles_m, tiles_h, tiles_w, stride_om, stride_rm,
                      res_scale, res_zp, out_inv_scale, out_zp, p0, p1,
                      C: tl.constexpr, N: tl.constexpr, K: tl.constexpr, KW: tl.constexpr,
                      S: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr,
                      DW: tl.constexpr, HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr,
                      ACT: tl.constexpr, OUT_MODE: tl.constexpr, IS_FP8: tl.constexpr,
                      BB: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      TMA_OUT: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    BLOCK_M: tl.constexpr = BB * TH * TW
    pid_m, pid_n = _tile_start(tiles_m * BLOCK_M, N, BLOCK_M, BLOCK_N, GROUP_M)
    ow0 = (pid_m % tiles_w) * TW
    oh0 = (pid_m // tiles_w % tiles_h) * TH
    b0 = pid_m // (tiles_w * tiles_h) * BB
    n0 = pid_n * BLOCK_N
    if IS_FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        tap = k0 // C
        # kh*DH - PH shifted by S*PH to stay non-negative: // and % then floor
        dh = (tap // KW) * DH + (S - 1) * PH
        dw = (tap % KW) * DW + (S - 1) * PW
        a = x_desc.load([b0, oh0 + dh // S - PH, dh % S, ow0 + dw // S - PW,
                         (dw % S) * C + k0 % C])
        w = w_desc.load([n0, k0])
        acc += tl.dot(a.reshape(BLOCK_M, BLOCK_K), tl.trans(w))
    rn = n0 + tl.arange(0, BLOCK_N)
    if TMA_OUT:  # residual and output tiles by TMA too: whole lines, the edges clipped
        r = acc  # no residual: unused
        if RES_MODE != 0:
            r = res_desc.load([b0, oh0, 0, ow0, n0]).reshape(BLOCK_M, BLOCK_N)
        y = _epilogue(acc, rn, N, scales_ptr, bias_ptr, scales_ptr, r, 0, res_scale, res_zp,
                      out_inv_scale, out_zp, p0, p1, False, HAS_BIAS, RES_MODE, ACT,
                      OUT_MODE, IS_FP8, K <= 256)
        out_desc.store([b0, oh0, 0, ow0, n0], y.reshape(BB, TH, 1, TW, BLOCK_N))
    else:
        i = tl.arange(0, BLOCK_M)
        bi = b0 + i // (TH * TW)
        oh = oh0 + i // TW % TH
        ow = ow0 + i % TW
        rows = (bi * OH + oh) * OW + ow
        _finish(acc, rows, (bi < B) & (oh < OH) & (ow < OW), rn, N, out_ptr, stride_om,
                scales_ptr, bias_ptr, scales_ptr, res_ptr, stride_rm, 0, res_scale, res_zp,
                out_inv_scale, out_zp, p0, p1, False, HAS_BIAS, RES_MODE, ACT, OUT_MODE,
                IS_FP8, K <= 256)


@triton.jit
def _qgemm_tma_kernel(a_desc, w_desc, out_desc, res_desc, out_ptr, scales_ptr, bias_ptr,
                      res_ptr, M, stride_om, stride_rm, res_scale, res_zp, out_inv_scale,
                      out_zp, p0, p1, N: tl.constexpr, K: tl.constexpr,
                      HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr, IS_FP8: tl.constexpr,
                      ACT: tl.constexpr, OUT_MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      TMA_OUT: tl.constexpr = False, FAST_TANH: tl.constexpr = False,
                      PDL: tl.constexpr = False):
    """QGemm over 2-D boxes of a [M, K] and w [N, K]; the epilogue reads the residual and
    stores by pointer, or with TMA_OUT both by TMA (out_desc, res_desc). FAST_TANH: a
    tanh-form GELU by the GPU's tanh instruction (_int8_kernels._gelu_tanh_approx)."""
    wait_for_inputs(PDL)
    _qgemm_tile(tl.program_id(0), a_desc, w_desc, out_desc, res_desc, out_ptr, scales_ptr,
                bias_ptr, res_ptr, M, stride_om, stride_rm, res_scale, res_zp, out_inv_scale,
                out_zp, p0, p1, N, K, HAS_BIAS, RES_MODE, IS_FP8, ACT, OUT_MODE, BLOCK_M,
                BLOCK_N, BLOCK_K, GROUP_M, TMA_OUT, FAST_TANH)


@triton.jit
def _qgemm_tma_persistent_kernel(
        a_desc, w_desc, out_desc, res_desc, out_ptr, scales_ptr, bias_ptr, res_ptr, M,
        stride_om, stride_rm, res_scale, res_zp, out_inv_scale, out_zp, p0, p1,
        N: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr,
        IS_FP8: tl.constexpr, ACT: tl.constexpr, OUT_MODE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr, INTERPRETED_TILES: tl.constexpr,
        TMA_OUT: tl.constexpr = False, FAST_TANH: tl.constexpr = False,
        PDL: tl.constexpr = False):
    """_qgemm_tma_kernel as PROGRAMS programs (one per SM) that each walk every PROGRAMS-th
    tile: the loop over tiles is flattened into one software pipeline, so the next tile's
    loads are in flight while this one's epilogue runs, and the last wave is not a
    partial one of fresh launches (BERT-base's QKV at batch 32 is 2.2 waves of 128x256).
    Triton's interpreter takes no loop bound known only at run time: there the host passes
    the tiles per program (INTERPRETED_TILES) and the same tile body runs in a fixed loop."""
    wait_for_inputs(PDL)
    tiles = tl.cdiv(M, BLOCK_M) * ((N + BLOCK_N - 1) // BLOCK_N)
    if INTERPRETED_TILES == 0:
        for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=True):
            _qgemm_tile(tile, a_desc, w_desc, out_desc, res_desc, out_ptr, scales_ptr,
                        bias_ptr, res_ptr, M, stride_om, stride_rm, res_scale, res_zp,
                        out_inv_scale, out_zp, p0, p1, N, K, HAS_BIAS, RES_MODE, IS_FP8, ACT,
                        OUT_MODE, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, TMA_OUT, FAST_TANH)
    else:
        for i in range(INTERPRETED_TILES):
            tile = tl.program_id(0) + i * PROGRAMS
            if tile < tiles:
                _qgemm_tile(tile, a_desc, w_desc, out_desc, res_desc, out_ptr, scales_ptr,
                            bias_ptr, res_ptr, M, stride_om, stride_rm, res_scale, res_zp,
                            out_inv_scale, out_zp, p0, p1, N, K, HAS_BIAS, RES_MODE, IS_FP8,
                            ACT, OUT_MODE, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, TMA_OUT,
                            FAST_TANH)


@triton.jit
def _qgemm_tile(tile, a_desc, w_desc, out_desc, res_desc, out_ptr, scales_ptr, bias_ptr,
                res_ptr, M, stride_om, stride_rm, res_scale, res_zp, out_inv_scale, out_zp, p0,
                p1, N: tl.constexpr, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                RES_MODE: tl.constexpr, IS_FP8: tl.constexpr, ACT: tl.constexpr,
                OUT_MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, TMA_OUT: tl.constexpr,
                FAST_TANH: tl.constexpr):
    """One output tile of the GEMM: the K loop and the epilogue. TMA_OUT: the residual tile
    read and the output tile written by TMA (the edges clipped by the copy unit) instead of
    by pointer, which spends per element a 64-bit address, a bounds test and a one- or
    two-byte store in the accumulator's layout: compiled for the H100, BERT-base's FC2
    epilogue (t4, FP16 out) takes 466 instructions a thread instead of 1475, its FC1 (GELU,
    INT8 out) 3331 instead of 4946 and no longer spills registers."""
    pid_m, pid_n = _tile_of(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    if IS_FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        acc += tl.dot(a_desc.load([pid_m * BLOCK_M, k0]),
                      tl.trans(w_desc.load([pid_n * BLOCK_N, k0])))
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if TMA_OUT:
        r = acc  # no residual: unused
        if RES_MODE != 0:
            r = res_desc.load([pid_m * BLOCK_M, pid_n * BLOCK_N])
        y = _epilogue(acc, rn, N, scales_ptr, bias_ptr, scales_ptr, r, 0, res_scale, res_zp,
                      out_inv_scale, out_zp, p0, p1, False, HAS_BIAS, RES_MODE, ACT,
                      OUT_MODE, IS_FP8, K <= 256, FAST_TANH)
        out_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], y)
    else:
        _finish(acc, rm, rm < M, rn, N, out_ptr, stride_om, scales_ptr, bias_ptr, scales_ptr,
                res_ptr, stride_rm, 0, res_scale, res_zp, out_inv_scale, out_zp, p0, p1,
                False, HAS_BIAS, RES_MODE, ACT, OUT_MODE, IS_FP8, K <= 256, FAST_TANH)


@functools.cache  # called at every launch, with a layer's fixed sizes
def spatial_tile(block_m: int, oh: int, ow: int, images: int = 1, column_blocks: int = 1,
                 processors: int = 0) -> tuple[int, int, int]:
    """(images, rows, columns) of a block_m-row output tile, each a power of two: the
    factoring whose tiles compute the fewest rows past the output's edges (then the
    widest), where that saves a wave of programs over `processors` SMs (column_blocks
    programs per tile); else the width-first tile (as wide as the output, then as high,
    then more images). Width first alone left a quarter of the MMA work of ResNet-50's
    14x14 layers outside the image (16x16 covering 14x14; H200, 3x3 c256 with the t6 tile:
    0.022 -> 0.019 ms as 16 images x 2 x 2 pixels); where no wave is saved the fewer rows
    did not pay (7x7 c512: 0.018 -> 0.023 ms as 64 images x 1 x 1)."""
    best = None
    for tw in _powers_of_two(min(triton.next_power_of_2(ow), block_m)):
        for th in _powers_of_two(min(triton.next_power_of_2(oh), block_m // tw)):
            tile = (block_m // (tw * th), th, tw)
            key = (_tiles(tile, oh, ow, images), -tw, -th)
            if best is None or key < best[0]:
                best = key, tile
    fewest = best[1]
    if processors:
        wide = width_first_tile(block_m, oh, ow)
        waves = [triton.cdiv(_tiles(t, oh, ow, images) * column_blocks, processors)
                 for t in (fewest, wide)]
        return fewest if waves[0] < waves[1] else wide
    return fewest


def width_first_tile(block_m: int, oh: int, ow: int) -> tuple[int, int, int]:
    """(images, rows, columns): as wide as the output, then as high, then more images."""
    tw = min(triton.next_power_of_2(ow), block_m)
    th = min(triton.next_power_of_2(oh), block_m // tw)
    return block_m // (tw * th), th, tw


def _tiles(tile: tuple[int, int, int], oh: int, ow: int, images: int) -> int:
    """Output tiles of (images, rows, columns) `tile` over the images' oh x ow outputs."""
    bb, th, tw = tile
    return triton.cdiv(images, bb) * triton.cdiv(oh, th) * triton.cdiv(ow, tw)


def _powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, ... up to limit (a power of two)."""
    return [1 << i for i in range(limit.bit_length())]


def fits(c: int, h: int, w: int, kernel: tuple, stride: tuple, block_k: int) -> bool:
    """Whether the TMA view covers this convolution: one stride for both axes dividing the
    input, whole channel blocks per tap, 16-byte aligned rows."""
    s = stride[0]
    return (stride[0] == stride[1] and h % s == 0 and w % s == 0 and c % block_k == 0
            and c % 16 == 0 and (kernel[0] * kernel[1] * c) % 16 == 0)


def qconv2d_tma(x: torch.Tensor, w: torch.Tensor, kernel: tuple[int, int], stride: tuple,
                pads: tuple, dilation: tuple, scales: torch.Tensor, bias: torch.Tensor | None,
                epi: dict, config: tuple, residual: torch.Tensor | None = None,
                persistent: bool = False) -> torch.Tensor:
    """As _int8_kernels.qconv2d with zero point 0 and fits(...) true: x [B, C, H, W] int8 or
    float8 in channels-last memory, w [OC, KH*KW*C]. Returns [B, OC, OH, OW], channels-last.
    persistent: a 1x1 stride-1 convolution through the persistent GEMM kernel."""
    batch, c, h, wd = x.shape
    kh, kw = kernel
    s = stride[0]
    oh = (h + pads[0] + pads[2] - dilation[0] * (kh - 1) - 1) // s + 1
    ow = (wd + pads[1] + pads[3] - dilation[1] * (kw - 1) - 1) // s + 1
    x = x.contiguous(memory_format=torch.channels_last)
    out = ((batch, w.shape[0], oh, ow), torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    if kh == kw == s == 1 and not any(pads):  # the GEMM over [B*H*W, C]
        if len(config) > 5 and config[5]:  # the TMA-store tiles: one "image" per pixel
            return _launch(x, ([batch * h * wd, 1, 1, 1, c], [c, c, c, c, 1]), (1, 1), w,
                           (1, c, 1, (0, 0), (1, 1)), scales, bias, epi, config, out,
                           residual)
        return gemm_over_pixels(qgemm_tma, x, residual, w, scales, bias, epi, config,
                                persistent=persistent)
    view = ([batch, h // s, s, wd // s, s * c], [h * wd * c, s * wd * c, wd * c, s * c, 1])
    return _launch(x, view, (oh, ow), w, (kw, kh * kw * c, s, pads[:2], dilation), scales,
                   bias, epi, config, out, residual)


def gemm_over_pixels(gemm: Callable[..., torch.Tensor], x: torch.Tensor,
                     residual: torch.Tensor | None, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A 1x1 stride-1 unpadded convolution of x [B, C, H, W] as gemm(rows, *args,
    residual=...) over its channels-last [B*H*W, C] rows (a view once x is channels-last);
    returns [B, OC, H, W], channels-last."""
    batch, c, h, wd = x.shape
    rows = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(-1, c)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    y = gemm(rows, *args, residual=residual, **kwargs)
    return y.view(batch, h, wd, -1).permute(0, 3, 1, 2)


def qgemm_tma(a: torch.Tensor, w: torch.Tensor, scales: torch.Tensor,
              bias: torch.Tensor | None, epi: dict, config: tuple,
              residual: torch.Tensor | None = None, persistent: bool = False) -> torch.Tensor:
    """As _int8_kernels.qgemm with zero point 0: a [M, K] int8 or float8 with rows
    contiguous and 16-byte aligned, w [N, K], residual rows [M, N] contiguous (a 1x1
    convolution's channels-last residual). Plain 2-D boxes (_qgemm_tma_kernel): viewing
    the rows as 1x1 images cost INT8 GEMMs 5-15% and FP8 ones up to 1.9x on the H100.
    persistent: one program per SM walking the tiles (_qgemm_tma_persistent_kernel).
    A sixth config field, true: the residual and output tiles by TMA too, where their rows
    start on 16-byte boundaries (else by pointer). epi["fast_tanh"]: a tanh-form GELU by
    the GPU's tanh instruction (the interpreter keeps the exponential form)."""
    block_m, block_n, block_k, warps, stages = config[:5]
    m, n, runtime, flags, out, (res, res_mode, stride_rm) = _gemm_io(a, w, epi, residual)
    k = a.shape[1]
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    w_desc = TensorDescriptor.from_tensor(w, [block_n, block_k])
    out_desc = res_desc = w_desc  # stand-ins the kernel does not read
    tma_out = bool(len(config) > 5 and config[5] and _lines_aligned(n, out, res))
    if tma_out:
        out_desc = TensorDescriptor(_bytes(out), [m, n], [n, 1], [block_m, block_n])
        if res_mode:
            res_desc = TensorDescriptor(res, [m, n], [stride_rm, 1], [block_m, block_n])
    args = (TensorDescriptor(a, [m, k], [a.stride(0), 1], [block_m, block_k]), w_desc,
            out_desc, res_desc, _bytes(out), scales, bias if bias is not None else scales,
            res, m, n, stride_rm)
    meta = dict(**runtime, N=n, K=k, HAS_BIAS=bias is not None, RES_MODE=res_mode,
                IS_FP8=a.dtype == torch.float8_e4m3fn, **flags, BLOCK_M=block_m,
                BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, TMA_OUT=tma_out,
                FAST_TANH=bool(epi.get("fast_tanh")) and a.device.type == "cuda",
                num_warps=warps, num_stages=stages)
    if persistent:
        programs = min(tiles, _processors(a.device))
        interpreted = triton.cdiv(tiles, programs) if a.device.type == "cpu" else 0
        _qgemm_tma_persistent_kernel[(programs,)](*args, **meta, PROGRAMS=programs,
                                                  INTERPRETED_TILES=interpreted)
    else:
        _qgemm_tma_kernel[(tiles,)](*args, **meta)
    return out


def _processors(device: torch.device) -> int:
    """Streaming multiprocessors of the device (a persistent kernel's program count)."""
    if device.type != "cuda":
        return 4  # the interpreter: a few programs, so that each walks several tiles
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch(x: torch.Tensor, view: tuple, out_hw: tuple, w: torch.Tensor, geometry: tuple,
            scales: torch.Tensor, bias: torch.Tensor | None, epi: dict, config: tuple,
            out: tuple, residual: torch.Tensor | None) -> torch.Tensor:
    """The kernel over `view` (shape, strides of x as [images, H/S, S, W/S, S*C]) into a new
    output of out = (shape, memory format), whose rows are (image, oh, ow); geometry is
    (KW, taps x C, S, (PH, PW), (DH, DW))."""
    block_m, block_n, block_k, warps, stages = config[:5]
    kw, k, s, (ph, pw), (dh, dw) = geometry
    images, c = view[0][0], view[0][4] // s
    out_h, out_w = out_hw
    oc = w.shape[0]
    runtime, flags = _epilogue_args(epi, x.device)
    out = torch.empty(out[0], dtype=_OUT_TORCH[flags["OUT_MODE"]], device=x.device,
                      memory_format=out[1])
    res, res_mode, stride_rm = _residual(residual, epi, images * out_h * out_w, oc, x.device)
    bb, th, tw = spatial_tile(block_m, out_h, out_w, images, triton.cdiv(oc, block_n),
                              _processors(x.device))
    x_desc = TensorDescriptor(x, view[0], view[1], [bb, th, 1, tw, block_k])
    w_desc = TensorDescriptor.from_tensor(w, [block_n, block_k])
    tiles_h, tiles_w = triton.cdiv(out_h, th), triton.cdiv(out_w, tw)
    tiles_m = triton.cdiv(images, bb) * tiles_h * tiles_w
    grid = (tiles_m * triton.cdiv(oc, block_n),)
    out_desc = res_desc = w_desc  # stand-ins the kernel does not read
    tma_out = len(config) > 5 and config[5] and _lines_aligned(oc, out, res)
    if tma_out:
        box = [bb, th, 1, tw, block_n]
        out_desc = _rows_descriptor(_bytes(out), images, out_h, out_w, box)
        if res_mode:
            res_desc = _rows_descriptor(res, images, out_h, out_w, box)
    _qconv_tma_kernel[grid](
        x_desc, w_desc, out_desc, res_desc, _bytes(out), scales,
        bias if bias is not None else scales, res,
        images, out_h, out_w, tiles_m, tiles_h, tiles_w, oc, stride_rm, **runtime,
        C=c, N=oc, K=k, KW=kw, S=s, PH=ph, PW=pw, DH=dh, DW=dw,
        HAS_BIAS=bias is not None, RES_MODE=res_mode,
        IS_FP8=x.dtype == torch.float8_e4m3fn, **flags, BB=bb, TH=th, TW=tw,
        BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8, TMA_OUT=tma_out, num_warps=warps,
        num_stages=stages)
    return out


def _lines_aligned(n: int, out: torch.Tensor, residual: torch.Tensor) -> bool:
    """Whether output (and residual) lines of n channels start on 16-byte boundaries."""
    return all((n * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
               for t in (out, residual) if t.numel() > 1)


def _rows_descriptor(t: torch.Tensor, images: int, h: int, w: int, box: list[int]):
    """t's [images * h * w, n] rows as [images, h, 1, w, n] (the middle axis a stand-in for
    the stride axis of the input view)."""
    n = t.shape[-1] if t.dim() == 2 else t.shape[1]
    return TensorDescriptor(t, [images, h, 1, w, n], [h * w * n, w * n, n, n, 1], box)
