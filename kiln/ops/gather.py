"""Indexing: Gather, GatherElements, GatherND, Scatter*, TensorScatter, Compress, OneHot.

ONNX indices may be negative (counting from the end); torch's may not, so they are
wrapped first.
"""

from __future__ import annotations

import torch

from kiln.ops._common import axis as norm_axis
from kiln.ops._common import narrow, widen
from kiln.ops.registry import register


def _wrap(indices: torch.Tensor, size: int) -> torch.Tensor:
    indices = indices.to(torch.int64)
    return torch.where(indices < 0, indices + size, indices)


@register("Gather", 1)
def gather(data: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    axis = norm_axis(axis, data.dim())
    size = data.shape[axis]
    if indices.device.type == "cpu" and indices.numel() == 1:
        return _gather_one(data, indices, axis, size)
    shape = _gathered_shape(data, indices, axis)
    idx = indices.reshape(-1)
    if idx.dtype != torch.int64:
        idx = idx.to(torch.int64)
    if idx.device.type == "cpu" and data.device.type == "cpu":
        try:  # non-negative indices need no wrapping: torch refuses a negative one here
            return torch.index_select(data, axis, idx).reshape(shape)
        except (IndexError, RuntimeError):
            bad = idx[(idx < -size) | (idx >= size)]
            if bad.numel():
                raise IndexError(f"Gather index {int(bad[0])} is out of range for an axis "
                                 f"of size {size}") from None
    flat = torch.index_select(data, axis, _wrap(idx, size).to(data.device))
    return flat.reshape(shape)


def _gather_one(data: torch.Tensor, indices: torch.Tensor, axis: int, size: int
                ) -> torch.Tensor:
    """One index on the host (shape arithmetic, a single row): a view, without index
    tensors; each torch call saved is a microsecond or two, which models of many tiny
    layers pay many times a run."""
    i = int(indices.item())
    if not -size <= i < size:
        raise IndexError(f"Gather index {i} is out of range for an axis of size {size}")
    i %= size
    if indices.dim() == 0:
        return data.select(axis, i)
    row = data.narrow(axis, i, 1)
    if indices.dim() == 1:
        return row
    return row.reshape(_gathered_shape(data, indices, axis))


def _gathered_shape(data: torch.Tensor, indices: torch.Tensor, axis: int) -> list[int]:
    return list(data.shape[:axis]) + list(indices.shape) + list(data.shape[axis + 1:])


@register("GatherElements", 11)
def gather_elements(data: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    axis = norm_axis(axis, data.dim())
    return torch.gather(data, axis, _wrap(indices, data.shape[axis]))


@register("GatherND", 11)
def gather_nd(data: torch.Tensor, indices: torch.Tensor, *, batch_dims: int = 0) -> torch.Tensor:
    indices = indices.to(torch.int64)
    batch_shape = data.shape[:batch_dims]
    depth = indices.shape[-1]
    batch = int(torch.tensor(batch_shape).prod()) if batch_dims else 1
    data_b = data.reshape(batch, *data.shape[batch_dims:])
    idx_b = indices.reshape(batch, -1, depth)
    sizes = torch.tensor(data.shape[batch_dims:batch_dims + depth], device=indices.device)
    idx_b = torch.where(idx_b < 0, idx_b + sizes, idx_b)
    rows = torch.arange(batch, device=data.device).unsqueeze(1).expand(-1, idx_b.shape[1])
    picked = data_b[(rows, *idx_b.unbind(-1))]
    out_shape = list(indices.shape[:-1]) + list(data.shape[batch_dims + depth:])
    return picked.reshape(out_shape)


_REDUCE = {"none": None, "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register("ScatterElements", 11)
def scatter_elements(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *,
                     axis: int = 0, reduction: str = "none") -> torch.Tensor:
    axis = norm_axis(axis, data.dim())
    dtype, (work, upd) = widen(data, updates)
    idx = _wrap(indices, data.shape[axis])
    if _REDUCE[reduction] is None:
        return narrow(work.scatter(axis, idx, upd), dtype)
    return narrow(work.scatter_reduce(axis, idx, upd, _REDUCE[reduction], include_self=True),
                  dtype)


@register("Scatter", 9)
def scatter(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *,
            axis: int = 0) -> torch.Tensor:
    return scatter_elements(data, indices, updates, axis=axis)


@register("ScatterND", 11)
def scatter_nd(data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *,
               reduction: str = "none") -> torch.Tensor:
    out = data.clone()
    depth = indices.shape[-1]
    idx = indices.reshape(-1, depth).to(torch.int64)
    sizes = torch.tensor(data.shape[:depth], device=idx.device)
    idx = torch.where(idx < 0, idx + sizes, idx)
    upd = updates.reshape(idx.shape[0], *data.shape[depth:])
    key = tuple(idx.unbind(-1))
    if reduction == "none":
        out[key] = upd
        return out
    for i in range(idx.shape[0]):  # sequential, as the spec defines duplicates
        k = tuple(int(v) for v in idx[i])
        if reduction == "add":
            out[k] = out[k] + upd[i]
        elif reduction == "mul":
            out[k] = out[k] * upd[i]
        elif reduction == "max":
            out[k] = torch.maximum(out[k], upd[i])
        elif reduction == "min":
            out[k] = torch.minimum(out[k], upd[i])
    return out


@register("Compress", 9)
def compress(x: torch.Tensor, condition: torch.Tensor, *, axis: int | None = None) -> torch.Tensor:
    cond = condition.to(torch.bool)
    if axis is None:
        flat = x.reshape(-1)
        return flat[: cond.numel()][cond[: flat.numel()]]
    axis = norm_axis(axis, x.dim())
    picked = torch.nonzero(cond[: x.shape[axis]]).reshape(-1)
    return torch.index_select(x, axis, picked.to(x.device))


@register("OneHot", 9, host_inputs=(1,))
def one_hot(indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor, *,
            axis: int = -1) -> torch.Tensor:
    d = int(depth.reshape(-1)[0].item())
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + d, idx)
    valid = (idx >= 0) & (idx < d)
    hot = torch.nn.functional.one_hot(torch.where(valid, idx, 0), d) * valid.unsqueeze(-1)
    rank = indices.dim() + 1
    axis = axis + rank if axis < 0 else axis
    hot = hot.movedim(-1, axis)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return torch.where(hot.to(torch.bool), on, off)


@register("TensorScatter", 24)
def tensor_scatter(
    past_cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor | None = None,
    *, axis: int = -2, mode: str = "linear",
) -> torch.Tensor:
    """Writes `update` into a KV cache along `axis`, from each batch row's write index."""
    if mode not in ("linear", "circular"):
        raise ValueError(f"TensorScatter mode must be 'linear' or 'circular', got {mode!r}")
    dim = norm_axis(axis, past_cache.dim())
    if dim == 0:
        raise ValueError("TensorScatter axis must not be the batch axis 0")
    batch, length = past_cache.shape[0], update.shape[dim]
    if write_indices is None:
        write_indices = torch.zeros(batch, dtype=torch.int64, device=past_cache.device)
    start = write_indices.to(torch.int64).reshape(batch, *([1] * (update.dim() - 1)))
    steps = torch.arange(length, device=past_cache.device).reshape(
        [length if i == dim else 1 for i in range(update.dim())])
    index = start + steps
    if mode == "circular":
        index = index % past_cache.shape[dim]
    return past_cache.scatter(dim, index.expand(update.shape), update.to(past_cache.dtype))
