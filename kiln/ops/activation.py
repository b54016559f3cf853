"""Activation functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kiln.ops.registry import register


@register("Relu", 6)
def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


@register("LeakyRelu", 6)
def leaky_relu(x: torch.Tensor, *, alpha: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


@register("PRelu", 7)
def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, x * slope, x)


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
    rows = math.prod(x.shape[:axis])
    return fn(x.reshape(rows, -1), 1).reshape(x.shape)


@register("Softmax", 1)
def softmax_1(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    return _softmax_2d(x, axis, torch.softmax)


@register("Softmax", 13)
def softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return torch.softmax(x, axis)


@register("LogSoftmax", 1)
def log_softmax_1(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    return _softmax_2d(x, axis, torch.log_softmax)


@register("LogSoftmax", 13)
def log_softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return torch.log_softmax(x, axis)


def _hardmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    index = torch.argmax(x, dim, keepdim=True)
    return torch.zeros_like(x).scatter_(dim, index, 1)


@register("Hardmax", 1)
def hardmax_1(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    return _softmax_2d(x, axis, _hardmax)


@register("Hardmax", 13)
def hardmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return _hardmax(x, axis)
