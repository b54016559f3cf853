"""INT8 / FP8 tensor-core kernels with the quantized epilogue fused.

- `qgemm`: y[m, n] = epilogue(sum_k a[m, k] * w[n, k])      (kiln.QGemm, 1x1 convs)
- `qconv2d`: implicit-GEMM convolution over NHWC activations and [OC, KH, KW, C] weights
  (kiln.QConv, 2-D, one group): the im2col tile is gathered in the K loop, never stored.

The epilogue is kiln.ops.quantized's: the zero-point correction in int32
(acc - zp * sum_k w[n, k]), then float32 per-channel scale, bias, residual (float, or
int8 with its own scale), activation, and either the float output or requantization
(round half to even, saturate) to int8/uint8/fp8, so quantized activations go from one
layer to the next without a float round trip. uint8 inputs are shifted to int8 on load
(the tensor cores multiply signed bytes) and the zero point with them.

Loop bounds are compile-time constants (the layer's weights fix K, C, N and the kernel
window), so one compiled kernel serves every batch size and the kernels also run under
TRITON_INTERPRET=1 on the CPU, where the tests check them against the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kiln.kernels.triton._pdl import launch, wait_for_inputs

ACTIVATIONS = {"": 0, "Relu": 1, "Sigmoid": 2, "Tanh": 3, "SiLU": 4, "GeluErf": 5,
               "GeluTanh": 6, "LeakyRelu": 7, "Clip": 8, "HardSigmoid": 9, "HardSwish": 10}
# output modes: float types, then quantized types
OUT_MODES = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3, "uint8": 4, "fp8e4m3": 5}
_OUT_TORCH = {0: torch.float32, 1: torch.float16, 2: torch.bfloat16, 3: torch.int8,
              4: torch.uint8, 5: torch.float8_e4m3fn}


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _gelu_tanh_approx(y):
    """The tanh form of GELU with the GPU's tanh instruction (tanh.approx.f32, one special-
    function op, relative error 2**-10.99) instead of an exponential and a reciprocal,
    each also a special-function op with range fix-ups around it: compiled for the H100,
    six instructions an element where the exponential form takes about sixteen."""
    u = y * (0.7978845608028654 + 0.035677408136300125 * y * y)
    t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32,
                                  is_pure=True, pack=1)
    h = 0.5 * y
    return h + h * t


@triton.jit
def _activate(y, ACT: tl.constexpr, p0, p1, FAST_TANH: tl.constexpr = False):
    """FAST_TANH: the tanh-form GELU (6) by the GPU's tanh instruction (a CUDA compile
    only: the interpreter runs no PTX)."""
    if ACT == 6 and FAST_TANH:
        y = _gelu_tanh_approx(y)
    elif ACT == 1:
        y = tl.maximum(y, 0.0)
    elif ACT == 2:
        y = _sigmoid(y)
    elif ACT == 3:
        y = 2.0 * _sigmoid(2.0 * y) - 1.0
    elif ACT == 4:
        y = y * _sigmoid(y)
    elif ACT == 5:
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACT == 6:
        y = y * _sigmoid(1.5957691216057308 * (y + 0.044715 * y * y * y))
    elif ACT == 7:
        y = tl.where(y >= 0.0, y, y * p0)
    elif ACT == 8:
        y = tl.minimum(tl.maximum(y, p0), p1)
    elif ACT == 9:
        y = tl.minimum(tl.maximum(y * p0 + p1, 0.0), 1.0)
    elif ACT == 10:
        y = y * tl.minimum(tl.maximum(y + 3.0, 0.0), 6.0) / 6.0
    return y


@triton.jit
def _rounded_int(v):
    """float32 v (|v| <= 2**22, as the callers clamp it) rounded half to even, as int32:
    adding 1.5 * 2**23 leaves no fraction bits (float32 addition rounds to nearest even),
    and the integer is read from the sum's low bits. Hopper converts float32 <-> int32 at
    16 a clock per SM against 64 for integer additions, and a requantizing epilogue had
    converted each output element two or three times: at K = 64 (ResNet-50's 56x56 1x1
    layers) that rate, not memory, bounded the kernel."""
    return (v + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000


@triton.jit
def _small_int_float(v):
    """int32 v (|v| <= 2**22) as float32, exactly and without the conversion: the bits of
    1.5 * 2**23 + v less 1.5 * 2**23."""
    return (v + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@triton.jit
def _finish(acc, rm, row_ok, rn, N: tl.constexpr, out_ptr, stride_om, scales_ptr, bias_ptr,
            wsum_ptr, res_ptr, stride_rm, zp, res_scale, res_zp, out_inv_scale, out_zp,
            p0, p1, HAS_ZP: tl.constexpr, HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr,
            ACT: tl.constexpr, OUT_MODE: tl.constexpr, IS_FP8: tl.constexpr,
            SMALL_ACC: tl.constexpr = False, FAST_TANH: tl.constexpr = False):
    """The epilogue on an accumulator tile whose rows are output rows rm (where row_ok),
    stored through pointers."""
    mask = row_ok[:, None] & (rn < N)[None, :]
    r = acc  # no residual: unused
    if RES_MODE != 0:
        r = tl.load(res_ptr + rm[:, None] * stride_rm + rn[None, :], mask=mask, other=0)
    y = _epilogue(acc, rn, N, scales_ptr, bias_ptr, wsum_ptr, r, zp, res_scale, res_zp,
                  out_inv_scale, out_zp, p0, p1, HAS_ZP, HAS_BIAS, RES_MODE, ACT, OUT_MODE,
                  IS_FP8, SMALL_ACC, FAST_TANH)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], y, mask=mask)


@triton.jit
def _epilogue(acc, rn, N: tl.constexpr, scales_ptr, bias_ptr, wsum_ptr, r, zp, res_scale,
              res_zp, out_inv_scale, out_zp, p0, p1, HAS_ZP: tl.constexpr,
              HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr, ACT: tl.constexpr,
              OUT_MODE: tl.constexpr, IS_FP8: tl.constexpr, SMALL_ACC: tl.constexpr = False,
              FAST_TANH: tl.constexpr = False):
    """Zero-point correction, scales, bias, the residual tile r (RES_MODE 1: float,
    2: quantized bytes), activation; returns the tile as the output stores it (FP8 as its
    bytes, int8/uint8 requantized). SMALL_ACC: an int32 accumulator within 2**22 (K <= 256
    with zero point 0: 256 * 128 * 128 = 2**22), converted without the slow instruction.

    An int8/uint8 output after no activation, ReLU or LeakyRelu (each commutes with a
    positive factor) is computed in output steps from the start: the per-column factors,
    the bias and the residual's factor are multiplied by 1 / out_scale once per tile
    rather than each element once more, ReLU is the lower bound of the saturation, and
    the saturation happens before rounding (the bounds are whole steps), not after it in
    integers. In memory-bound layers the epilogue's instructions per element, not the
    bytes, had set the pace (ResNet-50's 1x1 64->256 layers at 56x56)."""
    mask_n = rn < N
    if HAS_ZP:
        wsum = tl.load(wsum_ptr + rn, mask=mask_n, other=0)
        acc = acc - zp * wsum[None, :]
    scales = tl.load(scales_ptr + rn, mask=mask_n, other=0.0)
    if (OUT_MODE == 3 or OUT_MODE == 4) and (ACT == 0 or ACT == 1 or ACT == 7):
        scales = scales * out_inv_scale
        res_scale = res_scale * out_inv_scale
    if SMALL_ACC and not IS_FP8:
        y = _small_int_float(acc) * scales[None, :]
    else:
        y = acc.to(tl.float32) * scales[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=mask_n, other=0.0)
        if (OUT_MODE == 3 or OUT_MODE == 4) and (ACT == 0 or ACT == 1 or ACT == 7):
            bias = bias * out_inv_scale
        y = y + bias[None, :]
    if RES_MODE == 1:
        if (OUT_MODE == 3 or OUT_MODE == 4) and (ACT == 0 or ACT == 1 or ACT == 7):
            y = y + r.to(tl.float32) * out_inv_scale
        else:
            y = y + r.to(tl.float32)
    elif RES_MODE == 2:
        if IS_FP8:  # an FP8 residual arrives as its bytes, with no zero point
            y = y + r.to(tl.float8e4nv, bitcast=True).to(tl.float32) * res_scale
        else:
            y = y + _small_int_float(r.to(tl.int32) - res_zp) * res_scale
    if (OUT_MODE == 3 or OUT_MODE == 4) and (ACT == 0 or ACT == 1 or ACT == 7):
        if ACT == 7:
            y = tl.where(y >= 0.0, y, y * p0)
        out = _saturated_steps(y, out_zp, OUT_MODE, ACT == 1)
    else:
        y = _activate(y, ACT, p0, p1, FAST_TANH)
        if OUT_MODE == 0:
            out = y
        elif OUT_MODE == 1:
            out = y.to(tl.float16)
        elif OUT_MODE == 2:
            out = y.to(tl.bfloat16)
        else:
            out = quantized(y, out_inv_scale, out_zp, OUT_MODE, INVERSE=True)
    return out


@triton.jit
def _saturated_steps(q, zp, OUT_MODE: tl.constexpr, RELU: tl.constexpr):
    """q, in output steps, as int8 (OUT_MODE 3) or uint8: saturated to the type's range
    less the zero point (with RELU, from 0), then rounded half to even and shifted by the
    zero point, which lands inside the range without a second clamp."""
    if OUT_MODE == 3:
        low = -128.0 - zp
        high = 127.0 - zp
    else:
        low = 0.0 - zp
        high = 255.0 - zp
    if RELU:
        low = tl.maximum(low, 0.0)
    qi = _rounded_int(tl.minimum(tl.maximum(q, low), high)) + zp
    if OUT_MODE == 3:
        out = qi.to(tl.int8)
    else:
        out = qi.to(tl.uint8)
    return out


@triton.jit
def _load_a(ptrs, mask, other, A_UINT8: tl.constexpr, IS_FP8: tl.constexpr):
    """FP8 tensors arrive as their bytes (masked lanes read byte 0 = +0.0)."""
    a = tl.load(ptrs, mask=mask, other=other)
    if A_UINT8:
        a = (a.to(tl.int16) - 128).to(tl.int8)
    if IS_FP8:
        a = a.to(tl.float8e4nv, bitcast=True)
    return a


@triton.jit
def _load_w(ptrs, mask, IS_FP8: tl.constexpr):
    w = tl.load(ptrs, mask=mask, other=0)
    if IS_FP8:
        w = w.to(tl.float8e4nv, bitcast=True)
    return w


@triton.jit
def _tile_start(M, N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                GROUP_M: tl.constexpr):
    """Grouped ordering of output tiles, so neighbouring programs share A rows in L2."""
    return _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)


@triton.jit
def _tile_of(pid, M, N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             GROUP_M: tl.constexpr):
    """(row block, column block) of output tile `pid` in the grouped order."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = (N + BLOCK_N - 1) // BLOCK_N
    width = GROUP_M * grid_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def _qgemm_kernel(a_ptr, w_ptr, out_ptr, scales_ptr, bias_ptr, wsum_ptr, res_ptr,
                  M, stride_am, stride_om, stride_rm, zp, res_scale, res_zp, out_inv_scale,
                  out_zp, p0, p1,
                  N: tl.constexpr, K: tl.constexpr, A_UINT8: tl.constexpr,
                  HAS_ZP: tl.constexpr, HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr,
                  ACT: tl.constexpr, OUT_MODE: tl.constexpr, IS_FP8: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    pid_m, pid_n = _tile_start(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    if IS_FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = _load_a(a_ptr + rm[:, None] * stride_am + kk[None, :],
                    (rm[:, None] < M) & (kk[None, :] < K), 0, A_UINT8, IS_FP8)
        b = _load_w(w_ptr + rn[None, :] * K + kk[:, None],
                    (rn[None, :] < N) & (kk[:, None] < K), IS_FP8)
        acc += tl.dot(a, b)
    _finish(acc, rm, rm < M, rn, N, out_ptr, stride_om, scales_ptr, bias_ptr, wsum_ptr, res_ptr,
            stride_rm, zp, res_scale, res_zp, out_inv_scale, out_zp, p0, p1, HAS_ZP,
            HAS_BIAS, RES_MODE, ACT, OUT_MODE, IS_FP8)


@triton.jit
def _qconv_kernel(x_ptr, w_ptr, out_ptr, scales_ptr, bias_ptr, wsum_ptr, res_ptr,
                  M, H, W, OH, OW, sxb, sxh, sxw, stride_om, stride_rm, zp, pad_value,
                  res_scale, res_zp, out_inv_scale, out_zp, p0, p1,
                  C: tl.constexpr, N: tl.constexpr, K: tl.constexpr, KH: tl.constexpr,
                  KW: tl.constexpr,
                  SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                  DH: tl.constexpr, DW: tl.constexpr, A_UINT8: tl.constexpr,
                  HAS_ZP: tl.constexpr, HAS_BIAS: tl.constexpr, RES_MODE: tl.constexpr,
                  ACT: tl.constexpr, OUT_MODE: tl.constexpr, IS_FP8: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    pid_m, pid_n = _tile_start(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    ow = rm % OW
    oh = (rm // OW) % OH
    b = rm // (OW * OH)
    in_m = rm < M
    if IS_FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    if C % BLOCK_K == 0:
        # one loop over K: each step stays inside one kernel tap, so it pipelines
        for k0 in range(0, K, BLOCK_K):
            tap = k0 // C
            c = k0 % C + rk
            ih = oh * SH - PH + (tap // KW) * DH
            iw = ow * SW - PW + (tap % KW) * DW
            inside = in_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            rows = b * sxb + ih * sxh + iw * sxw
            a = _load_a(x_ptr + rows[:, None] + c[None, :], inside[:, None], pad_value,
                        A_UINT8, IS_FP8)
            w = _load_w(w_ptr + rn[None, :] * K + (k0 + rk)[:, None], rn[None, :] < N, IS_FP8)
            acc += tl.dot(a, w)
    elif C * 4 <= BLOCK_K:
        # few channels (an RGB stem): K = (kh, kw, c) flattened, each column gathered from
        # its own tap, so the steps are K / BLOCK_K and not one per tap, mostly masked
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            tap = kk // C
            ih = oh[:, None] * SH - PH + (tap // KW)[None, :] * DH
            iw = ow[:, None] * SW - PW + (tap % KW)[None, :] * DW
            inside = in_m[:, None] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            ptrs = x_ptr + b[:, None] * sxb + ih * sxh + iw * sxw + (kk % C)[None, :]
            a = _load_a(ptrs, inside & (kk[None, :] < K), pad_value, A_UINT8, IS_FP8)
            w = _load_w(w_ptr + rn[None, :] * K + kk[:, None],
                        (rn[None, :] < N) & (kk[:, None] < K), IS_FP8)
            acc += tl.dot(a, w)
    else:
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                ih = oh * SH - PH + kh * DH
                iw = ow * SW - PW + kw * DW
                inside = in_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                rows = b * sxb + ih * sxh + iw * sxw
                for c0 in range(0, C, BLOCK_K):
                    c = c0 + rk
                    a = _load_a(x_ptr + rows[:, None] + c[None, :],
                                inside[:, None] & (c[None, :] < C), pad_value, A_UINT8, IS_FP8)
                    w = _load_w(w_ptr + rn[None, :] * K + ((kh * KW + kw) * C + c)[:, None],
                                (rn[None, :] < N) & (c[:, None] < C), IS_FP8)
                    acc += tl.dot(a, w)
    _finish(acc, rm, rm < M, rn, N, out_ptr, stride_om, scales_ptr, bias_ptr, wsum_ptr, res_ptr,
            stride_rm, zp, res_scale, res_zp, out_inv_scale, out_zp, p0, p1, HAS_ZP,
            HAS_BIAS, RES_MODE, ACT, OUT_MODE, IS_FP8)


@triton.jit
def _rows_epilogue_kernel(y_ptr, out_ptr, ones_ptr, M, stride_ym, stride_om, res_scale, res_zp,
                          out_inv_scale, out_zp, p0, p1, N: tl.constexpr, ACT: tl.constexpr,
                          OUT_MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    y = tl.load(y_ptr + rm[:, None] * stride_ym + rn[None, :],
                mask=(rm < M)[:, None] & (rn < N)[None, :], other=0.0).to(tl.float32)
    _finish(y, rm, rm < M, rn, N, out_ptr, stride_om, ones_ptr, ones_ptr, ones_ptr, ones_ptr,
            0, 0, res_scale, res_zp, out_inv_scale, out_zp, p0, p1, False, False, 0, ACT,
            OUT_MODE, True)


# ----------------------------------------------------------------------------- launchers
def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def _epilogue_args(epi: dict, device: torch.device) -> tuple[dict, dict]:
    """Runtime scalars and compile-time flags of the shared epilogue."""
    params = list(epi.get("activation_params") or []) + [0.0, 0.0]
    if epi.get("activation") == "LeakyRelu" and not epi.get("activation_params"):
        params[0] = 0.01
    out_mode = OUT_MODES[epi["out_type"]] if epi.get("out_scale") else OUT_MODES[
        epi.get("out_dtype", "fp32")]
    runtime = dict(res_scale=float(epi.get("residual_scale", 0.0)),
                   res_zp=int(epi.get("residual_zero_point", 0)),
                   out_inv_scale=float(epi.get("out_inv_scale", 1.0)),
                   out_zp=int(epi.get("out_zero_point", 0)),
                   p0=float(params[0]), p1=float(params[1]))
    flags = dict(ACT=ACTIVATIONS[epi.get("activation", "")], OUT_MODE=out_mode, **launch(device))
    return runtime, flags


def _residual(residual: torch.Tensor | None, epi: dict, rows: int, n: int, device):
    if residual is None:
        return torch.empty(1, device=device), 0, 0
    mode = 2 if epi.get("residual_scale") else 1
    return _bytes(residual), mode, n


def _gemm_io(a: torch.Tensor, w: torch.Tensor, epi: dict, residual: torch.Tensor | None
             ) -> tuple:
    """What a GEMM launch prepares: M, N, the epilogue's runtime scalars and flags, the
    output [M, N], and the residual as (tensor, mode, row stride)."""
    m, n = a.shape[0], w.shape[0]
    runtime, flags = _epilogue_args(epi, a.device)
    out = torch.empty((m, n), dtype=_OUT_TORCH[flags["OUT_MODE"]], device=a.device)
    return m, n, runtime, flags, out, _residual(residual, epi, m, n, a.device)


def qgemm(a: torch.Tensor, w: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
          wsum: torch.Tensor | None, zp: int, epi: dict, config: tuple,
          residual: torch.Tensor | None = None) -> torch.Tensor:
    """a: [M, K] (int8, uint8 or float8, rows contiguous), w: [N, K] contiguous."""
    block_m, block_n, block_k, warps, stages = config
    m, n, runtime, flags, out, (res, res_mode, stride_rm) = _gemm_io(a, w, epi, residual)
    k = a.shape[1]
    a_uint8 = a.dtype == torch.uint8
    fp8 = a.dtype == torch.float8_e4m3fn
    zp = zp - 128 if a_uint8 else zp
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _qgemm_kernel[grid](
        _bytes(a), _bytes(w), _bytes(out), scales, bias if bias is not None else scales,
        wsum if wsum is not None else scales, res, m, a.stride(0), out.stride(0), stride_rm,
        zp, **runtime, N=n, K=k, A_UINT8=a_uint8, HAS_ZP=zp != 0, HAS_BIAS=bias is not None,
        RES_MODE=res_mode, IS_FP8=fp8, **flags,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        num_warps=warps, num_stages=stages)
    return out


def qconv2d(x: torch.Tensor, w: torch.Tensor, kernel: tuple[int, int], stride: tuple,
            pads: tuple, dilation: tuple, scales: torch.Tensor, bias: torch.Tensor | None,
            wsum: torch.Tensor | None, zp: int, epi: dict, config: tuple,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """x: [B, C, H, W] in channels-last memory; w: [OC, KH*KW*C] (taps major, C minor);
    pads: (top, left, bottom, right). Returns [B, OC, OH, OW] in channels-last memory."""
    block_m, block_n, block_k, warps, stages = config
    batch, c, h, wd = x.shape
    kh, kw = kernel
    oc = w.shape[0]
    oh = (h + pads[0] + pads[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pads[1] + pads[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    x = x.contiguous(memory_format=torch.channels_last)
    runtime, flags = _epilogue_args(epi, x.device)
    out = torch.empty((batch, oc, oh, ow), dtype=_OUT_TORCH[flags["OUT_MODE"]],
                      device=x.device, memory_format=torch.channels_last)
    m = batch * oh * ow
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    res, res_mode, stride_rm = _residual(residual, epi, m, oc, x.device)
    a_uint8 = x.dtype == torch.uint8
    fp8 = x.dtype == torch.float8_e4m3fn
    pad_value = zp  # a padded tap holds the zero point: it stands for a real 0
    zp = zp - 128 if a_uint8 else zp
    grid = (triton.cdiv(m, block_m) * triton.cdiv(oc, block_n),)
    _qconv_kernel[grid](
        _bytes(x), _bytes(w), _bytes(out), scales, bias if bias is not None else scales,
        wsum if wsum is not None else scales, res, m, h, wd, oh, ow, x.stride(0),
        x.stride(2), x.stride(3), oc, stride_rm, zp, pad_value, **runtime,
        C=c, N=oc, K=kh * kw * c, KH=kh, KW=kw, SH=stride[0], SW=stride[1], PH=pads[0], PW=pads[1],
        DH=dilation[0], DW=dilation[1], A_UINT8=a_uint8, HAS_ZP=zp != 0,
        HAS_BIAS=bias is not None, RES_MODE=res_mode, IS_FP8=fp8, **flags,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=8,
        num_warps=warps, num_stages=stages)
    return out


@triton.jit
def _quantize_kernel(x_ptr, out_ptr, n, scale, zp, OUT_MODE: tl.constexpr,
                     BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offsets, quantized(x, scale, zp, OUT_MODE), mask=mask)


@triton.jit
def quantized(x, scale, zp, OUT_MODE: tl.constexpr, INVERSE: tl.constexpr = False):
    """Quantize's values of float32 x as the output stores them (FP8 as its bytes);
    INVERSE: scale holds 1 / scale and multiplies, as fused epilogues do."""
    if INVERSE:
        q = x * scale
    else:
        q = tl.math.div_rn(x, scale)  # ONNX divides; round to nearest like the reference
    if OUT_MODE == 5:
        q = tl.minimum(tl.maximum(q, -448.0), 448.0)
        out = q.to(tl.float8e4nv, fp_downcast_rounding="rtne").to(tl.uint8, bitcast=True)
    else:
        qi = _rounded_int(tl.minimum(tl.maximum(q, -512.0), 512.0)) + zp
        if OUT_MODE == 3:
            out = tl.minimum(tl.maximum(qi, -128), 127).to(tl.int8)
        else:
            out = tl.minimum(tl.maximum(qi, 0), 255).to(tl.uint8)
    return out


@triton.jit
def _dequantize_kernel(q_ptr, out_ptr, n, scale, zp, IS_FP8: tl.constexpr,
                       OUT_MODE: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    wait_for_inputs(PDL)
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    q = tl.load(q_ptr + offsets, mask=mask, other=0)
    if IS_FP8:
        y = q.to(tl.float8e4nv, bitcast=True).to(tl.float32) * scale
    else:
        y = (q.to(tl.int32) - zp).to(tl.float32) * scale
    if OUT_MODE == 0:
        tl.store(out_ptr + offsets, y, mask=mask)
    elif OUT_MODE == 1:
        tl.store(out_ptr + offsets, y.to(tl.float16), mask=mask)
    else:
        tl.store(out_ptr + offsets, y.to(tl.bfloat16), mask=mask)


def dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill its storage in some standard order (so an elementwise
    kernel can walk memory and an empty_like output has the same layout)."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(
        memory_format=torch.channels_last))


def quantize(x: torch.Tensor, scale: float, zp: int, qtype: str) -> torch.Tensor:
    out = torch.empty_like(x, dtype=_OUT_TORCH[OUT_MODES[qtype]])
    n = x.numel()
    _quantize_kernel[(triton.cdiv(n, 1024),)](x, _bytes(out), n, scale, zp,
                                              OUT_MODE=OUT_MODES[qtype], BLOCK=1024,
                                              **launch(x.device))
    return out


def dequantize(q: torch.Tensor, scale: float, zp: int, out_dtype: str) -> torch.Tensor:
    out = torch.empty_like(q, dtype=_OUT_TORCH[OUT_MODES[out_dtype]])
    n = q.numel()
    _dequantize_kernel[(triton.cdiv(n, 1024),)](
        _bytes(q), out, n, scale, zp, IS_FP8=q.dtype == torch.float8_e4m3fn,
        OUT_MODE=OUT_MODES[out_dtype], BLOCK=1024, **launch(q.device))
    return out


def rows_epilogue(y: torch.Tensor, ones: torch.Tensor, epi: dict) -> torch.Tensor:
    """The epilogue's activation and output conversion (requantization or a float type) on
    a float matrix y [M, N] with rows contiguous, whose scales and bias are already applied
    (a cuBLASLt product): one pass instead of torch's chain. ones: N float32 ones."""
    m, n = y.shape
    runtime, flags = _epilogue_args(epi, y.device)
    out = torch.empty((m, n), dtype=_OUT_TORCH[flags["OUT_MODE"]], device=y.device)
    grid = (triton.cdiv(m, 64), triton.cdiv(n, 128))
    _rows_epilogue_kernel[grid](y, _bytes(out), ones, m, y.stride(0), n, **runtime, N=n,
                                **flags, BLOCK_M=64, BLOCK_N=128)
    return out
