"""Small helpers shared by operator modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kiln.ir import DType
from kiln.ops.tensors import torch_dtype

_WIDEN = {torch.uint16: torch.int32, torch.uint32: torch.int64, torch.uint64: torch.int64}


def ints(value: Any) -> list[int]:
    """A 1-D (or scalar) integer tensor, list or None as a list of Python ints."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        if value.dim() == 1 and not value.is_floating_point():
            return value.tolist()  # already Python ints: a microsecond less per call
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def axis(index: int, rank: int) -> int:
    """Normalizes a possibly negative axis; raises for one out of range."""
    if not -rank <= index < max(rank, 1):
        raise ValueError(f"axis {index} is out of range for rank {rank}")
    return index + rank if index < 0 else index


def axes(indices: Sequence[int], rank: int) -> list[int]:
    return [axis(i, rank) for i in indices]


def onnx_dtype(code: int) -> torch.dtype:
    """The torch dtype for an ONNX TensorProto element-type number."""
    return torch_dtype(DType(int(code)))


def widen(*tensors: torch.Tensor) -> tuple[torch.dtype, list[torch.Tensor]]:
    """Upcasts unsigned 16/32/64-bit tensors (few torch kernels take them) for computing.

    Returns the original dtype and the tensors to compute with; cast results back with
    `narrow`.
    """
    dtype = tensors[0].dtype
    if dtype not in _WIDEN:
        return dtype, list(tensors)
    return dtype, [t.to(_WIDEN[dtype]) for t in tensors]


def narrow(result: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return result if result.dtype == dtype else result.to(dtype)
