"""The arithmetic of quantized tensors, shared by the operators, passes and calibrators.

ONNX's definitions, in numpy (build time) and torch (run time):

    quantize:    q = saturate(round_half_even(x / scale) + zero_point)
    dequantize:  x = (q - zero_point) * scale               (in float32)

`axis` names the channel axis of per-channel parameters (scale of shape [C]); scalars are
per-tensor. INT8 is symmetric in kiln's own calibration (zero point 0, scale = amax / 127);
FP8 (E4M3) has no zero point and scale = amax / 448.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# name -> (lowest, highest) representable value
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-(2**31), 2**31 - 1),
              "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1)}
FP8_MAX = {"fp8e4m3": 448.0, "fp8e5m2": 57344.0}
QMAX = {"int8": 127.0, "fp8e4m3": 448.0}  # amax maps to this value of the quantized type

_TORCH_QTYPES = {"int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32,
                 "int16": torch.int16, "fp8e4m3": torch.float8_e4m3fn,
                 "fp8e5m2": torch.float8_e5m2}


def is_fp8(name: str) -> bool:
    return name.startswith("fp8")


def channel_shape(size: int, rank: int, axis: int) -> tuple[int, ...]:
    """The shape that broadcasts a parameter of `size` values along `axis` of a rank-`rank`
    tensor (a single value broadcasts everywhere)."""
    if size == 1 or rank == 0:
        return ()
    axis = axis % rank
    return tuple(size if d == axis else 1 for d in range(rank))


# ------------------------------------------------------------------------ numpy (build)
def quantize_np(x: np.ndarray, scale: Any, zero_point: Any = 0, axis: int = 1,
                qtype: str = "int8") -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    s = np.asarray(scale, dtype=np.float32)
    s = s.reshape(channel_shape(s.size, x.ndim, axis))
    if is_fp8(qtype):
        limit = FP8_MAX[qtype]
        y = np.clip(x / s, -limit, limit)
        return to_numpy_fp8(y, qtype)
    zp = np.asarray(zero_point, dtype=np.float64)
    zp = zp.reshape(channel_shape(zp.size, x.ndim, axis))
    lo, hi = INT_RANGES[qtype]
    y = np.rint((x / s).astype(np.float64)) + zp
    return np.clip(y, lo, hi).astype(qtype)


def dequantize_np(q: np.ndarray, scale: Any, zero_point: Any = 0, axis: int = 1) -> np.ndarray:
    q = np.asarray(q)
    s = np.asarray(scale, dtype=np.float32)
    s = s.reshape(channel_shape(s.size, q.ndim, axis))
    if q.dtype.kind == "V" or q.dtype.name.startswith("float8"):
        return (q.astype(np.float32) * s).astype(np.float32)
    zp = np.asarray(zero_point).astype(np.int64)
    zp = zp.reshape(channel_shape(zp.size, q.ndim, axis))
    return ((q.astype(np.int64) - zp).astype(np.float32) * s).astype(np.float32)


def to_numpy_fp8(y: np.ndarray, qtype: str) -> np.ndarray:
    import ml_dtypes

    return np.asarray(y, dtype=np.float32).astype(
        ml_dtypes.float8_e4m3fn if qtype == "fp8e4m3" else ml_dtypes.float8_e5m2)


def symmetric_scale(amax: Any, qtype: str = "int8") -> np.ndarray:
    """scale = amax / 127 (int8) or amax / 448 (fp8); an all-zero tensor gets amax 1."""
    amax = np.asarray(amax, dtype=np.float64)
    amax = np.where(amax > 0, amax, 1.0)
    return (amax / QMAX[qtype]).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int, qtype: str = "int8",
                    per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weight quantization: (q, scale), scale per output channel along `axis`."""
    w = np.asarray(w, dtype=np.float32)
    if per_channel:
        moved = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1)
        amax = moved.max(axis=1) if moved.size else np.zeros(w.shape[axis])
    else:
        amax = np.full(w.shape[axis], np.abs(w).max() if w.size else 0.0)
    scale = symmetric_scale(amax, qtype)
    return quantize_np(w, scale, 0, axis, qtype), scale


# ------------------------------------------------------------------------ torch (run)
def quantize(x: torch.Tensor, scale: Any, zero_point: Any = 0, axis: int = 1,
             qtype: str = "int8", *, inv_scale: bool = False) -> torch.Tensor:
    """`inv_scale`: `scale` holds 1/scale and is multiplied (what fused epilogues do)."""
    s = _param(scale, x, axis, torch.float32)
    y = x.float() * s if inv_scale else x.float() / s
    if is_fp8(qtype):
        limit = FP8_MAX[qtype]
        return y.clamp(-limit, limit).to(_TORCH_QTYPES[qtype])
    lo, hi = INT_RANGES[qtype]
    y = torch.round(y) + _param(zero_point, x, axis, torch.float32)
    return y.clamp(lo, hi).to(_TORCH_QTYPES[qtype])


def dequantize(q: torch.Tensor, scale: Any, zero_point: Any = 0, axis: int = 1,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    s = _param(scale, q, axis, torch.float32)
    if q.is_floating_point():
        return (q.float() * s).to(dtype)
    zp = _param(zero_point, q, axis, torch.int32)
    return ((q.to(torch.int32) - zp).float() * s).to(dtype)


def _param(value: Any, like: torch.Tensor, axis: int, dtype: torch.dtype) -> Any:
    """A scale or zero point as `like` can use it: one value as a Python number (no host to
    device copy, which a CUDA graph capture would refuse), several as a broadcastable
    tensor on `like`'s device."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and value.device.type == "cpu":
            return value.item()
        tensor = value
    else:
        array = np.asarray(value)
        if array.size == 1:
            return array.reshape(-1)[0].item()
        tensor = torch.from_numpy(array)
    tensor = tensor.to(device=like.device, dtype=dtype)
    if tensor.numel() == 1:
        return tensor.reshape(())
    return tensor.reshape(channel_shape(tensor.numel(), like.dim(), axis))
