"""Moving data between numpy, torch and kiln's DType.

numpy has no bfloat16, float8 or int4: onnx hands those over as ml_dtypes arrays, which
are reinterpreted bit for bit rather than converted.

torch has no usable 4- and 2-bit types, so those travel in a wider *carrier* at run time:
INT4/INT2 as int8, UINT4/UINT2 as uint8 (values kept in range), FLOAT4E2M1 as float32
(every FP4 value is exact in it). `to_numpy(value, dtype)` turns a carrier back into the
declared ml_dtypes type.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.ir import DType

_TORCH = {
    DType.FLOAT: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
    DType.DOUBLE: torch.float64,
    DType.INT8: torch.int8,
    DType.INT16: torch.int16,
    DType.INT32: torch.int32,
    DType.INT64: torch.int64,
    DType.UINT8: torch.uint8,
    DType.UINT16: torch.uint16,
    DType.UINT32: torch.uint32,
    DType.UINT64: torch.uint64,
    DType.BOOL: torch.bool,
    DType.COMPLEX64: torch.complex64,
    DType.COMPLEX128: torch.complex128,
    DType.FLOAT8E4M3FN: torch.float8_e4m3fn,
    DType.FLOAT8E5M2: torch.float8_e5m2,
    DType.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    DType.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
}
# torch has float8_e8m0fnu from 2.7 on
E8M0 = getattr(torch, "float8_e8m0fnu", None)
if E8M0 is not None:
    _TORCH[DType.FLOAT8E8M0] = E8M0
_FROM_TORCH = {t: d for d, t in _TORCH.items()}
# sub-byte types: the torch dtype that carries them at run time
CARRIERS = {
    DType.INT4: torch.int8,
    DType.INT2: torch.int8,
    DType.UINT4: torch.uint8,
    DType.UINT2: torch.uint8,
    DType.FLOAT4E2M1: torch.float32,
}
_ML_CARRIED = {"int4": np.int8, "int2": np.int8, "uint4": np.uint8, "uint2": np.uint8,
               "float4_e2m1fn": np.float32}
_CARRIED_ML = {DType.INT4: "int4", DType.INT2: "int2", DType.UINT4: "uint4",
               DType.UINT2: "uint2", DType.FLOAT4E2M1: "float4_e2m1fn"}
# ml_dtypes names -> torch dtypes with the same bits
_ML_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
    "float8_e4m3fnuz": torch.float8_e4m3fnuz,
    "float8_e5m2fnuz": torch.float8_e5m2fnuz,
}
if E8M0 is not None:
    _ML_DTYPES["float8_e8m0fnu"] = E8M0
_TORCH_TO_ML = {t: n for n, t in _ML_DTYPES.items()}
_UNSIGNED_WIDE = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}
# types numpy and torch share bit for bit: torch.from_numpy / Tensor.numpy take them directly
_PLAIN_TORCH = frozenset({torch.float32, torch.float16, torch.float64, torch.int8, torch.int16,
                          torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64,
                          torch.complex128})
_PLAIN_NUMPY = frozenset(np.dtype(t) for t in (
    np.float32, np.float16, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8,
    np.bool_, np.complex64, np.complex128))


def torch_dtype(dtype: DType) -> torch.dtype:
    """The torch dtype a value of `dtype` has at run time (its carrier for sub-byte types)."""
    try:
        return _TORCH[dtype] if dtype in _TORCH else CARRIERS[dtype]
    except KeyError:
        raise TypeError(f"element type {dtype.name} has no torch equivalent") from None


def kiln_dtype(dtype: torch.dtype) -> DType:
    return _FROM_TORCH[dtype]


def to_torch(array: Any, device: torch.device | str | None = None) -> Any:
    """A numpy array (or scalar) as a torch tensor; strings stay numpy object arrays."""
    if isinstance(array, torch.Tensor):
        return array if device is None else array.to(device)
    if (type(array) is np.ndarray and array.dtype in _PLAIN_NUMPY and array.flags.c_contiguous
            and array.flags.writeable):  # the common case, without the checks below
        tensor = torch.from_numpy(array)
        return tensor if device is None else tensor.to(device)
    array = np.asarray(array)
    if array.dtype.kind in ("U", "S", "O"):
        return array.astype(object)
    name = array.dtype.name
    if name in _ML_CARRIED:
        array = array.astype(_ML_CARRIED[name])
        name = array.dtype.name
    # own a writable C-ordered copy when needed (np.ascontiguousarray would turn 0-d into 1-d)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = array.copy(order="C")
    if name in _ML_DTYPES:
        bits = array.view(np.uint8 if array.dtype.itemsize == 1 else np.int16)
        tensor = torch.from_numpy(bits).view(_ML_DTYPES[name])
    elif name in ("uint16", "uint32", "uint64"):
        signed = array.view(f"int{array.dtype.itemsize * 8}")
        tensor = torch.from_numpy(signed).view(getattr(torch, name))
    else:
        tensor = torch.from_numpy(array)
    return tensor if device is None else tensor.to(device)


def to_numpy(value: Any, dtype: DType | None = None) -> Any:
    """A torch tensor as a numpy array (ml_dtypes for bfloat16/float8); lists element-wise.

    `dtype`, the value's declared type, turns a sub-byte carrier back into that type.
    """
    if isinstance(value, list):
        return [to_numpy(v, dtype) for v in value]
    if not isinstance(value, torch.Tensor):
        return value
    if value.dtype in _PLAIN_TORCH and value.device.type == "cpu" and dtype not in _CARRIED_ML:
        return value.detach().contiguous().numpy()  # the common case
    tensor = value.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if dtype in _CARRIED_ML and tensor.dtype == CARRIERS[dtype]:
        import ml_dtypes

        return tensor.contiguous().numpy().astype(getattr(ml_dtypes, _CARRIED_ML[dtype]))
    if tensor.dtype in _TORCH_TO_ML:
        import ml_dtypes

        width = torch.uint8 if tensor.element_size() == 1 else torch.int16
        bits = tensor.contiguous().view(width).numpy()
        return bits.view(getattr(ml_dtypes, _TORCH_TO_ML[tensor.dtype]))
    if tensor.dtype in _UNSIGNED_WIDE:
        bits = tensor.contiguous().view(_UNSIGNED_WIDE[tensor.dtype]).numpy()
        return bits.view(str(tensor.dtype).replace("torch.", ""))
    return tensor.contiguous().numpy()


def is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def memory_order(t: torch.Tensor) -> list[int] | None:
    """The dims of `t` from outermost to innermost in memory when `t` is a dense view in
    some other order than row-major (a Transpose that stayed a view, channels-last), else
    None. `t.permute(order)` is then contiguous."""
    if t.dim() < 2 or t.is_contiguous():
        return None
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    return order if t.permute(order).is_contiguous() else None


def inverse_order(order: list[int]) -> list[int]:
    """The permutation that undoes `order`: `t.permute(order).permute(inverse_order(order))`
    is `t` again."""
    return [order.index(d) for d in range(len(order))]
