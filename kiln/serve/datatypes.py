"""Tensor element types as KServe v2 names them (`FP32`), as config.pbtxt does (`TYPE_FP32`),
and as numpy and kiln do.

BYTES (Triton's TYPE_STRING) is not served: kiln engines that take strings are rare, and
their element type (str or bytes) is not settled; a model using one is refused at load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kiln.ir import DType
from kiln.serve.errors import ServeError


@dataclass(frozen=True)
class Datatype:
    name: str  # KServe v2: "FP32"
    numpy: np.dtype
    dtype: DType  # kiln's
    contents: str | None  # the InferTensorContents field gRPC clients may fill, if any

    @property
    def config_name(self) -> str:
        """config.pbtxt's spelling: TYPE_FP32."""
        return f"TYPE_{self.name}"

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


_TABLE = [
    Datatype("BOOL", np.dtype(np.bool_), DType.BOOL, "bool_contents"),
    Datatype("UINT8", np.dtype(np.uint8), DType.UINT8, "uint_contents"),
    Datatype("UINT16", np.dtype(np.uint16), DType.UINT16, "uint_contents"),
    Datatype("UINT32", np.dtype(np.uint32), DType.UINT32, "uint_contents"),
    Datatype("UINT64", np.dtype(np.uint64), DType.UINT64, "uint64_contents"),
    Datatype("INT8", np.dtype(np.int8), DType.INT8, "int_contents"),
    Datatype("INT16", np.dtype(np.int16), DType.INT16, "int_contents"),
    Datatype("INT32", np.dtype(np.int32), DType.INT32, "int_contents"),
    Datatype("INT64", np.dtype(np.int64), DType.INT64, "int64_contents"),
    Datatype("FP16", np.dtype(np.float16), DType.FLOAT16, None),  # raw bytes only, as Triton
    Datatype("FP32", np.dtype(np.float32), DType.FLOAT, "fp32_contents"),
    Datatype("FP64", np.dtype(np.float64), DType.DOUBLE, "fp64_contents"),
]
BY_NAME = {d.name: d for d in _TABLE}
_BY_DTYPE = {d.dtype: d for d in _TABLE}
NAMES = ", ".join(BY_NAME)


def from_name(name: str, what: str) -> Datatype:
    """The datatype a request names; `what` says where, for the error."""
    found = BY_NAME.get(name)
    if found is None:
        raise ServeError(f"{what} has datatype {name!r}, which kiln serve does not take",
                         hint=f"use one of {NAMES}")
    return found


def from_config(type_name: str, what: str) -> Datatype:
    """The datatype config.pbtxt names (TYPE_FP32)."""
    return from_name(type_name.removeprefix("TYPE_"), what)


def from_kiln(dtype: DType | None, what: str) -> Datatype:
    found = _BY_DTYPE.get(dtype) if dtype is not None else None
    if found is None:
        given = dtype.short if dtype is not None else "unknown"
        raise ServeError(f"{what} has element type {given}, which kiln serve cannot serve",
                         hint=f"serve models whose inputs and outputs are {NAMES}")
    return found


def name_of(dtype: np.dtype) -> str:
    """The KServe name of a numpy dtype, for messages (numpy's name when there is none)."""
    for d in _TABLE:
        if d.numpy == dtype:
            return d.name
    return str(dtype)


def from_bytes(data: memoryview | bytes, datatype: Datatype, shape: tuple[int, ...],
               what: str) -> np.ndarray:
    """Raw little-endian tensor data as an array (no copy), after checking its length."""
    count = math.prod(shape)
    want = count * datatype.itemsize
    if len(data) != want:
        raise ServeError(f"{what} has {len(data)} bytes of data; shape {list(shape)} of "
                         f"{datatype.name} needs {want}",
                         hint="send exactly the tensor's bytes, or fix its shape or datatype")
    return np.frombuffer(data, dtype=datatype.numpy, count=count).reshape(shape)


def check_range(array: np.ndarray, datatype: Datatype, what: str) -> None:
    """Integers from JSON or typed protobuf fields must fit the datatype (a cast would wrap)."""
    if datatype.numpy.kind in "iu" and array.size:
        info = np.iinfo(datatype.numpy)
        if array.min() < info.min or array.max() > info.max:
            raise ServeError(f"{what} holds values outside {datatype.name}'s range "
                             f"{info.min}..{info.max}")
