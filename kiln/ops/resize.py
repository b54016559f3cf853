"""Resize (and the older Upsample), one axis at a time.

Every mode is written as "for each output index along an axis, a few source indices and
their weights": nearest takes one, linear two, cubic four. Applying that axis by axis is
exactly ONNX's definition (the modes are separable), on any rank. The common cases go to
torch's own interpolate, which is faster.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kiln.ops._common import ints
from kiln.ops.registry import register


def _source_coords(out_size: int, in_size: int, scale: float, mode: str,
                   roi: tuple[float, float], length_resized: float) -> torch.Tensor:
    x = torch.arange(out_size, dtype=torch.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_size / length_resized
        center = in_size / 2
        offset = center * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else torch.zeros_like(x)
    if mode == "align_corners":  # over the unrounded resized length, as ONNX's reference
        if length_resized == 1:
            return torch.zeros_like(x)
        return x * (in_size - 1) / (length_resized - 1)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_crop_and_resize":
        start, end = roi
        if length_resized != 1:
            return start * (in_size - 1) + x * (end - start) * (in_size - 1) / (
                length_resized - 1)
        return torch.full_like(x, 0.5 * (start + end) * (in_size - 1))
    raise ValueError(f"unknown coordinate_transformation_mode {mode!r}")


def _nearest(coords: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    if mode == "floor":
        return torch.floor(coords)
    if mode == "ceil":
        return torch.ceil(coords)
    frac = coords - torch.floor(coords)
    if mode == "round_prefer_ceil":
        return torch.where(frac == 0.5, torch.ceil(coords), torch.round(coords))
    return torch.where(frac == 0.5, torch.floor(coords), torch.round(coords))  # prefer floor


def _cubic_weights(t: torch.Tensor, a: float) -> torch.Tensor:
    """Weights of the taps at offsets -1, 0, 1, 2 for fractional position t."""
    def k(d: torch.Tensor) -> torch.Tensor:
        d = d.abs()
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))

    return torch.stack([k(t + 1), k(t), k(1 - t), k(2 - t)], dim=-1)


def _taps(in_size: int, out_size: int, scale: float, roi: tuple[float, float], opts: dict
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices [out, taps], weights [out, taps], outside mask [out]) along one axis."""
    coords = _source_coords(out_size, in_size, scale, opts["ctm"], roi, in_size * scale)
    outside = (coords < 0) | (coords > in_size - 1)
    if opts["mode"] == "nearest":
        index = _nearest(coords, opts["nearest_mode"], scale).unsqueeze(-1)
        weights = torch.ones_like(index)
    elif opts["mode"] == "linear":
        if opts["antialias"] and scale < 1:
            index, weights = _antialias_taps(coords, in_size, scale, 1, _triangle)
            return _exclude(index, weights, in_size, opts) + (outside,)
        base = torch.floor(coords)
        t = coords - base
        index = torch.stack([base, base + 1], dim=-1)
        weights = torch.stack([1 - t, t], dim=-1)
    else:
        if opts["antialias"] and scale < 1:
            a = opts["cubic_coeff_a"]
            index, weights = _antialias_taps(coords, in_size, scale, 2,
                                             lambda d: _cubic_kernel(d, a))
            return _exclude(index, weights, in_size, opts) + (outside,)
        base = torch.floor(coords)
        t = coords - base
        index = torch.stack([base - 1, base, base + 1, base + 2], dim=-1)
        weights = _cubic_weights(t, opts["cubic_coeff_a"])
    valid = (index >= 0) & (index <= in_size - 1)
    if opts["exclude_outside"]:
        weights = weights * valid
        weights = weights / weights.sum(-1, keepdim=True)
    index = index.clamp(0, in_size - 1).to(torch.int64)
    return index, weights, outside


def _triangle(d: torch.Tensor) -> torch.Tensor:
    return (1 - d.abs()).clamp(min=0)


def _cubic_kernel(d: torch.Tensor, a: float) -> torch.Tensor:
    d = d.abs()
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


def _antialias_taps(coords: torch.Tensor, in_size: int, scale: float, support: int, kernel):
    """The kernel stretched by 1/scale, taps and weights as ONNX's reference picks them:
    pixels past the edge repeat the edge pixel (they are not dropped)."""
    first = math.floor(-support / scale) + 1
    count = 2 * support - 2 * first
    base = torch.floor(coords)
    # an exact pixel position counts as ratio 1 from the pixel before it
    exact = coords == base
    base = torch.where(exact, base - 1, base)
    offsets = torch.arange(first, first + count, dtype=torch.float64)
    index = base.unsqueeze(-1) + offsets
    weights = kernel((index - coords.unsqueeze(-1)) * scale)
    weights = weights / weights.sum(-1, keepdim=True)
    return index, weights


def _exclude(index: torch.Tensor, weights: torch.Tensor, in_size: int,
             opts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if opts["exclude_outside"]:
        valid = (index >= 0) & (index <= in_size - 1)
        weights = weights * valid
        weights = weights / weights.sum(-1, keepdim=True)
    return index.clamp(0, in_size - 1).to(torch.int64), weights


def _resize_axis(x: torch.Tensor, dim: int, out_size: int, scale: float,
                 roi: tuple[float, float], opts: dict) -> torch.Tensor:
    index, weights, outside = _taps(x.shape[dim], out_size, scale, roi, opts)
    taps = index.shape[-1]
    gathered = torch.index_select(x, dim, index.reshape(-1).to(x.device))
    shape = list(x.shape)
    shape[dim:dim + 1] = [out_size, taps]
    gathered = gathered.reshape(shape)
    w_shape = [1] * len(shape)
    w_shape[dim], w_shape[dim + 1] = out_size, taps
    work = gathered if gathered.is_floating_point() else gathered.to(torch.float64)
    out = (work * weights.to(work.dtype).to(x.device).reshape(w_shape)).sum(dim + 1)
    if opts["ctm"] == "tf_crop_and_resize":
        mask_shape = [1] * out.dim()
        mask_shape[dim] = out_size
        fill = torch.tensor(opts["extrapolation_value"], dtype=out.dtype, device=out.device)
        out = torch.where(outside.to(out.device).reshape(mask_shape), fill, out)
    if not x.is_floating_point():
        out = torch.round(out) if opts["mode"] != "nearest" else out
    return out.to(x.dtype)


def _fast_path(x: torch.Tensor, sizes: list[int], dims: list[int], opts: dict):
    """torch.nn.functional.interpolate for the cases it computes identically."""
    if dims != list(range(2, x.dim())) or not 3 <= x.dim() <= 5 or not x.is_floating_point():
        return None
    mode, ctm = opts["mode"], opts["ctm"]
    integer_scale = all(o % i == 0 for o, i in zip(sizes, x.shape[2:]))
    if mode == "nearest" and ctm == "asymmetric" and opts["nearest_mode"] == "floor" and (
            integer_scale):
        return F.interpolate(x, size=sizes, mode="nearest")
    if opts["antialias"] or opts["exclude_outside"]:
        return None
    linear = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel") and min(sizes) > 1:
        return F.interpolate(x, size=sizes, mode=linear, align_corners=False)
    if mode == "linear" and ctm == "align_corners":
        return F.interpolate(x, size=sizes, mode=linear, align_corners=True)
    return None


def resize_impl(x: torch.Tensor, scales: list[float], sizes: list[int], roi: list[float],
                opts: dict, axes: list[int] | None) -> torch.Tensor:
    rank = x.dim()
    dims = [a + rank if a < 0 else a for a in axes] if axes else list(range(rank))
    if sizes:
        in_sizes = [x.shape[d] for d in dims]
        policy = opts["keep_aspect_ratio_policy"]
        if policy != "stretch":
            ratios = [s / i for s, i in zip(sizes, in_sizes)]
            ratio = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [round(ratio * i) for i in in_sizes]
            scales = [ratio] * len(dims)
        else:
            scales = [s / i for s, i in zip(sizes, in_sizes)]
    else:
        sizes = [math.floor(x.shape[d] * s) for d, s in zip(dims, scales)]
    full_roi = roi or []
    moved = [(d, s, sc) for d, s, sc in zip(dims, sizes, scales)
             if s != x.shape[d] or sc != 1.0 or opts["ctm"] == "tf_crop_and_resize"]
    # torch maps coordinates by the rounded size; ONNX by the scale, so they agree only
    # where the scale gives the size exactly
    exact = all(x.shape[d] * sc == s for d, s, sc in moved)
    fast = _fast_path(x, [s for _, s, _ in moved], [d for d, _, _ in moved], opts) \
        if len(moved) == rank - 2 and moved and exact else None
    if fast is not None:
        return fast
    for i, (d, size, scale) in enumerate(zip(dims, sizes, scales)):
        if size == x.shape[d] and scale == 1.0 and opts["ctm"] != "tf_crop_and_resize":
            continue
        n = len(dims)
        r = (full_roi[i], full_roi[n + i]) if len(full_roi) == 2 * n else (0.0, 1.0)
        x = _resize_axis(x, d, size, scale, r, opts)
    return x


def _options(mode: str = "nearest", coordinate_transformation_mode: str = "half_pixel",
             nearest_mode: str = "round_prefer_floor", cubic_coeff_a: float = -0.75,
             exclude_outside: int = 0, extrapolation_value: float = 0.0, antialias: int = 0,
             keep_aspect_ratio_policy: str = "stretch") -> dict:
    return {
        "mode": mode, "ctm": coordinate_transformation_mode, "nearest_mode": nearest_mode,
        "cubic_coeff_a": cubic_coeff_a, "exclude_outside": exclude_outside,
        "extrapolation_value": extrapolation_value, "antialias": antialias,
        "keep_aspect_ratio_policy": keep_aspect_ratio_policy,
    }


def _floats(t: torch.Tensor | None) -> list[float]:
    return [] if t is None else [float(v) for v in t.reshape(-1).tolist()]


@register("Resize", 10, host_inputs=(1,))
def resize_10(x: torch.Tensor, scales: torch.Tensor, *, mode: str = "nearest") -> torch.Tensor:
    opts = _options(mode, "asymmetric", "floor")
    return resize_impl(x, _floats(scales), [], [], opts, None)


@register("Resize", 11, host_inputs=(1, 2, 3))
def resize(
    x: torch.Tensor, roi: torch.Tensor | None = None, scales: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None, *, antialias: int = 0, axes: list[int] | None = None,
    coordinate_transformation_mode: str = "half_pixel", cubic_coeff_a: float = -0.75,
    exclude_outside: int = 0, extrapolation_value: float = 0.0,
    keep_aspect_ratio_policy: str = "stretch", mode: str = "nearest",
    nearest_mode: str = "round_prefer_floor",
) -> torch.Tensor:
    opts = _options(mode, coordinate_transformation_mode, nearest_mode, cubic_coeff_a,
                    exclude_outside, extrapolation_value, antialias, keep_aspect_ratio_policy)
    return resize_impl(x, _floats(scales), ints(sizes), _floats(roi), opts, axes)


@register("Upsample", 7)
def upsample_7(x: torch.Tensor, *, mode: str = "nearest", scales: list[float]) -> torch.Tensor:
    return upsample(x, torch.tensor(scales), mode=mode)


@register("Upsample", 9, host_inputs=(1,))
def upsample(x: torch.Tensor, scales: torch.Tensor, *, mode: str = "nearest") -> torch.Tensor:
    opts = _options("linear" if mode in ("linear", "bilinear") else "nearest", "asymmetric",
                    "floor")
    return resize_impl(x, _floats(scales), [], [], opts, None)
