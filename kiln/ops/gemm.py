"""Matrix products: Gemm, MatMul, Einsum."""

from __future__ import annotations

import torch

from kiln.ops._common import narrow, widen
from kiln.ops.registry import register


@register("Gemm", 7)
def gemm(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None, *,
    alpha: float = 1.0, beta: float = 1.0, transA: int = 0, transB: int = 0,
) -> torch.Tensor:
    dtype, (a, b) = widen(a, b)
    if transA:
        a = a.transpose(0, 1)
    if transB:
        b = b.transpose(0, 1)
    y = _matmul(a, b.to(a.dtype))
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        c = c.to(y.dtype)
        y = y + (c * beta if beta != 1.0 else c)
    return narrow(y, dtype)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or a.is_complex():
        return torch.matmul(a, b)
    # integer matmul: torch's CPU kernels take int64; exact for the ranges ONNX tests use
    return torch.matmul(a.to(torch.int64), b.to(torch.int64)).to(a.dtype)


@register("MatMul", 1)
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype, (a, b) = widen(a, b)
    return narrow(_matmul(a, b.to(a.dtype)), dtype)


@register("Einsum", 12)
def einsum(*inputs: torch.Tensor, equation: str) -> torch.Tensor:
    dtype, values = widen(*inputs)
    if not values[0].is_floating_point():
        result = torch.einsum(equation, *[v.to(torch.int64) for v in values])
        return result.to(dtype)
    return narrow(torch.einsum(equation.replace(" ", ""), *values), dtype)
