"""kiln.QAttention: attention over INT8 q, k and v (made by kiln/quant/quantize_attention.py).

The reference is an exact simulation of what the GPU kernel computes, so INT8 engines
give the same answers on the CPU:

    acc = q @ k^T                         exact integers (|q|, |k| <= 128, D <= 128: int32
                                          on the GPU; float32 here is exact below 2**24)
    s   = float32(acc) * factor + mask    factor = float32(q_scale * k_scale * scale)
    p   = softmax(s) in float32           a row the mask blocks entirely is all zeros
    pq  = round(p * 127)                  the probabilities in steps of 1/127 (int8)
    o   = float32(pq @ v) * float32(v_scale / 127)
    out = requantize(o, out_scale), or o in out_dtype

The probabilities are quantized with the fixed scale 1/127 because they lie in [0, 1]
(TensorRT's INT8 fused attention does the same); that step, not the integer products,
is where QAttention differs from the float attention it replaces.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kiln.ops.fused import to_bhsd
from kiln.ops.quantized import epilogue
from kiln.ops.registry import KILN_DOMAIN, register

P_STEPS = 127.0  # the probabilities' int8 scale is 1 / P_STEPS


def score_factor(q_scale: float, k_scale: float, scale: float) -> float:
    """float32(q_scale * k_scale * scale): from the integer q.k to the softmax's input."""
    return float(np.float32(q_scale * k_scale * scale))


def value_factor(v_scale: float) -> float:
    """float32(v_scale / 127): from the integer p.v to the output."""
    return float(np.float32(v_scale / P_STEPS))


def softmax_scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if not scale else float(scale)


def float_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """The additive float32 mask (a boolean one blocks where False)."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(torch.float32)
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    return torch.where(mask, zero, torch.tensor(float("-inf"), device=mask.device))


@register("QAttention", 1, domain=KILN_DOMAIN)
def qattention(q, k, v, mask=None, *, q_scale: float = 1.0, k_scale: float = 1.0,
               v_scale: float = 1.0, scale: float | None = None, q_layout: str = "bhsd",
               k_layout: str = "bhsd", v_layout: str = "bhsd", out_layout: str = "bhsd",
               is_causal: int = 0, zero_nan_rows: int = 1, out_scale: float = 0.0,
               out_zero_point: int = 0, out_type: str = "int8",
               out_dtype: str = "fp32") -> torch.Tensor:
    q, k, v = to_bhsd(q, q_layout), to_bhsd(k, k_layout), to_bhsd(v, v_layout)
    factor = score_factor(q_scale, k_scale, softmax_scale(scale, q.shape[-1]))
    acc = torch.matmul(q.to(torch.float32), k.to(torch.float32).transpose(-1, -2))
    s = acc * factor
    bias = float_mask(mask)
    if bias is not None:
        s = s + bias
    if is_causal:
        causal = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~causal, float("-inf"))
    pq = probabilities(s)
    o = torch.matmul(pq, v.to(torch.float32))
    out = epilogue(o, value_factor(v_scale), None, None, 0.0, 0, "", None, out_scale,
                   out_zero_point, out_type, out_dtype)
    return out.transpose(1, 2) if out_layout == "bshd" else out


def probabilities(s: torch.Tensor) -> torch.Tensor:
    """round(softmax(s) * 127) as float32 integers; rows entirely -inf give zeros."""
    peak = s.amax(dim=-1, keepdim=True)
    blocked = torch.isneginf(peak)
    e = torch.exp(s - torch.where(blocked, torch.zeros_like(peak), peak))
    total = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(blocked, torch.ones_like(total), total)
    return torch.round(p * P_STEPS).masked_fill_(blocked, 0.0)
