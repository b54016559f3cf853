"""DeformConv (2-D): convolution whose taps move by learned offsets, scaled by a mask.

Each tap is read by bilinear interpolation with zeros outside the image (as ONNX's
reference does through GridSample), gathered im2col-style, then one grouped matmul.
"""

from __future__ import annotations

import torch

from kiln.ops.registry import register


def bilinear_taps(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """x [N, G, Cg, H, W] read at points py/px [N, G, *P] -> [N, G, Cg, *P]."""
    n, g, cg, h, w = x.shape
    points = py.shape[2:]
    flat = x.reshape(n, g, cg, h * w)
    y0, x0 = torch.floor(py), torch.floor(px)
    result = torch.zeros((n, g, cg, py[0, 0].numel()), dtype=x.dtype, device=x.device)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            weight = (1 - (py - yy).abs()) * (1 - (px - xx).abs())
            inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            index = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).to(torch.int64)
            index = index.reshape(n, g, 1, -1).expand(n, g, cg, -1)
            values = flat.gather(-1, index)
            result += values * (weight * inside).reshape(n, g, 1, -1).to(x.dtype)
    return result.reshape(n, g, cg, *points)


@register("DeformConv", 19)
def deform_conv(
    x: torch.Tensor, w: torch.Tensor, offset: torch.Tensor, b: torch.Tensor | None = None,
    mask: torch.Tensor | None = None, *, dilations: list[int] | None = None, group: int = 1,
    kernel_shape: list[int] | None = None, offset_group: int = 1,
    pads: list[int] | None = None, strides: list[int] | None = None,
) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"DeformConv supports 2-D images (rank-4 inputs), got rank {x.dim()}")
    n, c, h, wd = x.shape
    kh, kw = kernel_shape or list(w.shape[2:])
    sh, sw = strides or [1, 1]
    dh, dw = dilations or [1, 1]
    top, left = (pads or [0, 0, 0, 0])[:2]
    oh, ow = offset.shape[2:]
    og = offset_group
    dev, dtype = x.device, x.dtype
    off = offset.to(dtype).reshape(n, og, kh, kw, 2, oh, ow)
    base_y = (torch.arange(kh, device=dev) * dh).reshape(kh, 1, 1, 1) + (
        torch.arange(oh, device=dev) * sh - top).reshape(1, 1, oh, 1)
    base_x = (torch.arange(kw, device=dev) * dw).reshape(1, kw, 1, 1) + (
        torch.arange(ow, device=dev) * sw - left).reshape(1, 1, 1, ow)
    py = base_y.to(dtype) + off[:, :, :, :, 0]  # [N, OG, kh, kw, oh, ow]
    px = base_x.to(dtype) + off[:, :, :, :, 1]
    cols = bilinear_taps(x.reshape(n, og, c // og, h, wd), py, px)
    if mask is not None:
        cols = cols * mask.to(dtype).reshape(n, og, 1, kh, kw, oh, ow)
    # grouped matmul: [G, OCg, Cg*K] x [N, G, Cg*K, L]
    cols = cols.reshape(n, group, (c // group) * kh * kw, oh * ow)
    weight = w.to(dtype).reshape(group, w.shape[0] // group, -1)
    y = torch.einsum("gok,ngkl->ngol", weight, cols).reshape(n, w.shape[0], oh, ow)
    if b is not None:
        y = y + b.to(dtype).reshape(1, -1, 1, 1)
    return y
