"""Attention (opset 23+): scaled dot-product attention with masks, KV cache, GQA, softcap.

One additive bias [.., q, kv] carries every mask (attn_mask, causal, sliding window,
padding of an external cache), as ONNX's reference builds it; a query row the bias masks
completely yields zeros. Half-precision inputs compute in float32. The plain cases (no
mask beyond a top-left causal one, no softcap, no score output) go to torch's fused
scaled_dot_product_attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kiln.ir import DType
from kiln.ops.registry import register
from kiln.ops.tensors import torch_dtype

_HALF = (torch.float16, torch.bfloat16)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, S, H*D] -> [B, H, S, D]."""
    batch, length, hidden = x.shape
    return x.reshape(batch, length, num_heads, hidden // num_heads).transpose(1, 2)


def _positions(q_len: int, kv_len: int, offset: torch.Tensor | int,
               device: torch.device) -> torch.Tensor:
    """(query position + offset) - key position: [q, kv], or [B, 1, q, kv] per batch."""
    i = torch.arange(q_len, device=device).reshape(q_len, 1)
    j = torch.arange(kv_len, device=device).reshape(1, kv_len)
    if isinstance(offset, torch.Tensor):
        return (i + offset.reshape(-1, 1, 1, 1)) - j
    return (i + offset) - j


def _blocked(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.tensor(float("-inf"), dtype=dtype,
                                                   device=allowed.device))


def attention_bias(
    q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device,
    attn_mask: torch.Tensor | None, is_causal: int, past_len: int,
    nonpad_kv_seqlen: torch.Tensor | None, left_window: int, right_window: int,
) -> torch.Tensor:
    """The additive bias every mask folds into (0 = attend, -inf = masked)."""
    bias = torch.zeros((q_len, kv_len), dtype=dtype, device=device)
    if attn_mask is not None:
        pad = kv_len - attn_mask.shape[-1]
        if attn_mask.dtype == torch.bool:
            mask = _blocked(attn_mask, dtype)
        else:
            mask = attn_mask.to(dtype)
        if pad > 0:  # a mask shorter than the keys masks the rest
            mask = F.pad(mask, [0, pad], value=float("-inf"))
        bias = bias + mask
    # the offset: keys that precede the query block (bottom-right alignment)
    if past_len == 0 and nonpad_kv_seqlen is not None:
        offset: torch.Tensor | int = nonpad_kv_seqlen.to(torch.int64) - q_len
    else:
        offset = past_len
    if is_causal or left_window >= 0 or right_window >= 0:
        diff = _positions(q_len, kv_len, offset, device)
        allowed = torch.ones_like(diff, dtype=torch.bool)
        if is_causal:
            allowed &= diff >= 0
        if left_window >= 0:
            allowed &= diff <= left_window
        if right_window >= 0:
            allowed &= -diff <= right_window
        bias = bias + _blocked(allowed, dtype)
    if nonpad_kv_seqlen is not None:
        keys = torch.arange(kv_len, device=device).reshape(1, kv_len)
        valid = keys < nonpad_kv_seqlen.to(torch.int64).reshape(-1, 1)
        bias = bias + _blocked(valid, dtype).reshape(-1, 1, 1, kv_len)
    return bias


@register("Attention", 23)
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
    past_key: torch.Tensor | None = None, past_value: torch.Tensor | None = None,
    nonpad_kv_seqlen: torch.Tensor | None = None, *, is_causal: int = 0,
    kv_num_heads: int = 0, q_num_heads: int = 0, qk_matmul_output_mode: int = 0,
    scale: float | None = None, softcap: float = 0.0, softmax_precision: int = 0,
    left_window_size: int = -1, right_window_size: int = -1, num_outputs: int = 1,
):
    if (past_key is None) != (past_value is None):
        raise ValueError("Attention takes past_key and past_value together or neither")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise ValueError("Attention cannot combine nonpad_kv_seqlen with past_key/past_value")
    three_d = q.dim() == 3
    if three_d:
        if not (q_num_heads and kv_num_heads):
            raise ValueError("Attention with 3-D inputs needs q_num_heads and kv_num_heads")
        q, k, v = _heads(q, q_num_heads), _heads(k, kv_num_heads), _heads(v, kv_num_heads)
    dtype = q.dtype
    present_key = k if past_key is None else torch.cat([past_key, k], dim=2)
    present_value = v if past_value is None else torch.cat([past_value, v], dim=2)
    if scale is None or scale == 0:
        scale = 1.0 / math.sqrt(q.shape[-1])
    past_len = 0 if past_key is None else past_key.shape[2]
    simple = (attn_mask is None and nonpad_kv_seqlen is None and num_outputs <= 3
              and not softcap and not softmax_precision and left_window_size < 0
              and right_window_size < 0 and (not is_causal or past_len == 0)
              and q.shape[2] <= present_key.shape[2])
    # half types compute in float32, except in CUDA's fused kernels (which accumulate in
    # float32 themselves)
    work = torch.float32 if dtype in _HALF and not (simple and q.is_cuda) else dtype
    keys, values = present_key.to(work), present_value.to(work)
    if keys.shape[1] != q.shape[1]:  # grouped-query attention: each KV head serves a group
        group = q.shape[1] // keys.shape[1]
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
    query = q.to(work)
    if simple:
        y = F.scaled_dot_product_attention(query, keys, values, is_causal=bool(is_causal),
                                           scale=scale)
        scores = None
    else:
        y, scores = _explicit(query, keys, values, attn_mask, is_causal, past_len,
                              nonpad_kv_seqlen, left_window_size, right_window_size, scale,
                              softcap, softmax_precision, qk_matmul_output_mode, work)
    y = y.to(dtype)
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    if num_outputs == 1:
        return y
    outputs = (y, present_key, present_value)
    if num_outputs >= 4:
        outputs += (scores.to(dtype),)
    return outputs[:num_outputs]


def _explicit(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
    attn_mask: torch.Tensor | None, is_causal: int, past_len: int,
    nonpad_kv_seqlen: torch.Tensor | None, left_window: int, right_window: int, scale: float,
    softcap: float, softmax_precision: int, mode: int, work: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores, bias, softmax and product step by step; returns Y and the chosen scores."""
    root = math.sqrt(scale)  # Q and K each scaled by sqrt(scale) against overflow
    raw = torch.matmul(query * root, (keys * root).transpose(-1, -2))
    capped = raw
    if softcap > 0:  # before the bias, so masked scores stay -inf
        capped = torch.tanh(raw / softcap) * softcap
    bias = attention_bias(query.shape[2], keys.shape[2], work, query.device, attn_mask,
                          is_causal, past_len, nonpad_kv_seqlen, left_window, right_window)
    logits = capped + bias
    if softmax_precision:
        logits = logits.to(torch_dtype(DType(int(softmax_precision))))
    probs = _softmax(logits).to(work)
    # a row the bias masks completely attends nothing: zeros, decided on the bias alone
    # so a NaN or inf score cannot leak through
    empty = torch.isneginf(bias.amax(dim=-1, keepdim=True))
    probs = torch.where(empty, torch.zeros((), dtype=work, device=probs.device), probs)
    y = torch.matmul(probs, values)
    scores = {0: raw, 1: capped, 2: logits.to(work), 3: probs}.get(mode, raw)
    return y, scores


def _softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax whose all -inf rows give zeros rather than NaN."""
    peak = x.amax(dim=-1, keepdim=True)
    peak = torch.where(torch.isneginf(peak), torch.zeros_like(peak), peak)
    e = torch.exp(x - peak)
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)
