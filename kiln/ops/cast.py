"""Cast and CastLike (strings go through numpy, which ONNX's own reference does too)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.ir import DType
from kiln.ops._common import onnx_dtype
from kiln.ops.registry import register
from kiln.ops.tensors import E8M0, to_numpy, to_torch


def cast_to(x: Any, dtype: DType, saturate: int = 1, round_mode: str = "up") -> Any:
    if dtype is DType.STRING:
        return _to_strings(x)
    if isinstance(x, np.ndarray):  # from strings
        return to_torch(x.astype(np.float64 if dtype.is_float else np.int64)).to(
            onnx_dtype(dtype.value))
    target = onnx_dtype(dtype.value)  # the carrier, for sub-byte types
    if x.dtype in _NARROW_FLOATS and x.dtype != target:
        x = x.to(torch.float32)  # few torch kernels read float8 directly
    if dtype in FLOAT8_LIMITS and x.is_floating_point():
        return to_float8(x, dtype, target, saturate)
    if dtype is DType.FLOAT8E8M0:
        return to_e8m0(x, saturate, round_mode)
    if dtype is DType.FLOAT4E2M1:
        return to_fp4(x)
    if x.is_floating_point() and not target.is_floating_point and target != torch.bool:
        x = torch.trunc(x)  # float -> int truncates toward zero, as numpy and ORT do
    if dtype in _SUB_BYTE_INTS:
        return wrap_int(x, dtype)
    return x.to(target)


_NARROW_FLOATS = {torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
                  torch.float8_e5m2fnuz, E8M0}
# (largest finite, halfway to the next step, whether that halfway rounds up, overflow value)
FLOAT8_LIMITS = {
    DType.FLOAT8E4M3FN: (448.0, 464.0, False, float("nan")),
    DType.FLOAT8E4M3FNUZ: (240.0, 248.0, True, float("nan")),
    DType.FLOAT8E5M2: (57344.0, 61440.0, True, float("inf")),
    DType.FLOAT8E5M2FNUZ: (57344.0, 61440.0, True, float("nan")),
}
# (bits, signed)
_SUB_BYTE_INTS = {DType.INT4: (4, True), DType.UINT4: (4, False), DType.INT2: (2, True),
                  DType.UINT2: (2, False)}


def to_float8(x: torch.Tensor, dtype: DType, target: torch.dtype,
               saturate: int) -> torch.Tensor:
    """Round to nearest even; out of range saturates, or without `saturate` overflows as
    ONNX (and ml_dtypes) do: to inf for E5M2, NaN for the types without inf."""
    limit, halfway, tie_up, overflow = FLOAT8_LIMITS[dtype]
    x = x.to(torch.float32)
    result = x.clamp(-limit, limit).to(target)  # clamp keeps NaN
    if saturate:
        return result
    size = x.abs()
    over = (size > halfway) | ((size == halfway) & tie_up)
    if not over.any():
        return result
    flood = torch.full_like(x, overflow).copysign(x).to(target)
    return torch.where(over, flood, result)


def wrap_int(x: torch.Tensor, dtype: DType) -> torch.Tensor:
    """An integer tensor reduced modulo 2**bits into a sub-byte type's carrier (two's
    complement for signed types), as numpy's astype to ml_dtypes int4 does."""
    bits, signed = _SUB_BYTE_INTS[dtype]
    low = x.to(torch.int64) & ((1 << bits) - 1)
    if signed:
        low = torch.where(low >= 1 << (bits - 1), low - (1 << bits), low)
    return low.to(onnx_dtype(dtype.value))


def to_fp4(x: torch.Tensor) -> torch.Tensor:
    """FLOAT4E2M1 values (in their float32 carrier): round to nearest even, saturate at 6.

    E2M1's steps are 0.5 below 2, 1 below 4, then 2; FP4 has no NaN (it becomes 0)."""
    x = x.to(torch.float32)
    size = x.abs()
    step = torch.where(size < 2, 0.5, torch.where(size < 4, 1.0, 2.0))
    rounded = (torch.round(size / step) * step).clamp(max=6.0).copysign(x)
    return torch.where(torch.isnan(x), torch.zeros_like(x), rounded)


def to_e8m0(x: torch.Tensor, saturate: int = 1, round_mode: str = "up") -> torch.Tensor:
    """FLOAT8E8M0 (a bare power of two, no sign) from the float32 exponent, rounded as
    `round_mode` says (onnx.numpy_helper.to_float8e8m0 is the reference)."""
    if round_mode not in ("up", "down", "nearest"):
        raise ValueError(f"Cast round_mode must be up, down or nearest, got {round_mode!r}")
    bits = x.to(torch.float32).contiguous().view(torch.int32)
    exponent = (bits >> 23) & 0xFF
    special = exponent == 0xFF
    if round_mode == "nearest":
        guard = (bits & 0x400000) != 0
        round_up = guard & (((bits & 0x200000) != 0) | ((bits & 0x1FFFFF) != 0) | (exponent > 0))
    elif round_mode == "up":
        round_up = (bits & 0x7FFFFF) != 0
    else:
        round_up = torch.zeros_like(special)
    round_up = round_up & ~special
    if saturate:
        round_up = round_up & (exponent != 0xFE)
    exponent = torch.where(special, 0xFF, exponent + round_up.to(exponent.dtype))
    if E8M0 is None:
        raise TypeError(f"FLOAT8E8M0 needs torch 2.7 or newer (this is {torch.__version__})")
    return exponent.to(torch.uint8).view(E8M0)


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
    return cast_to(x, DType(int(to)), saturate, round_mode)


@register("CastLike", 15)
def cast_like(x: Any, like: Any, *, saturate: int = 1, round_mode: str = "up") -> Any:
    if isinstance(like, np.ndarray):
        return cast_to(x, DType.STRING)
    from kiln.ops.tensors import kiln_dtype

    # a sub-byte `like` reads as its carrier here; the castlike_to_cast pass, which knows
    # the declared type, turns such CastLikes into Casts first
    return cast_to(x, kiln_dtype(like.dtype), saturate, round_mode)


_FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@register("BitCast", 26)
def bit_cast(x: torch.Tensor, *, to: int) -> torch.Tensor:
    dtype = DType(int(to))
    if dtype is DType.STRING or isinstance(x, np.ndarray):
        raise ValueError("BitCast does not take or make strings")
    if dtype in _SUB_BYTE_INTS or dtype is DType.FLOAT4E2M1:
        return _from_code(_sub_byte_code(x), dtype)
    target = onnx_dtype(dtype.value)
    if x.element_size() != torch.empty((), dtype=target).element_size():
        raise ValueError(f"BitCast needs types of one width; got {x.dtype} and {dtype.name}")
    if x.dim() == 0:  # torch views 0-d tensors only through a 1-element one
        return x.reshape(1).view(target).reshape(())
    return x.contiguous().view(target)


def _sub_byte_code(x: torch.Tensor) -> torch.Tensor:
    """The raw bits of a 4- or 2-bit value from its carrier."""
    if x.is_floating_point():  # FLOAT4E2M1
        table = torch.tensor(_FP4_VALUES, device=x.device)
        magnitude = torch.searchsorted(table, x.abs().contiguous())
        return magnitude + torch.signbit(x).to(torch.int64) * 8
    return x.to(torch.int64) & 0xF


def _from_code(code: torch.Tensor, dtype: DType) -> torch.Tensor:
    if dtype is DType.FLOAT4E2M1:
        table = torch.tensor(_FP4_VALUES, device=code.device)
        value = table[code & 7]
        return torch.where(code >= 8, -value, value)
    return wrap_int(code, dtype)
