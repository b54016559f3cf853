"""kiln's own fused operators (domain "kiln"), made by the fusion passes.

These are the reference semantics of each fused layer, written with the same torch calls
as the ops they replace, so a fused graph computes what the original did. Fast tactics in
kiln/kernels/ implement the same functions.

- FusedConv:   act(Conv(x, w, b) + residual)
- FusedGemm:   act(a @ w + bias)          (w is [K, N], or [N, K] with trans_b=1)
- LayerNorm:   LayerNormalization(x + residual) (and the sum, as a second output; and
               the result quantized, as a third, when a quantized layer reads it)
- Attention:   softmax(q @ k^T * scale + mask) @ v, per batch and head (zero_nan_rows:
               rows whose mask removed every key give 0, not NaN)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kiln.ir import DType
from kiln.ops.conv import conv
from kiln.ops.registry import KILN_DOMAIN, register
from kiln.ops.tensors import torch_dtype

ACTIVATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "": lambda x, p: x,
    "Relu": lambda x, p: torch.relu(x),
    "Sigmoid": lambda x, p: torch.sigmoid(x),
    "Tanh": lambda x, p: torch.tanh(x),
    "SiLU": lambda x, p: F.silu(x),
    "GeluErf": lambda x, p: F.gelu(x),
    "GeluTanh": lambda x, p: F.gelu(x, approximate="tanh"),
    "LeakyRelu": lambda x, p: F.leaky_relu(x, p[0] if p else 0.01),
    "Clip": lambda x, p: torch.clamp(x, p[0], p[1]),
    "HardSigmoid": lambda x, p: torch.clamp(x * p[0] + p[1], 0, 1),
    "HardSwish": lambda x, p: F.hardswish(x),
}


def activate(x: torch.Tensor, name: str, params: list[float] | None = None) -> torch.Tensor:
    """`params`: LeakyRelu [alpha]; Clip [min, max]; HardSigmoid [alpha, beta]."""
    return ACTIVATIONS[name](x, params or [])


# the same, overwriting x: for a kernel's own fresh output (no second buffer, no allocation)
_IN_PLACE: dict[str, Callable[..., torch.Tensor]] = {
    "": lambda x, p: x,
    "Relu": lambda x, p: torch.relu_(x),
    "Sigmoid": lambda x, p: torch.sigmoid_(x),
    "Tanh": lambda x, p: torch.tanh_(x),
    "SiLU": lambda x, p: F.silu(x, inplace=True),
    "LeakyRelu": lambda x, p: F.leaky_relu_(x, p[0] if p else 0.01),
    "Clip": lambda x, p: torch.clamp_(x, p[0], p[1]),
    "HardSwish": lambda x, p: F.hardswish(x, inplace=True),
}


def activation_in_place(name: str, params: list[float] | None = None
                        ) -> Callable[[torch.Tensor], torch.Tensor]:
    """`activate` bound to its parameters, writing into its input where it can."""
    fn, bound = _IN_PLACE.get(name, ACTIVATIONS[name]), list(params or [])
    return lambda x: fn(x, bound)


@register("FusedConv", 1, domain=KILN_DOMAIN)
def fused_conv(x, w, b=None, residual=None, *, activation: str = "",
               activation_params: list[float] | None = None, auto_pad: str = "NOTSET",
               dilations=None, group: int = 1, kernel_shape=None, pads=None,
               strides=None) -> torch.Tensor:
    y = conv(x, w, b, auto_pad=auto_pad, dilations=dilations, group=group,
             kernel_shape=kernel_shape, pads=pads, strides=strides)
    if residual is not None:
        y = y + residual
    return activate(y, activation, activation_params)


@register("FusedGemm", 1, domain=KILN_DOMAIN)
def fused_gemm(a, w, bias=None, *, trans_b: int = 0, activation: str = "",
               activation_params: list[float] | None = None) -> torch.Tensor:
    weight = w.transpose(-1, -2) if trans_b else w
    y = torch.matmul(a, weight.to(a.dtype))
    if bias is not None:
        y = y + bias.to(y.dtype)
    return activate(y, activation, activation_params)


@register("LayerNorm", 1, domain=KILN_DOMAIN)
def layer_norm(x, residual=None, scale=None, bias=None, *, axis: int = -1,
               epsilon: float = 1e-5, quantize_scale: float = 0.0,
               quantize_zero_point: int = 0, quantize_to: str = "int8", num_outputs: int = 1,
               out_dtype: int | None = None):
    """out_dtype: y's type (ONNX's number) where it is not the input's: an FP16 engine's
    last LayerNorm writes the model's float32 output itself (kiln/build/precision.py)."""
    summed = x if residual is None else x + residual
    dims = summed.shape[axis if axis >= 0 else summed.dim() + axis:]
    work = summed.float() if summed.dtype in (torch.float16, torch.bfloat16) else summed
    y = F.layer_norm(work, dims, None if scale is None else scale.to(work.dtype),
                     None if bias is None else bias.to(work.dtype), epsilon).to(
                         output_dtype(out_dtype, summed.dtype))
    return layer_norm_outputs(y, summed, num_outputs, quantize_scale, quantize_zero_point,
                              quantize_to)


def output_dtype(out_dtype: int | None, default: torch.dtype | None) -> torch.dtype | None:
    """A LayerNorm's y type: the out_dtype attribute's, else `default` (its input's, or
    None for a tactic that resolves it once when it binds)."""
    return default if out_dtype is None else torch_dtype(DType(out_dtype))


def layer_norm_outputs(y: torch.Tensor, summed: torch.Tensor, num_outputs: int,
                       quantize_scale: float = 0.0, quantize_zero_point: int = 0,
                       quantize_to: str = "int8") -> torch.Tensor | tuple:
    """LayerNorm's outputs: y; (y, sum); or (y, sum, Quantize(y)) where fuse_layernorm_quantize
    gave the node the quantize step that read y: from y as stored, multiplied by the
    inverse scale as fused epilogues quantize (so within a level of the separate step)."""
    if num_outputs == 1:
        return y
    if num_outputs == 2:
        return y, summed
    from kiln.ops.quantized import inverse_scale
    from kiln.quant import arith

    return y, summed, arith.quantize(y, inverse_scale(quantize_scale), quantize_zero_point,
                                     qtype=quantize_to, inv_scale=True)


def to_bhsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    """q/k/v as [batch, heads, seq, dim] views: 'bhsd', 'bshd' (heads second-last but one)
    or 'bhds' (a pre-transposed key)."""
    if layout == "bshd":
        return t.transpose(1, 2)
    if layout == "bhds":
        return t.transpose(-1, -2)
    return t


@register("Attention", 1, domain=KILN_DOMAIN)
def attention(q, k, v, mask=None, *, scale: float | None = None, q_layout: str = "bhsd",
              k_layout: str = "bhsd", v_layout: str = "bhsd", out_layout: str = "bhsd",
              is_causal: int = 0, zero_nan_rows: int = 0) -> torch.Tensor:
    q, k, v = to_bhsd(q, q_layout), to_bhsd(k, k_layout), to_bhsd(v, v_layout)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.to(scores.dtype) if mask.dtype != torch.bool else \
            scores.masked_fill(~mask, float("-inf"))
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if zero_nan_rows:  # torch's SDPA export guards fully masked rows this way
        probs = torch.where(torch.isnan(probs), torch.zeros_like(probs), probs)
    out = torch.matmul(probs, v)
    return out.transpose(1, 2) if out_layout == "bshd" else out


@register("Gelu", 1, domain=KILN_DOMAIN)
def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


@register("HardSwish", 1, domain=KILN_DOMAIN)
def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """ONNX's HardSwish for graphs of any opset (it is in the standard set from 14 on)."""
    return F.hardswish(x)


@register("Elementwise", 1, domain=KILN_DOMAIN)
def elementwise(*inputs: torch.Tensor, program: list) -> torch.Tensor:
    from kiln.ops.elementwise_program import run_program

    return run_program(program, list(inputs))
