"""SiLU through kiln's AVX-512 kernel (silu.c), in place."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch

from kiln.kernels.native import function


def in_place() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """silu_(x): x overwritten where it is a dense float32 CPU tensor in any standard
    memory order (else torch's silu in place); None where the kernel cannot be built."""
    kernel = function("silu", "kiln_silu", ctypes.c_void_p, ctypes.c_int64)
    if kernel is None:
        return None

    def silu_(x: torch.Tensor) -> torch.Tensor:
        dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(
            memory_format=torch.channels_last))
        if x.dtype != torch.float32 or x.device.type != "cpu" or not dense:
            return torch.nn.functional.silu(x, inplace=True)
        kernel(x.data_ptr(), x.numel())
        return x

    return silu_
