"""DType: ONNX element types from numpy, including the ml_dtypes onnx uses."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from kiln.ir import DType


@pytest.mark.parametrize(("numpy_dtype", "expected"), [
    (np.float32, DType.FLOAT), (np.int64, DType.INT64), (np.bool_, DType.BOOL),
    (np.str_, DType.STRING), (object, DType.STRING),
    (ml_dtypes.bfloat16, DType.BFLOAT16), (ml_dtypes.float8_e4m3fn, DType.FLOAT8E4M3FN),
    (ml_dtypes.float8_e5m2, DType.FLOAT8E5M2), (ml_dtypes.int4, DType.INT4),
    (ml_dtypes.uint4, DType.UINT4),
])
def test_from_numpy(numpy_dtype, expected):
    assert DType.from_numpy(np.dtype(numpy_dtype)) is expected


def test_unknown_numpy_dtype_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"numpy dtype datetime64\S* has no ONNX element type"):
        DType.from_numpy(np.dtype("datetime64[s]"))
