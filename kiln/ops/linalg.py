"""Linear algebra beyond products: Det."""

from __future__ import annotations

import torch

from kiln.ops.registry import register


@register("Det", 11)
def det(x: torch.Tensor) -> torch.Tensor:
    # LU kernels exist for float32/64 only; half types go through float32
    work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    return torch.linalg.det(work).to(x.dtype)
