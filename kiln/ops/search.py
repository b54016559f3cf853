"""Searching and ordering: NonZero, TopK, CumSum, CumProd, Trilu, Unique, ReverseSequence."""

from __future__ import annotations

import numpy as np
import torch

from kiln.ops._common import axis as norm_axis
from kiln.ops._common import narrow, widen
from kiln.ops.registry import register
from kiln.ops.tensors import to_numpy, to_torch


@register("NonZero", 9)
def non_zero(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 0:
        return torch.zeros((0 if not bool(x) else 1, int(bool(x))), dtype=torch.int64)
    return torch.nonzero(x).T.contiguous()


@register("TopK", 10, host_inputs=(1,))
def top_k(x: torch.Tensor, k: torch.Tensor, *, axis: int = -1, largest: int = 1,
          sorted: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    count = int(k.reshape(-1)[0].item())
    axis = norm_axis(axis, x.dim())
    dtype, (work,) = widen(x)
    # stable order: equal values keep the lower index first, as ONNX requires
    order = torch.sort(work, dim=axis, descending=bool(largest), stable=True).indices
    indices = order.narrow(axis, 0, count)
    values = torch.gather(work, axis, indices)
    return narrow(values, dtype), indices


@register("TopK", 1)
def top_k_1(x: torch.Tensor, *, axis: int = -1, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return top_k(x, torch.tensor([k]), axis=axis)


@register("CumSum", 11, host_inputs=(1,))
def cum_sum(x: torch.Tensor, axis: torch.Tensor, *, exclusive: int = 0,
            reverse: int = 0) -> torch.Tensor:
    dim = norm_axis(int(axis.reshape(-1)[0].item()), x.dim())
    dtype, (work,) = widen(x)
    if reverse:
        work = torch.flip(work, [dim])
    out = torch.cumsum(work, dim=dim)
    if exclusive:
        out = out - work
    if reverse:
        out = torch.flip(out, [dim])
    return narrow(out.to(work.dtype), dtype)


@register("CumProd", 26, host_inputs=(1,))
def cum_prod(x: torch.Tensor, axis: torch.Tensor, *, exclusive: int = 0,
             reverse: int = 0) -> torch.Tensor:
    dim = norm_axis(int(axis.reshape(-1)[0].item()), x.dim())
    dtype, (work,) = widen(x)
    if reverse:
        work = torch.flip(work, [dim])
    if exclusive and work.shape[dim] > 0:
        # shift by one along the axis, a 1 first (dividing out would fail on zeros)
        first = torch.ones_like(work.narrow(dim, 0, 1))
        work = torch.cat([first, work.narrow(dim, 0, work.shape[dim] - 1)], dim=dim)
    out = torch.cumprod(work, dim=dim)
    if reverse:
        out = torch.flip(out, [dim])
    return narrow(out.to(work.dtype), dtype)


@register("Trilu", 14, host_inputs=(1,))
def trilu(x: torch.Tensor, k: torch.Tensor | None = None, *, upper: int = 1) -> torch.Tensor:
    diagonal = int(k.reshape(-1)[0].item()) if k is not None else 0
    dtype, (work,) = widen(x)
    if work.dtype == torch.bool:
        work = work.to(torch.uint8)
    out = torch.triu(work, diagonal) if upper else torch.tril(work, diagonal)
    return out.to(dtype)


@register("Unique", 11)
def unique(x: torch.Tensor, *, axis: int | None = None, sorted: int = 1):
    """numpy's unique gives ONNX's four outputs directly (first-occurrence order if unsorted)."""
    array = to_numpy(x)
    if axis is None:
        values, first, inverse, counts = np.unique(
            array.reshape(-1), return_index=True, return_inverse=True, return_counts=True)
    else:
        values, first, inverse, counts = np.unique(
            array, axis=axis, return_index=True, return_inverse=True, return_counts=True)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.argsort(order, kind="stable")
        values = np.take(values, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], rank[inverse.reshape(-1)]
    return (to_torch(values), to_torch(first.astype(np.int64)),
            to_torch(inverse.reshape(-1).astype(np.int64)), to_torch(counts.astype(np.int64)))


@register("ReverseSequence", 10)
def reverse_sequence(x: torch.Tensor, lengths: torch.Tensor, *, batch_axis: int = 1,
                     time_axis: int = 0) -> torch.Tensor:
    out = x.clone()
    for b, length in enumerate(lengths.tolist()):
        index = [slice(None)] * x.dim()
        index[batch_axis] = b
        index[time_axis] = slice(0, int(length))
        part = x[tuple(index)]
        flip_dim = time_axis if time_axis < batch_axis else time_axis - 1
        out[tuple(index)] = torch.flip(part, [flip_dim])
    return out
