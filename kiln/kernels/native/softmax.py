"""Softmax over the last axis through kiln's AVX-512 kernel (softmax.c), in place or into a
new tensor."""

from __future__ import annotations

import ctypes
import math
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


def masked_in_place() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """softmax(x + mask) in place, the mask added in the kernel's own passes where it is a
    dense row per leading index of x or one row for all ([..., 1, n] after broadcasting);
    other masks are added by torch first. None where the kernel cannot be built here."""
    rows = function("softmax", "kiln_softmax_rows_masked", ctypes.c_void_p, ctypes.c_int64,
                    ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64)
    plain = in_place()
    if rows is None or plain is None:
        return None

    def softmax(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per = _rows_per_mask_row(x, mask) if _dense(x) else None
        if per is None:
            return plain(x.add_(mask))
        n = x.shape[-1]
        rows(x.data_ptr(), x.numel() // n, n, mask.data_ptr(), per)
        return x

    return softmax


def _rows_per_mask_row(x: torch.Tensor, mask: torch.Tensor) -> int | None:
    """How many consecutive rows of x share one row of a dense mask [*lead, 1, n] whose
    leading dims are x's up to some dim and ones after it ([B, 1, 1, n] over [B, H, S, n]:
    H * S rows a mask row), else None."""
    if (mask.dtype != x.dtype or not mask.is_contiguous() or mask.dim() != x.dim()
            or mask.shape[-1] != x.shape[-1] or mask.shape[-2] != 1):
        return None
    lead, mask_lead = list(x.shape[:-1]), list(mask.shape[:-1])
    shared = 0
    while shared < len(lead) and mask_lead[shared] == lead[shared]:
        shared += 1
    if any(d != 1 for d in mask_lead[shared:]):
        return None
    return math.prod(lead[shared:])


def _dense(x: torch.Tensor) -> bool:
    """What the kernel takes: a non-empty, dense float32 CPU tensor."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
            and x.numel() > 0)
