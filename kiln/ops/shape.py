"""Shape and layout: Shape, Size, Reshape, Flatten, (Un)Squeeze, Transpose, Expand, Tile,
Identity, Dropout (inference), DepthToSpace and SpaceToDepth."""

from __future__ import annotations

import math

import numpy as np
import torch

from kiln.ops._common import axes as norm_axes
from kiln.ops._common import ints
from kiln.ops.registry import register


@register("Shape", 1)
def shape(x: torch.Tensor, *, start: int = 0, end: int | None = None) -> torch.Tensor:
    dims = list(x.shape)
    rank = len(dims)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    # through numpy: a third of torch.tensor's cost for a handful of ints (1.1 against
    # 2.9 us), paid by every Shape of shape arithmetic on every run
    return torch.from_numpy(np.array(dims[start:end], dtype=np.int64))


@register("Size", 1)
def size(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(x.numel() if isinstance(x, torch.Tensor) else x.size, dtype=torch.int64)


def reshape_target(current: torch.Size, target: list[int], allowzero: int = 0) -> list[int]:
    """ONNX Reshape's target: 0 copies the input dim (unless allowzero), -1 is inferred."""
    dims = []
    for i, d in enumerate(target):
        dims.append(current[i] if d == 0 and not allowzero else d)
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        total = math.prod(current)
        dims[dims.index(-1)] = total // known if known else 0
    return dims


@register("Reshape", 5, host_inputs=(1,))
def reshape(x: torch.Tensor, target: torch.Tensor, *, allowzero: int = 0) -> torch.Tensor:
    return x.reshape(reshape_target(x.shape, ints(target), allowzero))


@register("Flatten", 1)
def flatten(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    axis = axis + x.dim() if axis < 0 else axis
    rows = math.prod(x.shape[:axis])
    return x.reshape(rows, math.prod(x.shape[axis:]))


def _squeeze(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    if not axes:
        return x.reshape([d for d in x.shape if d != 1])
    if len(axes) == 1:  # the usual case, a little cheaper than reshape
        axis = axes[0] + x.dim() if axes[0] < 0 else axes[0]
        if 0 <= axis < x.dim() and x.shape[axis] == 1:
            return x.squeeze(axis)
    dims = set(norm_axes(axes, x.dim()))
    return x.reshape([d for i, d in enumerate(x.shape) if i not in dims])


@register("Squeeze", 1)
def squeeze_1(x: torch.Tensor, *, axes: list[int] | None = None) -> torch.Tensor:
    return _squeeze(x, list(axes or []))


@register("Squeeze", 13, host_inputs=(1,))
def squeeze(x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    return _squeeze(x, ints(axes))


def _unsqueeze(x: torch.Tensor, axes: list[int]) -> torch.Tensor:
    rank = x.dim() + len(axes)
    if len(axes) == 1:  # the usual case, a little cheaper than reshape
        return x.unsqueeze(axes[0] + rank if axes[0] < 0 else axes[0])
    dims = sorted(norm_axes(axes, rank))
    shape = list(x.shape)
    for d in dims:
        shape.insert(d, 1)
    return x.reshape(shape)


@register("Unsqueeze", 1)
def unsqueeze_1(x: torch.Tensor, *, axes: list[int]) -> torch.Tensor:
    return _unsqueeze(x, list(axes))


@register("Unsqueeze", 13, host_inputs=(1,))
def unsqueeze(x: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    return _unsqueeze(x, ints(axes))


@register("Transpose", 1)
def transpose(x: torch.Tensor, *, perm: list[int] | None = None) -> torch.Tensor:
    perm = list(perm) if perm else list(reversed(range(x.dim())))
    return x.permute(perm)


@register("Expand", 8, host_inputs=(1,))
def expand(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    dims = ints(target)
    rank = max(len(dims), x.dim())
    dims = [1] * (rank - len(dims)) + dims
    current = [1] * (rank - x.dim()) + list(x.shape)
    out = [c if d == 1 else d for c, d in zip(current, dims)]
    return x.reshape(current).expand(out).contiguous()


@register("Tile", 6, host_inputs=(1,))
def tile(x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    return x.repeat(ints(repeats))


@register("Identity", 1)
def identity(x):
    return x


@register("Dropout", 1, host_inputs=(1, 2))
def dropout(x: torch.Tensor, ratio: torch.Tensor | None = None,
            training_mode: torch.Tensor | None = None, *, num_outputs: int = 1,
            seed: float | None = None, **_: object):
    # opset < 12 has no training_mode input (and `ratio` is an attribute): always inference
    training = training_mode is not None and bool(training_mode.reshape(-1)[0].item())
    rate = float(ratio.reshape(-1)[0].item()) if training and ratio is not None else 0.5
    if not training or rate == 0:
        # inference: Dropout is the identity, its mask all true
        mask = torch.ones_like(x, dtype=torch.bool)
        return x if num_outputs == 1 else (x, mask)
    from kiln.ops.random import dropout_mask

    mask = dropout_mask(x, rate, seed)
    y = torch.where(mask, x / (1.0 - rate), torch.zeros_like(x))
    return y if num_outputs == 1 else (y, mask)


@register("DepthToSpace", 1)
def depth_to_space(x: torch.Tensor, *, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


@register("SpaceToDepth", 1)
def space_to_depth(x: torch.Tensor, *, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    n, c, h, w = x.shape
    b = blocksize
    order = (0, 1, 3, 5, 2, 4) if mode == "CRD" else (0, 3, 5, 1, 2, 4)
    y = x.reshape(n, c, h // b, b, w // b, b).permute(*order)
    return y.reshape(n, c * b * b, h // b, w // b)
