"""Softmax over the last axis through kiln's AVX-512 kernel (softmax.c), in place or into a
new tensor."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from kiln.kernels.native import function


def in_place() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """softmax(x): x's last axis, overwriting x where it is a dense float32 CPU tensor
    (else torch's softmax, a new tensor); None where the kernel cannot be built here."""
    rows = function("softmax", "kiln_softmax_rows", ctypes.c_void_p, ctypes.c_int64,
                    ctypes.c_int64)
    if rows is None:
        return None

    def softmax(x: torch.Tensor) -> torch.Tensor:
        if not _dense(x):
            return torch.softmax(x, dim=-1)
        rows(x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1])
        return x

    return softmax


def into_new() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """softmax(x) along the last axis as a new tensor, x left as it is; None where the
    kernel cannot be built here."""
    rows = function("softmax", "kiln_softmax_rows_to", ctypes.c_void_p, ctypes.c_void_p,
                    ctypes.c_int64, ctypes.c_int64)
    if rows is None:
        return None

    def softmax(x: torch.Tensor) -> torch.Tensor:
        if not _dense(x):
            return torch.softmax(x, dim=-1)
        y = torch.empty_like(x)
        rows(x.data_ptr(), y.data_ptr(), x.numel() // x.shape[-1], x.shape[-1])
        return y

    return softmax


def _dense(x: torch.Tensor) -> bool:
    """What the kernel takes: a non-empty, dense float32 CPU tensor."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
            and x.numel() > 0)
