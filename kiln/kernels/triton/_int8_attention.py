"""INT8 fused attention for kiln.QAttention: scores, softmax, probabilities in steps of
1/127 and their product with v in one kernel, as kiln/ops/qattention.py computes them.

One program per (batch * head, BLOCK_M query rows). The keys are short (S_kv <= 256), so
the program loads all of K and V for its head as one tile of BLOCK_N keys and the softmax
is the reference's two passes over a whole row (maximum, then exponentials and their
sum), not an online softmax whose rescaling would round differently:

    acc = q @ k^T                     int8 tensor-core product, int32 (exact)
    s   = float32(acc) * factor + mask, -inf in the columns past S_kv
    pq  = round(exp(s - max) / sum * 127) as int8 (a row with max -inf: all zero)
    o   = float32(pq @ v) * v_factor  int8 product again, int32
    out = requantized to int8 (round half to even, saturated) or cast to a float type

q, k, v, the mask and the output are [B, H, S, D] views taken with whatever strides they
have (q, k and v are usually column slices of one QKV GEMM output, [B, S, 3 * H * D]), so
nothing is copied before the launch.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kiln.kernels.triton._int8_kernels import (
    _OUT_TORCH,
    OUT_MODES,
    _rounded_int,
    _saturated_steps,
    _small_int_float,
)
from kiln.kernels.triton._pdl import launch, wait_for_inputs
from kiln.kernels.triton.int8_attention import HEAD_DIMS, MAX_KEYS
from kiln.ops.qattention import P_STEPS, float_mask

# int8 tensor-core products take 32 along their depth (Ampere's and Hopper's MMA), and
# pq @ v's depth is the key tile: shorter key tiles are not a shape they take
MIN_KEY_TILE = 32
LOG2E = math.log2(math.e)
_MODE_OF = {dtype: mode for mode, dtype in _OUT_TORCH.items() if mode <= OUT_MODES["int8"]}


@triton.jit
def _exp2_ftz(x, PTX: tl.constexpr):
    """2**x by the special-function unit with subnormal results flushed to zero
    (ex2.approx.ftz.f32): tl.exp2's ex2.approx.f32 is wrapped by ptxas in a range test and
    two multiplies per element to keep subnormals, probabilities that round to 0 steps of
    1/127 anyway. The interpreter runs no PTX: tl.exp2 there."""
    if PTX:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=f,f", [x],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return tl.exp2(x)


@triton.jit
def _probability_steps(s, STEPS: tl.constexpr, RECIPROCAL: tl.constexpr,
                       EXP2: tl.constexpr = False, PTX: tl.constexpr = False):
    """round(softmax(s) * STEPS) per row of s, as int8; a row entirely -inf gives zeros
    (its exponentials are taken against 0 instead of -inf and its sum counted as 1).
    EXP2: s is in base-2 units (the scores times log2(e)) and the steps are the
    exponentials times STEPS / sum: four instructions an element fewer (_exp2_ftz, no
    product by log2(e), one product for the reciprocal and the steps)."""
    peak = tl.max(s, axis=1)
    blocked = peak == float("-inf")
    if EXP2:
        e = _exp2_ftz(s - tl.where(blocked, 0.0, peak)[:, None], PTX)
        total = tl.where(blocked, 1.0, tl.sum(e, axis=1))
        return _rounded_int(e * tl.math.div_rn(STEPS, total)[:, None]).to(tl.int8)
    e = tl.exp(s - tl.where(blocked, 0.0, peak)[:, None])
    total = tl.where(blocked, 1.0, tl.sum(e, axis=1))
    if RECIPROCAL:
        # one exact division per row and a product per element, within an ulp of the
        # quotient: an exact division costs about ten instructions and each program
        # makes BLOCK_M x BLOCK_N of them
        p = e * tl.math.div_rn(1.0, total)[:, None]
    else:
        # an exact division, as torch's: the fast one is 2 ulp off and would move more
        # probabilities across a rounding boundary than the exponential does
        p = tl.math.div_rn(e, total[:, None])
    return _rounded_int(p * STEPS).to(tl.int8)


@triton.jit
def _qattention_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, H, SQ, SKV, UNITS,
                       sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
                       smb, smh, sms, smn, sob, soh, sos, sod, factor, v_factor,
                       out_inv_scale, D: tl.constexpr, HAS_MASK: tl.constexpr,
                       OUT_MODE: tl.constexpr, STEPS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, RECIPROCAL: tl.constexpr = False,
                       EVEN_KEYS: tl.constexpr = False, MASK_ROW: tl.constexpr = False,
                       PERSISTENT: tl.constexpr = False, INTERPRETED_UNITS: tl.constexpr = 0,
                       EARLY_V: tl.constexpr = False, EXP2: tl.constexpr = False,
                       PTX: tl.constexpr = False, PDL: tl.constexpr = False):
    """UNITS: (batch * head, BLOCK_M query rows) blocks, one a program, or with PERSISTENT
    every num_programs-th from the program's own, in a loop whose loads the pipeliner
    issues a block ahead (num_stages 2), so that the next block's q, k and v arrive during
    this one's products and softmax. EVEN_KEYS: SKV == BLOCK_N, no key column to mask off;
    MASK_ROW: one mask row for all queries of a head (a padding mask), loaded once per
    block instead of per score. Triton's interpreter takes no loop bound known only at run
    time: there the host passes the blocks per program (INTERPRETED_UNITS)."""
    wait_for_inputs(PDL)
    if PERSISTENT and INTERPRETED_UNITS > 0:
        for i in range(INTERPRETED_UNITS):
            unit = tl.program_id(0) + i * tl.num_programs(0)
            if unit < UNITS:
                _attend_block(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, unit, H, SQ, SKV, sqb,
                              sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd, smb, smh,
                              sms, smn, sob, soh, sos, sod, factor, v_factor, out_inv_scale,
                              D, HAS_MASK, OUT_MODE, STEPS, BLOCK_M, BLOCK_N, RECIPROCAL,
                              EVEN_KEYS, MASK_ROW, EARLY_V, EXP2, PTX)
    elif PERSISTENT:
        for unit in tl.range(tl.program_id(0), UNITS, tl.num_programs(0)):
            _attend_block(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, unit, H, SQ, SKV, sqb, sqh,
                          sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd, smb, smh, sms,
                          smn, sob, soh, sos, sod, factor, v_factor, out_inv_scale, D,
                          HAS_MASK, OUT_MODE, STEPS, BLOCK_M, BLOCK_N, RECIPROCAL, EVEN_KEYS,
                          MASK_ROW, EARLY_V, EXP2, PTX)
    else:
        _attend_block(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, tl.program_id(0), H, SQ, SKV,
                      sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd, smb, smh,
                      sms, smn, sob, soh, sos, sod, factor, v_factor, out_inv_scale, D,
                      HAS_MASK, OUT_MODE, STEPS, BLOCK_M, BLOCK_N, RECIPROCAL, EVEN_KEYS,
                      MASK_ROW, EARLY_V, EXP2, PTX)


@triton.jit
def _attend_block(q_ptr, k_ptr, v_ptr, mask_ptr, out_ptr, unit, H, SQ, SKV,
                  sqb, sqh, sqs, sqd, skb, skh, sks, skd, svb, svh, svs, svd,
                  smb, smh, sms, smn, sob, soh, sos, sod, factor, v_factor,
                  out_inv_scale, D: tl.constexpr, HAS_MASK: tl.constexpr,
                  OUT_MODE: tl.constexpr, STEPS: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, RECIPROCAL: tl.constexpr, EVEN_KEYS: tl.constexpr,
                  MASK_ROW: tl.constexpr, EARLY_V: tl.constexpr, EXP2: tl.constexpr,
                  PTX: tl.constexpr):
    """The attention of one block of query rows of one head. EARLY_V: v's copy issued with
    q's and k's, before the scores, rather than after the softmax (its transpose into
    shared memory then waits before the first product, and holds 8 KiB more). EXP2: the
    scores in base-2 units (_probability_steps); PTX: a CUDA compile (not the interpreter)."""
    # the query blocks of one head are neighbours, so they share K and V in L2
    blocks_m = tl.cdiv(SQ, BLOCK_M)
    bh = unit // blocks_m
    b = bh // H
    h = bh % H
    rm = (unit % blocks_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    rd = tl.arange(0, D)
    row_ok = rm < SQ
    key_ok = (rn < BLOCK_N) if EVEN_KEYS else (rn < SKV)  # a constant where keys are even
    q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sqs + rd[None, :] * sqd,
                mask=row_ok[:, None], other=0)
    kt = tl.load(k_ptr + b * skb + h * skh + rd[:, None] * skd + rn[None, :] * sks,
                 mask=key_ok[None, :], other=0)  # [D, BLOCK_N]
    if EARLY_V:
        v = tl.load(v_ptr + b * svb + h * svh + rn[:, None] * svs + rd[None, :] * svd,
                    mask=key_ok[:, None], other=0)
    # the mask is loaded before the product, so its latency hides behind it (after it, the
    # row mask cost BERT-base's attention a tenth of its time on the H100)
    if HAS_MASK and MASK_ROW:
        bias = tl.load(mask_ptr + b * smb + h * smh + rn * smn, mask=key_ok,
                       other=0.0).to(tl.float32)[None, :]
    elif HAS_MASK:
        bias = tl.load(mask_ptr + b * smb + h * smh + rm[:, None] * sms + rn[None, :] * smn,
                       mask=row_ok[:, None] & key_ok[None, :], other=0.0).to(tl.float32)
    # |acc| <= D * 128 * 128 <= 2**21: converted without the slow instruction
    s = _small_int_float(tl.dot(q, kt))
    if HAS_MASK and EXP2:
        # the factor carries log2(e) (int8_attention), the mask is scaled to match, and
        # the two steps are one fused multiply-add (one rounding where the reference has two)
        s = tl.math.fma(s, tl.full(s.shape, factor, tl.float32),
                        tl.broadcast_to(bias * 1.4426950408889634, s.shape))
    elif HAS_MASK:
        s = s * factor + bias
    else:
        s = s * factor
    if not EVEN_KEYS:
        s = tl.where(key_ok[None, :], s, float("-inf"))
    pq = _probability_steps(s, STEPS, RECIPROCAL, EXP2, PTX)
    if not EARLY_V:
        v = tl.load(v_ptr + b * svb + h * svh + rn[:, None] * svs + rd[None, :] * svd,
                    mask=key_ok[:, None], other=0)
    o = tl.dot(pq, v).to(tl.float32)
    if OUT_MODE == 3 and EXP2:  # one product by both factors (a scalar's)
        out = _saturated_steps(o * (v_factor * out_inv_scale), 0, 3, False)
    elif OUT_MODE == 3:
        out = _saturated_steps(o * v_factor * out_inv_scale, 0, 3, False)
    elif OUT_MODE == 1:
        out = (o * v_factor).to(tl.float16)
    elif OUT_MODE == 2:
        out = (o * v_factor).to(tl.bfloat16)
    else:
        out = o * v_factor
    tl.store(out_ptr + b * sob + h * soh + rm[:, None] * sos + rd[None, :] * sod, out,
             mask=row_ok[:, None])


def check_shapes(head_dim: int, keys: int) -> None:
    """The sizes the kernel takes: raises ValueError for others."""
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"int8 attention kernel: head dim {head_dim} is not one of "
                         f"{HEAD_DIMS}")
    if keys > MAX_KEYS:
        raise ValueError(f"int8 attention kernel: {keys} keys, more than the {MAX_KEYS} "
                         "it holds in one tile")


def key_tile(keys: int) -> int:
    """BLOCK_N: all keys of a head, a power of two."""
    return max(MIN_KEY_TILE, triton.next_power_of_2(keys))


def _programs(units: int, per_sm: int, warps: int,
              device: torch.device) -> tuple[int, int, dict]:
    """(programs, blocks per program for the interpreter, launch options): a program a
    block, or for per_sm programs an SM at most that many, their registers capped so that
    they fit an SM's 64K together (at 128 keys the persistent kernel asks for 130 and takes
    128 without spills, compiled for sm_90a)."""
    if not per_sm:
        return units, 0, {}
    sms = torch.cuda.get_device_properties(device).multi_processor_count \
        if device.type == "cuda" else 2
    programs = min(units, per_sm * sms)
    interpreted = 0 if device.type == "cuda" else triton.cdiv(units, programs)
    regs = 65536 // (per_sm * warps * 32) // 8 * 8
    return programs, interpreted, {"maxnreg": regs} if regs < 255 else {}


def _mask_args(mask: torch.Tensor | None, shape: tuple[int, int, int, int],
               dummy: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The additive mask broadcast to [B, H, Sq, Skv] (stride 0 along the axes it lacks)
    and its strides; without a mask, a pointer the kernel never reads. A float mask is
    read in its own type (the kernel widens it to float32 as it loads: a conversion here
    would be a kernel launch per layer); a boolean one becomes float32 first."""
    if mask is None:
        return dummy, (0, 0, 0, 0)
    bias = float_mask(mask) if mask.dtype == torch.bool else mask
    bias = bias.expand(*shape)
    return bias, bias.stride()


def int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: torch.Tensor | None, out: torch.Tensor, *, factor: float,
                   v_factor: float, out_inv_scale: float | None, block_m: int,
                   warps: int, reciprocal: bool = False, per_sm: int = 0,
                   early_v: bool = False, exp2: bool = False) -> torch.Tensor:
    """q [B, H, Sq, D], k and v [B, H, Skv, D] (int8, any strides), mask broadcastable to
    [B, H, Sq, Skv] (additive float or bool, or None); writes out, a [B, H, Sq, D] view of
    any strides: int8 requantized with out_inv_scale, or float32/float16/bfloat16.
    reciprocal: the probabilities as exponentials times the reciprocal of their sum
    rather than divided by it (a step of 1/127 moves in rare rows, as the tests bound).
    per_sm: 0 for a program per block of query rows; else at most per_sm programs an SM,
    each walking its share of the blocks with the next block's loads issued ahead.
    early_v: v loaded with q and k (_attend_block's EARLY_V). exp2: the softmax in base 2
    (_probability_steps' EXP2), its probabilities by the reciprocal whatever `reciprocal`."""
    batch, heads, s_q, d = q.shape
    s_kv = k.shape[2]
    check_shapes(d, s_kv)
    if k.shape != (batch, heads, s_kv, d) or v.shape != k.shape or out.shape != q.shape:
        raise ValueError(f"int8 attention kernel: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, out {tuple(out.shape)} do not match")
    if any(t.dtype != torch.int8 for t in (q, k, v)) or out.dtype not in _MODE_OF:
        raise ValueError(f"int8 attention kernel: q, k, v {q.dtype}, {k.dtype}, {v.dtype} "
                         f"(int8 wanted), out {out.dtype} (int8 or a float type wanted)")
    out_mode = _MODE_OF[out.dtype]
    if out_mode == OUT_MODES["int8"] and out_inv_scale is None:
        raise ValueError("int8 attention kernel: an int8 output needs out_inv_scale")
    bias, mask_strides = _mask_args(mask, (batch, heads, s_q, s_kv), q)
    units = triton.cdiv(s_q, block_m) * batch * heads
    programs, interpreted, options = _programs(units, per_sm, warps, q.device)
    # no fused multiply-adds: each product rounds on its own as in the reference, where
    # p * 127 + 1.5 * 2**23 as one fma would round the probability's steps differently
    _qattention_kernel[(programs,)](
        q, k, v, bias, out, heads, s_q, s_kv, units, *q.stride(), *k.stride(), *v.stride(),
        *mask_strides, *out.stride(), float(factor) * (LOG2E if exp2 else 1.0),
        float(v_factor),
        float(out_inv_scale or 1.0), D=d, HAS_MASK=mask is not None, OUT_MODE=out_mode,
        STEPS=P_STEPS, BLOCK_M=block_m, BLOCK_N=key_tile(s_kv), RECIPROCAL=reciprocal,
        EVEN_KEYS=s_kv == key_tile(s_kv), MASK_ROW=mask_strides[2] == 0,
        PERSISTENT=bool(per_sm), INTERPRETED_UNITS=interpreted, EARLY_V=early_v, EXP2=exp2,
        PTX=q.device.type == "cuda",
        num_warps=warps, num_stages=2 if per_sm else 1, enable_fp_fusion=False, **options,
        **launch(out.device))
    return out
