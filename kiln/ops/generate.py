"""Tensors made from shapes and scalars: ConstantOfShape, Range, EyeLike."""

from __future__ import annotations

import numpy as np
import torch

from kiln.ops._common import ints, onnx_dtype
from kiln.ops.registry import register
from kiln.ops.tensors import to_torch


@register("ConstantOfShape", 9, host_inputs=(0,))
def constant_of_shape(shape: torch.Tensor, *, value: np.ndarray | None = None,
                      device: torch.device | None = None) -> torch.Tensor:
    fill = to_torch(value if value is not None else np.zeros(1, np.float32)).reshape(-1)
    return torch.full(ints(shape), fill[0].item(), dtype=fill.dtype, device=device)


@register("Range", 11, host_inputs=(0, 1, 2))
def range_(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor, *,
           device: torch.device | None = None) -> torch.Tensor:
    s, l, d = start.item(), limit.item(), delta.item()
    count = max(int(np.ceil((l - s) / d)), 0)
    steps = torch.arange(count, dtype=torch.float64 if start.is_floating_point() else torch.int64,
                         device=device)
    return (s + steps * d).to(start.dtype)


@register("EyeLike", 9)
def eye_like(x: torch.Tensor, *, dtype: int | None = None, k: int = 0) -> torch.Tensor:
    rows, cols = x.shape
    target = onnx_dtype(dtype) if dtype is not None else x.dtype
    out = torch.zeros((rows, cols), dtype=target, device=x.device)
    i = torch.arange(max(0, -k), min(rows, cols - k), device=x.device)
    out[i, i + k] = 1
    return out
