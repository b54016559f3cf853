"""kiln's quantized operators (domain "kiln"), made by kiln/passes/lower_qdq.py.

Their reference implementations are an exact simulation of the integer arithmetic the
GPU kernels do, so INT8 engines run (and are tested) on the CPU with the same answers:

    acc = sum((x - x_zero_point) * w)          exact integers (int32 on the GPU; here float64,
                                                or float32 where the sums stay below 2**24)
    y   = float32(acc) * float32(x_scale * w_scale[c]) + bias[c]          (float32)
    y   = act(y + residual)      residual: float, or int8 dequantized with its own scale
    out = y in out_dtype, or requantized: saturate(round(y * (1 / out_scale)) + out_zp)

FP8 (E4M3) layers take float8 x and w without zero points and accumulate in float32.
Scales, zero points and the bias are attributes (they are part of the layer's
arithmetic, so precision assignment never converts them); weights are a constant input
that tactics may store re-laid-out.

- Quantize:   ONNX QuantizeLinear with constant parameters (to int8/uint8/fp8e4m3)
- Dequantize: ONNX DequantizeLinear with constant parameters (to out_dtype)
- QConv:      act(conv(x, w) * scales + bias + residual), x/w quantized
- QGemm:      act(a @ w^T * scales + bias), w stored [N, K]
- QMatMul:    a @ b with both quantized per tensor (activation x activation)
- GatherDequantize: rows of an int8 table (weights only, a scale per row) as floats,
              made by kiln/quant/quantize_embeddings.py
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.ops.conv import conv
from kiln.ops.fused import activate
from kiln.ops.gather import gather
from kiln.ops.registry import KILN_DOMAIN, register
from kiln.quant import arith

_FLOAT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def inverse_scale(scale: float) -> float:
    """1 / scale, rounded to float32 the way every tactic computes it."""
    return float(np.float32(1.0) / np.float32(scale))


def combined_scales(x_scale: float, w_scale: Any) -> np.ndarray:
    """float32(x_scale * w_scale[c]), the per-channel factor of the epilogue."""
    return (np.float32(x_scale) * np.asarray(w_scale, dtype=np.float32).reshape(-1)).astype(
        np.float32)


@register("Quantize", 1, domain=KILN_DOMAIN)
def quantize(x, *, scale: Any = 1.0, zero_point: Any = 0, axis: int = 1,
             to: str = "int8") -> torch.Tensor:
    return arith.quantize(x, scale, zero_point, axis, to)


@register("Dequantize", 1, domain=KILN_DOMAIN)
def dequantize(q, *, scale: Any = 1.0, zero_point: Any = 0, axis: int = 1,
               out_dtype: str = "fp32") -> torch.Tensor:
    return arith.dequantize(q, scale, zero_point, axis, _FLOAT[out_dtype])


@register("GatherDequantize", 1, domain=KILN_DOMAIN)
def gather_dequantize(table: torch.Tensor, scales: torch.Tensor,
                      indices: torch.Tensor) -> torch.Tensor:
    """Gather(table * scales, indices) along rows, table int8 [V, E] and scales [V, 1] in
    the output's float type: a row's integers times its scale, one rounding."""
    return gather(table, indices).to(scales.dtype) * gather(scales, indices)


def centered(q: torch.Tensor, zero_point: int, dtype: torch.dtype) -> torch.Tensor:
    """q - zero_point as exact numbers of `dtype` (float64 for integers)."""
    value = q.to(dtype)
    return value - zero_point if zero_point else value


def exact_terms(x: torch.Tensor, zero_point: int, w: torch.Tensor) -> int | None:
    """On the CPU (whose convolutions and GEMMs add products directly), how many products
    a float32 sum can take while staying exact (|sum| < 2**24); None means use float64
    (exact for any int32 sum) and 0 that float32 is exact for any length (FP8 values)."""
    if w.is_floating_point():
        return 0
    if x.device.type != "cpu" or x.numel() == 0 or w.numel() == 0:
        return None
    x_bound = max(abs(int(x.max()) - zero_point), abs(int(x.min()) - zero_point))
    w_bound = int(w.to(torch.int16).abs().max())
    return (2**24 - 1) // max(x_bound * w_bound, 1)


def accumulate_dtype(x: torch.Tensor, zero_point: int, w: torch.Tensor, k: int) -> torch.dtype:
    terms = exact_terms(x, zero_point, w)
    return torch.float32 if terms == 0 or (terms is not None and k <= terms) else torch.float64


def _exact_conv(x, w, zero_point: int, **attrs) -> torch.Tensor:
    """The integer convolution: float32 over input-channel chunks short enough to be exact
    (summed in float64), or float64 at once."""
    terms = exact_terms(x, zero_point, w)
    taps = w[0, 0].numel()
    channels = w.shape[1]
    if terms == 0 or (terms is not None and channels * taps <= terms):
        return conv(centered(x, zero_point, torch.float32), w.float(), None, **attrs)
    if terms is None or terms < taps or attrs.get("group", 1) != 1:
        acc = conv(centered(x, zero_point, torch.float64), w.double(), None, **attrs)
        return acc.round() if x.device.type != "cpu" else acc  # FFT/Winograd on the GPU
    step = terms // taps
    acc = None
    for start in range(0, channels, step):
        part = conv(centered(x[:, start:start + step], zero_point, torch.float32),
                    w[:, start:start + step].float(), None, **attrs).double()
        acc = part if acc is None else acc.add_(part)
    return acc


def epilogue(acc: torch.Tensor, scales: torch.Tensor | float, bias: torch.Tensor | None,
             residual: torch.Tensor | None, residual_scale: float, residual_zero_point: int,
             activation: str, activation_params: list[float] | None, out_scale: float,
             out_zero_point: int, out_type: str, out_dtype: str) -> torch.Tensor:
    """From the exact accumulator to the layer's output (float32 arithmetic throughout).

    `scales` and `bias` broadcast along acc's channel axis; a residual with a non-zero
    `residual_scale` is quantized and dequantized here."""
    y = acc.to(torch.float32) * scales
    if bias is not None:
        y = y + bias
    if residual is not None:
        if residual_scale:
            residual = arith.dequantize(residual, residual_scale, residual_zero_point)
        y = y + residual.to(torch.float32)
    y = activate(y, activation, activation_params)
    if out_scale:
        return arith.quantize(y, inverse_scale(out_scale), out_zero_point, qtype=out_type,
                              inv_scale=True)
    return y.to(_FLOAT[out_dtype])


def _vector(value: Any, like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    if value is None:
        return None
    tensor = value if isinstance(value, torch.Tensor) else torch.tensor(np.asarray(value))
    return tensor.to(device=like.device, dtype=torch.float32).reshape(shape)


@register("QConv", 1, domain=KILN_DOMAIN)
def qconv(x, w, residual=None, *, x_scale: float = 1.0, x_zero_point: int = 0,
          w_scale: Any = 1.0, bias: Any = None, residual_scale: float = 0.0,
          residual_zero_point: int = 0, out_scale: float = 0.0, out_zero_point: int = 0,
          out_type: str = "int8", out_dtype: str = "fp32", activation: str = "",
          activation_params: list[float] | None = None, auto_pad: str = "NOTSET",
          dilations=None, group: int = 1, kernel_shape=None, pads=None,
          strides=None) -> torch.Tensor:
    return qconv_core(x, w, residual, _vector(combined_scales(x_scale, w_scale), x, (-1,)),
                      _vector(bias, x, (-1,)), x_zero_point=x_zero_point,
                      residual_scale=residual_scale, residual_zero_point=residual_zero_point,
                      out_scale=out_scale, out_zero_point=out_zero_point, out_type=out_type,
                      out_dtype=out_dtype, activation=activation,
                      activation_params=activation_params, auto_pad=auto_pad,
                      dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                      strides=strides)


def qconv_core(x, w, residual, scales: torch.Tensor, bias: torch.Tensor | None, *,
               x_zero_point: int = 0, residual_scale: float = 0.0, residual_zero_point: int = 0,
               out_scale: float = 0.0, out_zero_point: int = 0, out_type: str = "int8",
               out_dtype: str = "fp32", activation: str = "",
               activation_params: list[float] | None = None, **conv_attrs) -> torch.Tensor:
    """QConv with its per-channel factors and bias already float32 tensors on x's device."""
    acc = _exact_conv(x, w, x_zero_point, **conv_attrs)
    channels = (1, -1) + (1,) * (acc.dim() - 2)
    return epilogue(acc, scales.reshape(channels),
                    None if bias is None else bias.reshape(channels), residual, residual_scale,
                    residual_zero_point, activation, activation_params, out_scale,
                    out_zero_point, out_type, out_dtype)


@register("QGemm", 1, domain=KILN_DOMAIN)
def qgemm(a, w, *, a_scale: float = 1.0, a_zero_point: int = 0, w_scale: Any = 1.0,
          bias: Any = None, out_scale: float = 0.0, out_zero_point: int = 0,
          out_type: str = "int8", out_dtype: str = "fp32", activation: str = "",
          activation_params: list[float] | None = None) -> torch.Tensor:
    """w is [N, K]: y[..., n] = sum_k a[..., k] * w[n, k]."""
    return qgemm_core(a, w, _vector(combined_scales(a_scale, w_scale), a, (-1,)),
                      _vector(bias, a, (-1,)), a_zero_point=a_zero_point, out_scale=out_scale,
                      out_zero_point=out_zero_point, out_type=out_type, out_dtype=out_dtype,
                      activation=activation, activation_params=activation_params)


def qgemm_core(a, w, scales: torch.Tensor, bias: torch.Tensor | None, *, a_zero_point: int = 0,
               out_scale: float = 0.0, out_zero_point: int = 0, out_type: str = "int8",
               out_dtype: str = "fp32", activation: str = "",
               activation_params: list[float] | None = None) -> torch.Tensor:
    dtype = accumulate_dtype(a, a_zero_point, w, w.shape[-1])
    acc = torch.matmul(centered(a, a_zero_point, dtype), w.to(dtype).t())
    return epilogue(acc, scales, bias, None, 0.0, 0, activation, activation_params, out_scale,
                    out_zero_point, out_type, out_dtype)


@register("QMatMul", 1, domain=KILN_DOMAIN)
def qmatmul(a, b, *, a_scale: float = 1.0, a_zero_point: int = 0, b_scale: float = 1.0,
            b_zero_point: int = 0, out_scale: float = 0.0, out_zero_point: int = 0,
            out_type: str = "int8", out_dtype: str = "fp32") -> torch.Tensor:
    dtype = torch.float32 if b.is_floating_point() else torch.float64
    acc = torch.matmul(centered(a, a_zero_point, dtype), centered(b, b_zero_point, dtype))
    scale = float(combined_scales(a_scale, b_scale)[0])
    return epilogue(acc, scale, None, None, 0.0, 0, "", None, out_scale, out_zero_point,
                    out_type, out_dtype)
