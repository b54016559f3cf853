"""Normalization: BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm, LRN, LpNorm, MVN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kiln.ops._common import axes as norm_axes
from kiln.ops.registry import register


def _per_channel(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.reshape(1, -1, *([1] * (rank - 2)))


@register("BatchNormalization", 7)
def batch_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
    var: torch.Tensor, *, epsilon: float = 1e-5, momentum: float = 0.9, spatial: int = 1,
    training_mode: int = 0, num_outputs: int = 1,
):
    rank = x.dim()
    if training_mode:
        dims = [0, *range(2, rank)]
        batch_mean = x.mean(dim=dims)
        batch_var = x.var(dim=dims, unbiased=False)
        y = (x - _per_channel(batch_mean, rank)) / torch.sqrt(
            _per_channel(batch_var, rank) + epsilon)
        y = y * _per_channel(scale, rank) + _per_channel(bias, rank)
        running_mean = mean * momentum + batch_mean * (1 - momentum)
        running_var = var * momentum + batch_var * (1 - momentum)
        return (y, running_mean, running_var)[:num_outputs] if num_outputs > 1 else y
    # the per-channel factors in fp32 at least: fp16 data may come with fp32 statistics
    # (as cuDNN takes them), and a variance near epsilon is below fp16's normal range
    work = torch.promote_types(x.dtype, torch.float32)
    inv = torch.rsqrt(var.to(work) + epsilon) * scale.to(work)
    shift = (bias.to(work) - mean.to(work) * inv).to(x.dtype)
    inv = inv.to(x.dtype)
    if rank == 1 or scale.dim() > 1:  # spatial=0 (opset < 9) keeps per-element statistics
        return x * inv + shift
    return x * _per_channel(inv, rank) + _per_channel(shift, rank)


@register("InstanceNormalization", 6)
def instance_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *,
                  epsilon: float = 1e-5) -> torch.Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=epsilon)


@register("LayerNormalization", 17)
def layer_norm(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
    axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1, num_outputs: int = 1,
):
    axis = axis + x.dim() if axis < 0 else axis
    dims = tuple(range(axis, x.dim()))
    work = x.to(torch.float32) if stash_type == 1 and x.dtype != torch.float64 else x
    mean = work.mean(dim=dims, keepdim=True)
    var = (work - mean).pow(2).mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(var + epsilon)
    y = ((work - mean) * inv_std).to(x.dtype) * scale
    if bias is not None:
        y = y + bias
    if num_outputs == 1:
        return y
    return (y, mean, inv_std)[:num_outputs]


@register("GroupNormalization", 18)
def group_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *,
               epsilon: float = 1e-5, num_groups: int, stash_type: int = 1) -> torch.Tensor:
    n, c = x.shape[0], x.shape[1]
    grouped = x.reshape(n, num_groups, -1).to(torch.float32)
    mean = grouped.mean(dim=-1, keepdim=True)
    var = grouped.var(dim=-1, unbiased=False, keepdim=True)
    normed = ((grouped - mean) / torch.sqrt(var + epsilon)).reshape(x.shape).to(x.dtype)
    if scale.numel() == num_groups:  # opset 18 scales per group, 21 per channel
        scale = scale.repeat_interleave(c // num_groups)
        bias = bias.repeat_interleave(c // num_groups)
    return normed * _per_channel(scale, x.dim()) + _per_channel(bias, x.dim())


@register("RMSNormalization", 23)
def rms_norm(x: torch.Tensor, scale: torch.Tensor, *, axis: int = -1, epsilon: float = 1e-5,
             stash_type: int = 1) -> torch.Tensor:
    axis = axis + x.dim() if axis < 0 else axis
    dims = tuple(range(axis, x.dim()))
    work = x.to(torch.float32) if stash_type == 1 and x.dtype != torch.float64 else x
    rms = torch.rsqrt(work.pow(2).mean(dim=dims, keepdim=True) + epsilon)
    return (work * rms).to(x.dtype) * scale


@register("LpNormalization", 1)
def lp_norm(x: torch.Tensor, *, axis: int = -1, p: int = 2) -> torch.Tensor:
    norm = x.abs().pow(p).sum(dim=axis, keepdim=True).pow(1.0 / p)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)


@register("MeanVarianceNormalization", 9)
def mean_variance_norm(x: torch.Tensor, *, axes: list[int] | None = None) -> torch.Tensor:
    dims = norm_axes(axes if axes is not None else [0, 2, 3], x.dim())
    mean = x.mean(dim=dims, keepdim=True)
    std = torch.sqrt((x - mean).pow(2).mean(dim=dims, keepdim=True))
    return (x - mean) / (std + 1e-9)


@register("LRN", 1)
def lrn(x: torch.Tensor, *, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0,
        size: int) -> torch.Tensor:
    # a window over channels: pool (N, 1, C, spatial...) flattened to 2-D planes
    n, c = x.shape[0], x.shape[1]
    squared = x.pow(2).reshape(n, 1, c, -1)
    padded = F.pad(squared, [0, 0, (size - 1) // 2, size // 2])
    summed = F.avg_pool2d(padded, (size, 1), stride=1).reshape(x.shape) * size
    return x / (bias + alpha / size * summed).pow(beta)
