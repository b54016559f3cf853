"""Element types of tensors, keyed by ONNX's TensorProto numbers.

The IR stays free of torch and onnx: a DType knows its ONNX number, its name and, where
numpy has one, its numpy dtype. Mapping to torch lives in `kiln.ops.tensors`.
"""

from __future__ import annotations

import enum

import numpy as np


class DType(enum.Enum):
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def short(self) -> str:
        """The short spelling used in plans, errors and `kiln inspect` (`fp32`, `int64`)."""
        return _SHORT.get(self, self.name.lower())

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def numpy(self) -> np.dtype | None:
        """The numpy dtype, or None where numpy has none (bfloat16, float8, int4)."""
        return _NUMPY.get(self)

    @property
    def itemsize(self) -> float:
        """Bytes per element (fractional for 4- and 2-bit types)."""
        return _ITEMSIZE.get(self, 0)

    @classmethod
    def from_short(cls, text: str) -> DType:
        for dtype, short in _SHORT.items():
            if short == text:
                return dtype
        try:
            return cls[text.upper()]
        except KeyError:
            known = ", ".join(sorted(_SHORT.values()))
            raise ValueError(f"unknown dtype {text!r}; known: {known}") from None

    @classmethod
    def from_numpy(cls, dtype: np.dtype) -> DType:
        """The DType of a numpy dtype, ml_dtypes' bfloat16/float8/int4... included."""
        known = _FROM_NUMPY.get(dtype)  # every engine run checks its inputs' types
        if known is not None:
            return known
        known = cls._from_numpy(np.dtype(dtype))
        _FROM_NUMPY[dtype] = known
        return known

    @classmethod
    def _from_numpy(cls, dtype: np.dtype) -> DType:
        if dtype.kind in ("U", "S", "O"):
            return cls.STRING
        for kiln_dtype, np_dtype in _NUMPY.items():
            if np_dtype == dtype:
                return kiln_dtype
        if dtype.name in _ML_DTYPES:  # onnx hands bfloat16, float8 and int4 over as ml_dtypes
            return _ML_DTYPES[dtype.name]
        raise ValueError(f"numpy dtype {dtype} has no ONNX element type")


_FROM_NUMPY: dict = {}  # numpy dtype -> DType, filled on first use
_SHORT = {
    DType.FLOAT: "fp32",
    DType.FLOAT16: "fp16",
    DType.BFLOAT16: "bf16",
    DType.DOUBLE: "fp64",
    DType.INT8: "int8",
    DType.INT16: "int16",
    DType.INT32: "int32",
    DType.INT64: "int64",
    DType.UINT8: "uint8",
    DType.UINT16: "uint16",
    DType.UINT32: "uint32",
    DType.UINT64: "uint64",
    DType.BOOL: "bool",
    DType.STRING: "string",
    DType.COMPLEX64: "complex64",
    DType.COMPLEX128: "complex128",
    DType.FLOAT8E4M3FN: "fp8e4m3",
    DType.FLOAT8E5M2: "fp8e5m2",
}

_FLOATS = {
    DType.FLOAT,
    DType.FLOAT16,
    DType.BFLOAT16,
    DType.DOUBLE,
    DType.FLOAT8E4M3FN,
    DType.FLOAT8E4M3FNUZ,
    DType.FLOAT8E5M2,
    DType.FLOAT8E5M2FNUZ,
    DType.FLOAT4E2M1,
    DType.FLOAT8E8M0,
}

_NUMPY = {
    DType.FLOAT: np.dtype(np.float32),
    DType.UINT8: np.dtype(np.uint8),
    DType.INT8: np.dtype(np.int8),
    DType.UINT16: np.dtype(np.uint16),
    DType.INT16: np.dtype(np.int16),
    DType.INT32: np.dtype(np.int32),
    DType.INT64: np.dtype(np.int64),
    DType.BOOL: np.dtype(np.bool_),
    DType.FLOAT16: np.dtype(np.float16),
    DType.DOUBLE: np.dtype(np.float64),
    DType.UINT32: np.dtype(np.uint32),
    DType.UINT64: np.dtype(np.uint64),
    DType.COMPLEX64: np.dtype(np.complex64),
    DType.COMPLEX128: np.dtype(np.complex128),
    DType.STRING: np.dtype(object),
}

# ml_dtypes' names for the types numpy lacks
_ML_DTYPES = {
    "bfloat16": DType.BFLOAT16,
    "float8_e4m3fn": DType.FLOAT8E4M3FN,
    "float8_e4m3fnuz": DType.FLOAT8E4M3FNUZ,
    "float8_e5m2": DType.FLOAT8E5M2,
    "float8_e5m2fnuz": DType.FLOAT8E5M2FNUZ,
    "float8_e8m0fnu": DType.FLOAT8E8M0,
    "float4_e2m1fn": DType.FLOAT4E2M1,
    "int4": DType.INT4,
    "uint4": DType.UINT4,
    "int2": DType.INT2,
    "uint2": DType.UINT2,
}

_ITEMSIZE = {d: n.itemsize for d, n in _NUMPY.items() if d is not DType.STRING}
_ITEMSIZE.update(
    {
        DType.BFLOAT16: 2,
        DType.FLOAT8E4M3FN: 1,
        DType.FLOAT8E4M3FNUZ: 1,
        DType.FLOAT8E5M2: 1,
        DType.FLOAT8E5M2FNUZ: 1,
        DType.FLOAT8E8M0: 1,
        DType.UINT4: 0.5,
        DType.INT4: 0.5,
        DType.FLOAT4E2M1: 0.5,
        DType.UINT2: 0.25,
        DType.INT2: 0.25,
    }
)
