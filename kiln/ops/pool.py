"""Pooling: MaxPool, AveragePool, LpPool, their global forms, and MaxUnpool."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kiln.ops.conv import resolve_pads
from kiln.ops.registry import register

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _torch_padding(pads: list[int], kernel: list[int], dilations: list[int]) -> list[int] | None:
    """Pads torch can apply itself (symmetric, at most half the effective kernel), else None."""
    n = len(kernel)
    begins, ends = pads[:n], pads[n:]
    if begins != ends:
        return None
    if any(p > ((k - 1) * d + 1) // 2 for p, k, d in zip(begins, kernel, dilations)):
        return None
    return list(begins)


def pooled_size(size: int, kernel: int, stride: int, begin: int, end: int, ceil: bool,
                dilation: int = 1) -> int:
    """Output length of a pooling window along one axis, as ONNX defines it."""
    span = size + begin + end - ((kernel - 1) * dilation + 1)
    out = (math.ceil if ceil else math.floor)(span / stride) + 1
    if ceil and (out - 1) * stride >= size + begin:  # a window may not start in the padding
        out -= 1
    return out


def explicit_pad(x: torch.Tensor, pads: list[int], value: float) -> torch.Tensor:
    n = len(pads) // 2
    spec: list[int] = []
    for i in reversed(range(n)):
        spec += [pads[i], pads[n + i]]
    return F.pad(x, spec, value=value)


@register("MaxPool", 1)
def max_pool(
    x: torch.Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
    dilations: list[int] | None = None, kernel_shape: list[int], pads: list[int] | None = None,
    storage_order: int = 0, strides: list[int] | None = None, num_outputs: int = 1,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    n = len(kernel_shape)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    full = resolve_pads(x, kernel_shape, strides, dilations, pads, auto_pad)
    padding = _torch_padding(full, kernel_shape, dilations)
    dtype = x.dtype
    # integers and 8-bit floats (quantized activations) pool exactly in float64
    work = x if x.is_floating_point() and x.element_size() > 1 else x.to(torch.float64)
    if padding is None:
        work = explicit_pad(work, full, float("-inf"))
        padding = [0] * n
    want_indices = num_outputs > 1
    result = _MAX[n](work, kernel_shape, strides, padding, dilations, bool(ceil_mode),
                     return_indices=want_indices)
    if not want_indices:
        return result.to(dtype)
    values, indices = result
    return values.to(dtype), _onnx_indices(indices, x.shape, storage_order)


def _onnx_indices(indices: torch.Tensor, shape: torch.Size, storage_order: int) -> torch.Tensor:
    """torch gives indices within each (n, c) plane; ONNX wants them into the whole tensor."""
    spatial = shape[2:]
    plane = 1
    for s in spatial:
        plane *= s
    if storage_order == 1 and len(spatial) == 2:
        h, w = spatial
        row, col = indices // w, indices % w
        indices = col * h + row
    batch, channels = shape[0], shape[1]
    offsets = torch.arange(batch * channels, device=indices.device).reshape(
        batch, channels, *([1] * len(spatial))) * plane
    return (indices + offsets).to(torch.int64)


@register("AveragePool", 1)
def average_pool(
    x: torch.Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
    count_include_pad: int = 0, dilations: list[int] | None = None,
    kernel_shape: list[int], pads: list[int] | None = None, strides: list[int] | None = None,
) -> torch.Tensor:
    n = len(kernel_shape)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    full = resolve_pads(x, kernel_shape, strides, dilations, pads, auto_pad)
    if any(d != 1 for d in dilations):
        return _dilated_average(x, kernel_shape, strides, dilations, full, ceil_mode,
                                count_include_pad)
    padding = _torch_padding(full, kernel_shape, dilations)
    if padding is not None and not (auto_pad.startswith("SAME") and not count_include_pad):
        return _AVG[n](x, kernel_shape, strides, padding, bool(ceil_mode),
                       bool(count_include_pad))
    return _dilated_average(x, kernel_shape, strides, dilations, full, ceil_mode,
                            count_include_pad)


def _dilated_average(
    x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int],
    pads: list[int], ceil_mode: int, count_include_pad: int,
) -> torch.Tensor:
    """Average as (sum of values) / (count of counted positions), via unfold-free pooling."""
    n = len(kernel)
    padded = explicit_pad(x, pads, 0.0)
    ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    inside = explicit_pad(ones, pads, 1.0 if count_include_pad else 0.0)
    weight = torch.ones((1, 1, *kernel), dtype=x.dtype, device=x.device)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    channels = x.shape[1]
    if ceil_mode:
        extra = []
        for size, k, s, d in zip(padded.shape[2:], kernel, strides, dilations):
            span = (k - 1) * d + 1
            out = -(-(size - span) // s) + 1
            if (out - 1) * s >= size:
                out -= 1
            extra.append(max((out - 1) * s + span - size, 0))
        spec: list[int] = []
        for e in reversed(extra):
            spec += [0, e]
        padded = F.pad(padded, spec)
        inside = F.pad(inside, spec)
    flat = padded.reshape(-1, 1, *padded.shape[2:])
    sums = conv(flat, weight, None, strides, 0, dilations)
    counts = conv(inside, weight, None, strides, 0, dilations)
    sums = sums.reshape(x.shape[0], channels, *sums.shape[2:])
    return sums / counts


@register("GlobalAveragePool", 1)
def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool", 1)
def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalLpPool", 2)
def global_lp_pool(x: torch.Tensor, *, p: int = 2) -> torch.Tensor:
    dims = tuple(range(2, x.dim()))
    return x.abs().pow(p).sum(dim=dims, keepdim=True).pow(1.0 / p)


@register("LpPool", 2)
def lp_pool(
    x: torch.Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
    dilations: list[int] | None = None, kernel_shape: list[int], p: int = 2,
    pads: list[int] | None = None, strides: list[int] | None = None,
) -> torch.Tensor:
    n = len(kernel_shape)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    full = resolve_pads(x, kernel_shape, strides, dilations, pads, auto_pad)
    powered = explicit_pad(x.abs().pow(p), full, 0.0)
    weight = torch.ones((1, 1, *kernel_shape), dtype=x.dtype, device=x.device)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    flat = powered.reshape(-1, 1, *powered.shape[2:])
    sums = conv(flat, weight, None, strides, 0, dilations)
    return sums.reshape(x.shape[0], x.shape[1], *sums.shape[2:]).pow(1.0 / p)


@register("MaxUnpool", 9, host_inputs=(2,))
def max_unpool(
    x: torch.Tensor, indices: torch.Tensor, output_shape: torch.Tensor | None = None, *,
    kernel_shape: list[int], pads: list[int] | None = None, strides: list[int] | None = None,
) -> torch.Tensor:
    n = len(kernel_shape)
    strides = strides or [1] * n
    pads = pads or [0] * (2 * n)
    inferred = [x.shape[0], x.shape[1]] + [
        (x.shape[2 + i] - 1) * strides[i] - (pads[i] + pads[n + i]) + kernel_shape[i]
        for i in range(n)]
    # indices address the inferred shape (as MaxPool made them); a larger output_shape
    # pads that with zeros at the end, as the ONNX reference does
    flat = torch.zeros(math.prod(inferred), dtype=x.dtype, device=x.device)
    flat[indices.reshape(-1).to(torch.int64)] = x.reshape(-1)
    y = flat.reshape(inferred)
    if output_shape is None:
        return y
    target = [int(v) for v in output_shape.reshape(-1).tolist()]
    extra: list[int] = []
    for size, want in zip(reversed(inferred), reversed(target)):
        extra += [0, want - size]
    return F.pad(y, extra)
