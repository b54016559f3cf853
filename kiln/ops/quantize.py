"""Quantization: QuantizeLinear, DequantizeLinear (per tensor, per axis, blocked; 2- to 16-bit
integers, float8, FP4), DynamicQuantizeLinear, and the integer products MatMulInteger,
ConvInteger, QLinearMatMul, QLinearConv.

Integer products run in a float type wide enough to be exact (float32 while the sum of
products stays below 2**24, float64 beyond), since torch has no int8 GEMM/conv on every
device.
"""

from __future__ import annotations

import torch

from kiln.ir import DType
from kiln.ops._common import axis as norm_axis
from kiln.ops.cast import FLOAT8_LIMITS, to_float8, to_fp4
from kiln.ops.conv import conv
from kiln.ops.registry import register
from kiln.ops.tensors import kiln_dtype, torch_dtype

_INT_RANGES = {
    DType.UINT8: (0, 255), DType.INT8: (-128, 127), DType.UINT16: (0, 65535),
    DType.INT16: (-32768, 32767), DType.UINT4: (0, 15), DType.INT4: (-8, 7),
    DType.UINT2: (0, 3), DType.INT2: (-2, 1),
}
_EXACT_FLOAT32 = 1 << 24


def broadcast_param(value: torch.Tensor, shape: torch.Size, axis: int,
                    block_size: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against `shape`: a scalar as is, a vector
    along `axis`, a blocked one repeated `block_size` times along `axis` (last block short)."""
    if value.dim() == 0 or value.numel() == 1:
        return value.reshape(())
    dim = norm_axis(axis, len(shape))
    if not block_size:
        if value.dim() != 1:
            raise ValueError(f"a per-axis scale or zero point must be 1-D, got shape "
                             f"{tuple(value.shape)} (set block_size for blocked quantization)")
        return value.reshape([value.numel() if i == dim else 1 for i in range(len(shape))])
    if block_size < 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    full = value.repeat_interleave(block_size, dim=dim).narrow(dim, 0, shape[dim])
    if tuple(full.shape) != tuple(shape):
        raise ValueError(f"a blocked scale of shape {tuple(value.shape)} with block_size "
                         f"{block_size} does not cover an input of shape {tuple(shape)}")
    return full


def _target_type(zero_point: torch.Tensor | None, output_dtype: int) -> DType:
    if output_dtype:
        return DType(int(output_dtype))
    if zero_point is not None:
        return kiln_dtype(zero_point.dtype)
    return DType.UINT8


@register("QuantizeLinear", 10)
def quantize_linear(
    x: torch.Tensor, y_scale: torch.Tensor, y_zero_point: torch.Tensor | None = None, *,
    axis: int = 1, block_size: int = 0, output_dtype: int = 0, precision: int = 0,
    saturate: int = 1,
) -> torch.Tensor:
    # `output_dtype` also arrives from the pin_quantized_dtype pass, which knows a 4-bit
    # zero point's declared type (at run time it is an 8-bit carrier)
    target = _target_type(y_zero_point, output_dtype)
    scale = broadcast_param(y_scale, x.shape, axis, block_size)
    if precision:
        work = torch_dtype(DType(int(precision)))
        scaled = x.to(work) / scale.to(work)
    else:
        scaled = x / scale.to(x.dtype)
    zero = None if y_zero_point is None else broadcast_param(
        y_zero_point, x.shape, axis, block_size)
    if target in _INT_RANGES:
        low, high = _INT_RANGES[target]
        values = torch.round(scaled).to(torch.float64)
        if zero is not None:
            values = values + zero.to(torch.float64)
        return values.clamp(low, high).to(torch_dtype(target))
    if target in FLOAT8_LIMITS:
        return to_float8(scaled, target, torch_dtype(target), saturate)
    if target is DType.FLOAT4E2M1:
        return to_fp4(scaled if zero is None else scaled + zero.to(scaled.dtype))
    raise ValueError(f"QuantizeLinear cannot produce {target.name}; it makes 2- to 16-bit "
                     "integers, float8 or FLOAT4E2M1")


@register("DequantizeLinear", 10)
def dequantize_linear(
    x: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor | None = None, *,
    axis: int = 1, block_size: int = 0, output_dtype: int = 0,
) -> torch.Tensor:
    values = x.to(torch.float32)
    # float8 zero points must be 0, and the FP4 one is ignored, as ONNX's reference does
    if x_zero_point is not None and not x.is_floating_point():
        zero = broadcast_param(x_zero_point, x.shape, axis, block_size)
        values = values - zero.to(torch.float32)
    scale = broadcast_param(x_scale, x.shape, axis, block_size)
    result = values * scale.to(torch.float32) if scale.dtype != torch.float64 else (
        values.to(torch.float64) * scale)
    out = torch_dtype(DType(int(output_dtype))) if output_dtype else x_scale.dtype
    return result.to(out)


@register("DynamicQuantizeLinear", 11)
def dynamic_quantize_linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 quantization over the range of `x` widened to include 0."""
    work = x.to(torch.float32)
    high = work.max().clamp(min=0) if work.numel() else torch.zeros((), device=x.device)
    low = work.min().clamp(max=0) if work.numel() else torch.zeros((), device=x.device)
    scale = torch.where(high == low, torch.ones_like(high), high - low) / 255.0
    zero = torch.round((0.0 - low / scale).clamp(0, 255))
    y = (torch.round(work / scale) + zero).clamp(0, 255).to(torch.uint8)
    return y, scale.to(x.dtype), zero.to(torch.uint8)


def _exact_dtype(terms: int, device: torch.device) -> torch.dtype:
    # |a - za| * |b - zb| <= 2**16 for 8-bit operands
    return torch.float32 if terms * (1 << 16) < _EXACT_FLOAT32 else torch.float64


def _centered(x: torch.Tensor, zero: torch.Tensor | None, dtype: torch.dtype,
              shape: list[int] | None = None) -> torch.Tensor:
    values = x.to(dtype)
    if zero is None:
        return values
    zero = zero.to(dtype)
    if shape is not None and zero.numel() > 1:
        zero = zero.reshape(shape)
    return values - zero


def _integer_matmul(a: torch.Tensor, b: torch.Tensor, a_zero: torch.Tensor | None,
                    b_zero: torch.Tensor | None) -> torch.Tensor:
    dtype = _exact_dtype(a.shape[-1], a.device)
    # a per-row zero point of A runs along its rows, one of B along its columns
    a_shape = [*a.shape[:-1], 1] if a_zero is not None and a_zero.numel() > 1 else None
    return torch.matmul(_centered(a, a_zero, dtype, a_shape), _centered(b, b_zero, dtype))


@register("MatMulInteger", 10)
def matmul_integer(a: torch.Tensor, b: torch.Tensor, a_zero_point: torch.Tensor | None = None,
                   b_zero_point: torch.Tensor | None = None) -> torch.Tensor:
    return _integer_matmul(a, b, a_zero_point, b_zero_point).to(torch.int32)


def _integer_conv(x: torch.Tensor, w: torch.Tensor, x_zero: torch.Tensor | None,
                  w_zero: torch.Tensor | None, attrs: dict) -> torch.Tensor:
    terms = w.shape[1] * w[0, 0].numel()
    dtype = _exact_dtype(terms, x.device)
    per_channel = [w.shape[0]] + [1] * (w.dim() - 1)
    return conv(_centered(x, x_zero, dtype), _centered(w, w_zero, dtype, per_channel),
                None, **attrs)


@register("ConvInteger", 10)
def conv_integer(
    x: torch.Tensor, w: torch.Tensor, x_zero_point: torch.Tensor | None = None,
    w_zero_point: torch.Tensor | None = None, *, auto_pad: str = "NOTSET",
    dilations: list[int] | None = None, group: int = 1, kernel_shape: list[int] | None = None,
    pads: list[int] | None = None, strides: list[int] | None = None,
) -> torch.Tensor:
    attrs = {"auto_pad": auto_pad, "dilations": dilations, "group": group,
             "kernel_shape": kernel_shape, "pads": pads, "strides": strides}
    return _integer_conv(x, w, x_zero_point, w_zero_point, attrs).to(torch.int32)


def _requantize(acc: torch.Tensor, factor: torch.Tensor, zero: torch.Tensor | None,
                like: torch.Tensor) -> torch.Tensor:
    """round(acc * factor) + zero, clipped to the output's integer type."""
    out = zero.dtype if zero is not None else like.dtype
    info = torch.iinfo(out)
    values = acc.to(torch.float64) * factor.to(torch.float64)
    if zero is not None:
        values = values + zero.to(torch.float64)
    return torch.round(values.clamp(info.min, info.max)).to(out)


@register("QLinearMatMul", 10)
def qlinear_matmul(
    a: torch.Tensor, a_scale: torch.Tensor, a_zero_point: torch.Tensor | None,
    b: torch.Tensor, b_scale: torch.Tensor, b_zero_point: torch.Tensor | None,
    y_scale: torch.Tensor, y_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    acc = _integer_matmul(a, b, a_zero_point, b_zero_point)
    # per-row scales of A run along its rows, per-column ones of B along the columns; the
    # ratio is formed in the scales' own type, as ONNX's reference does
    if a_scale.numel() > 1:
        a_scale = a_scale.reshape(-1, 1)
    factor = a_scale * b_scale.to(a_scale.dtype) / y_scale.to(a_scale.dtype)
    return _requantize(acc, factor, y_zero_point, a)


@register("QLinearConv", 10)
def qlinear_conv(
    x: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor | None,
    w: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor | None,
    y_scale: torch.Tensor, y_zero_point: torch.Tensor | None = None,
    b: torch.Tensor | None = None, *, auto_pad: str = "NOTSET",
    dilations: list[int] | None = None, group: int = 1, kernel_shape: list[int] | None = None,
    pads: list[int] | None = None, strides: list[int] | None = None,
) -> torch.Tensor:
    attrs = {"auto_pad": auto_pad, "dilations": dilations, "group": group,
             "kernel_shape": kernel_shape, "pads": pads, "strides": strides}
    acc = _integer_conv(x, w, x_zero_point, w_zero_point, attrs)
    spatial = [1] * (x.dim() - 2)
    if b is not None:
        acc = acc + b.to(acc.dtype).reshape(1, -1, *spatial)
    w_scale = w_scale.reshape(1, -1, *spatial) if w_scale.numel() > 1 else w_scale
    factor = x_scale * w_scale.to(x_scale.dtype) / y_scale.to(x_scale.dtype)
    return _requantize(acc, factor, y_zero_point, x)
