"""Cast and CastLike (strings go through numpy, which ONNX's own reference does too)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.ir import DType
from kiln.ops._common import onnx_dtype
from kiln.ops.registry import register
from kiln.ops.tensors import to_numpy, to_torch


def cast_to(x: Any, dtype: DType, saturate: int = 1) -> Any:
    if dtype is DType.STRING:
        return _to_strings(x)
    if isinstance(x, np.ndarray):  # from strings
        return to_torch(x.astype(np.float64 if dtype.is_float else np.int64)).to(
            onnx_dtype(dtype.value))
    target = onnx_dtype(dtype.value)
    if target in _FLOAT8 and x.is_floating_point():
        return _to_float8(x, target, saturate)
    if x.is_floating_point() and not target.is_floating_point and target != torch.bool:
        x = torch.trunc(x)  # float -> int truncates toward zero, as numpy and ORT do
    return x.to(target)


_FLOAT8 = {torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz}


def _to_float8(x: torch.Tensor, target: torch.dtype, saturate: int) -> torch.Tensor:
    if saturate:
        limit = torch.finfo(target).max
        x = torch.where(torch.isinf(x), x, x.clamp(-limit, limit))
    return x.to(torch.float32).to(target)


def _to_strings(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(object)
    array = to_numpy(x)
    if array.dtype.kind == "f":
        return np.vectorize(_float_text, otypes=[object])(array)
    if array.dtype.kind == "b":
        return np.where(array, "1", "0").astype(object)  # as ONNX Runtime writes booleans
    return array.astype(str).astype(object)


def _float_text(v: float) -> str:
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "INF" if v > 0 else "-INF"
    return f"{v:.8g}"  # 8 significant digits, as ONNX Runtime prints every float type


@register("Cast", 6)
def cast(x: Any, *, to: int, saturate: int = 1, round_mode: str = "up") -> Any:
    return cast_to(x, DType(int(to)), saturate)


@register("CastLike", 15)
def cast_like(x: Any, like: Any, *, saturate: int = 1, round_mode: str = "up") -> Any:
    if isinstance(like, np.ndarray):
        return cast_to(x, DType.STRING)
    from kiln.ops.tensors import kiln_dtype

    return cast_to(x, kiln_dtype(like.dtype), saturate)
