"""Reductions (ReduceSum, ReduceMean, ...) and ArgMax/ArgMin.

Axes come as an attribute before opset 18 (before 13 for ReduceSum) and as an input from
then on; an empty axes list reduces everything unless `noop_with_empty_axes` is set.
"""

from __future__ import annotations

import torch

from kiln.ops._common import axes as norm_axes
from kiln.ops._common import ints, narrow, widen
from kiln.ops.registry import register


def _sum(x, dims, keep):
    return torch.sum(x, dim=dims, keepdim=keep)


def _mean(x, dims, keep):
    return torch.mean(x, dim=dims, keepdim=keep)


def _max(x, dims, keep):
    if x.numel() == 0:
        return _empty_reduce(x, dims, keep, float("-inf"))
    return torch.amax(x, dim=dims, keepdim=keep)


def _min(x, dims, keep):
    if x.numel() == 0:
        return _empty_reduce(x, dims, keep, float("inf"))
    return torch.amin(x, dim=dims, keepdim=keep)


def _empty_reduce(x, dims, keep, fill):
    shape = [1 if i in dims else s for i, s in enumerate(x.shape)]
    if not keep:
        shape = [s for i, s in enumerate(x.shape) if i not in dims]
    if not x.is_floating_point():
        info = torch.iinfo(x.dtype)
        fill = info.min if fill < 0 else info.max
    return torch.full(shape, fill, dtype=x.dtype, device=x.device)


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keep)
    return x


def _l1(x, dims, keep):
    return torch.sum(torch.abs(x), dim=dims, keepdim=keep)


def _l2(x, dims, keep):
    return torch.sqrt(torch.sum(x * x, dim=dims, keepdim=keep))


def _log_sum(x, dims, keep):
    return torch.log(torch.sum(x, dim=dims, keepdim=keep))


def _log_sum_exp(x, dims, keep):
    if x.numel() == 0:
        return _empty_reduce(x, dims, keep, float("-inf"))
    return torch.logsumexp(x, dim=dims, keepdim=keep)


def _sum_square(x, dims, keep):
    return torch.sum(x * x, dim=dims, keepdim=keep)


_REDUCTIONS = {
    "ReduceSum": (_sum, 13),
    "ReduceMean": (_mean, 18),
    "ReduceMax": (_max, 18),
    "ReduceMin": (_min, 18),
    "ReduceProd": (_prod, 18),
    "ReduceL1": (_l1, 18),
    "ReduceL2": (_l2, 18),
    "ReduceLogSum": (_log_sum, 18),
    "ReduceLogSumExp": (_log_sum_exp, 18),
    "ReduceSumSquare": (_sum_square, 18),
}


def _reduce(fn, x: torch.Tensor, axes: list[int], keepdims: int, noop: int) -> torch.Tensor:
    if not axes:
        if noop:
            return x
        axes = list(range(x.dim()))
    dims = sorted(set(norm_axes(axes, x.dim())))
    if x.dim() == 0:
        return x
    dtype, (work,) = widen(x)
    if work.dtype == torch.bool:
        # uint8 keeps an empty max/min False/True; sums count in int64
        work = work.to(torch.uint8 if fn in (_max, _min) else torch.int64)
    mean_like = fn in (_mean, _l2, _log_sum, _log_sum_exp)
    if mean_like and not work.is_floating_point():
        return fn(work.to(torch.float64), dims, bool(keepdims)).to(dtype)
    return narrow(fn(work, dims, bool(keepdims)), dtype)


def _register_reduction(op_type: str, fn, axes_input_since: int) -> None:
    def with_attr(x: torch.Tensor, *, axes: list[int] | None = None, keepdims: int = 1):
        return _reduce(fn, x, list(axes or []), keepdims, 0)

    def with_input(x: torch.Tensor, axes: torch.Tensor | None = None, *, keepdims: int = 1,
                   noop_with_empty_axes: int = 0):
        return _reduce(fn, x, ints(axes), keepdims, noop_with_empty_axes)

    register(op_type, 1)(with_attr)
    register(op_type, axes_input_since, host_inputs=(1,))(with_input)


for _name, (_fn, _since) in _REDUCTIONS.items():
    _register_reduction(_name, _fn, _since)


def _arg(fn, x: torch.Tensor, axis: int, keepdims: int, select_last_index: int) -> torch.Tensor:
    _, (work,) = widen(x)
    if work.dtype == torch.bool:
        work = work.to(torch.uint8)
    if select_last_index:
        flipped = torch.flip(work, dims=[axis])
        index = fn(flipped, dim=axis, keepdim=bool(keepdims))
        return (work.shape[axis] - 1 - index).to(torch.int64)
    return fn(work, dim=axis, keepdim=bool(keepdims)).to(torch.int64)


@register("ArgMax", 1)
def arg_max(x: torch.Tensor, *, axis: int = 0, keepdims: int = 1,
            select_last_index: int = 0) -> torch.Tensor:
    return _arg(torch.argmax, x, axis, keepdims, select_last_index)


@register("ArgMin", 1)
def arg_min(x: torch.Tensor, *, axis: int = 0, keepdims: int = 1,
            select_last_index: int = 0) -> torch.Tensor:
    return _arg(torch.argmin, x, axis, keepdims, select_last_index)
