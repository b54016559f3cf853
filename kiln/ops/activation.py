"""Activation functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kiln.ops.registry import register
from kiln.ops.tensors import inverse_order, memory_order


@register("Relu", 6)
def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


@register("LeakyRelu", 6)
def leaky_relu(x: torch.Tensor, *, alpha: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


@register("PRelu", 7)
def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    channel_slope = _per_channel(x, slope)
    if channel_slope is not None:
        # One fused kernel; the where() form costs three passes (2.2 of mtcnn-pnet's 5.6 ms).
        return F.prelu(x, channel_slope)
    return torch.where(x < 0, x * slope, x)


def _per_channel(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor | None:
    """The slope as F.prelu's 1-D weight when it is a scalar or varies along axis 1 only."""
    if slope.dtype != x.dtype or slope.dim() > x.dim() or x.dim() < 2:
        return None
    if slope.numel() == 1:
        return slope.reshape(1)
    aligned = (1,) * (x.dim() - slope.dim()) + tuple(slope.shape)
    varying = [axis for axis, size in enumerate(aligned) if size != 1]
    if varying != [1] or aligned[1] != x.shape[1]:
        return None
    return slope.reshape(-1)


@register("Sigmoid", 6)
def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


@register("HardSigmoid", 6)
def hard_sigmoid(x: torch.Tensor, *, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@register("HardSwish", 14)
def hard_swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


@register("Tanh", 6)
def tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


@register("Elu", 6)
def elu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    return torch.where(x > 0, x, alpha * torch.expm1(x))


@register("Selu", 6)
def selu(x: torch.Tensor, *, alpha: float = 1.67326319217681884765625,
         gamma: float = 1.05070102214813232421875) -> torch.Tensor:
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@register("Celu", 12)
def celu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    return torch.clamp(x, min=0) + torch.clamp(alpha * torch.expm1(x / alpha), max=0)


@register("Softplus", 1)
def softplus(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x)


@register("Softsign", 1)
def softsign(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.abs(x))


@register("Gelu", 20)
def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


@register("Mish", 18)
def mish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tanh(F.softplus(x))


@register("ThresholdedRelu", 10)
def thresholded_relu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    return torch.where(x > alpha, x, torch.zeros_like(x))


@register("Shrink", 9)
def shrink(x: torch.Tensor, *, bias: float = 0.0, lambd: float = 0.5) -> torch.Tensor:
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))


@register("Swish", 24)
def swish(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


def _softmax_2d(x: torch.Tensor, axis: int, fn) -> torch.Tensor:
    """Opset < 13 semantics: flatten to [prod(dims[:axis]), prod(dims[axis:])]."""
    axis = axis + x.dim() if axis < 0 else axis
    if axis == x.dim() - 1:  # one axis: no reshape (a permuted view stays a view)
        return _in_memory_order(x, axis, fn)
    rows = math.prod(x.shape[:axis])
    return _in_memory_order(x.reshape(rows, -1), 1, fn).reshape(x.shape)


@register("Softmax", 1)
def softmax_1(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    return _softmax_2d(x, axis, torch.softmax)


@register("Softmax", 13)
def softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return _in_memory_order(x, axis, torch.softmax)


@register("LogSoftmax", 1)
def log_softmax_1(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    return _softmax_2d(x, axis, torch.log_softmax)


@register("LogSoftmax", 13)
def log_softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return _in_memory_order(x, axis, torch.log_softmax)


def _in_memory_order(x: torch.Tensor, axis: int, fn) -> torch.Tensor:
    """`fn` along `axis`, run over the tensor as it lies in memory and returned as the same
    view. On the CPU torch copies a permuted view to row-major first, and its softmax along
    a short innermost axis is slow (mtcnn-pnet's 2-way Softmax after a Transpose: 0.39 ms;
    along the same values laid out with that axis outermost, 0.03 ms). CUDA's kernels are
    fastest along a contiguous last axis, so there torch's way stays; so it does for half
    types, whose CPU kernels round differently along other axes."""
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or x.dim() < 2 or x.numel() < SMALL):  # a few rows: the views cost more
        return fn(x, axis)
    order = list(range(x.dim())) if x.is_contiguous() else memory_order(x)
    if order is None:
        return fn(x, axis)
    axis = axis + x.dim() if axis < 0 else axis
    inner = order.index(axis)
    stored = x.permute(order)
    if inner == x.dim() - 1 and x.shape[axis] < SHORT_AXIS:
        result = fn(stored.movedim(inner, 0), 0).movedim(0, inner)
    else:
        result = fn(stored, inner)
    return result.permute(inverse_order(order))


# below one vector of fp32 lanes, torch's CPU softmax along the innermost axis goes scalar
SHORT_AXIS = 16
# elements: under this the scalar loop is cheaper than arranging the views (one thread, 10
# classes: 16 rows 3.8 us plain against 5.1 moved; 64 rows 12 against 6; 360 rows 64 against
# 12, the demo CNN's softmax at batch 360)
SMALL = 256


def _hardmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    index = torch.argmax(x, dim, keepdim=True)
    return torch.zeros_like(x).scatter_(dim, index, 1)


@register("Hardmax", 1)
def hardmax_1(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    return _softmax_2d(x, axis, _hardmax)


@register("Hardmax", 13)
def hardmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return _hardmax(x, axis)
