"""Sampling grids: AffineGrid and GridSample."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.ops.registry import register

_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest",
          "bicubic": "bicubic", "cubic": "bicubic"}


@register("GridSample", 16)
def grid_sample(x: torch.Tensor, grid: torch.Tensor, *, align_corners: int = 0,
                mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    if mode not in _MODES:
        raise ValueError(f"GridSample mode must be one of {sorted(_MODES)}, got {mode!r}")
    method = _MODES[mode]
    if method == "bicubic" and x.dim() != 4:
        raise ValueError(f"GridSample cubic mode takes 4-D inputs only, got rank {x.dim()}")
    work = x if x.is_floating_point() else x.to(torch.float32)
    y = F.grid_sample(work, grid.to(work.dtype), mode=method, padding_mode=padding_mode,
                      align_corners=bool(align_corners))
    return y.to(x.dtype)


@register("AffineGrid", 20, host_inputs=(1,))
def affine_grid(theta: torch.Tensor, size: torch.Tensor, *,
                align_corners: int = 0) -> torch.Tensor:
    shape = [int(v) for v in size.reshape(-1).tolist()]
    work = theta if theta.dtype in (torch.float32, torch.float64) else theta.to(torch.float32)
    grid = F.affine_grid(work, shape, align_corners=bool(align_corners))
    return grid.to(theta.dtype)
