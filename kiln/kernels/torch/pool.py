"""CPU max-pooling tactics: torch's max_pool, and the window as a running maximum over
shifted strided views, one spatial axis at a time (max is separable).

torch's CPU max_pool over NCHW tensors is slow at every size kiln meets (mtcnn-pnet's
2x2 pool over 10x177x177: 1.7 ms, where ORT takes 0.08): the separable form does
(KH - 1) + (KW - 1) vectorized elementwise maxima instead (0.25 ms there). Over NHWC
tensors torch's kernel is often the faster; the tuner times both per layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.ops.conv import resolve_pads
from kiln.ops.pool import explicit_pad, max_pool, pooled_size


class _MaxPoolCPU(Tactic):
    ops = (("", "MaxPool"),)

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return (target.device.type == "cpu"
                and len([o for o in layer.outputs if o is not None]) == 1
                and layer.input_dtypes[:1] in (["fp32"], ["fp16"], ["bf16"], ["fp64"]))


@register_tactic
class MaxPoolTorch(_MaxPoolCPU):
    name = "maxpool-torch"
    priority = 30

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = dict(layer.attrs)
        return lambda x: max_pool(x, **attrs)


@register_tactic
class MaxPoolSeparable(_MaxPoolCPU):
    name = "maxpool-separable"
    priority = 20  # without timing: never far behind torch, often far ahead

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = layer.attrs
        kernel = list(attrs["kernel_shape"])
        n = len(kernel)
        strides = list(attrs.get("strides") or [1] * n)
        dilations = list(attrs.get("dilations") or [1] * n)
        auto_pad, pads = attrs.get("auto_pad", "NOTSET"), attrs.get("pads")
        ceil = bool(attrs.get("ceil_mode", 0))

        def run(x: torch.Tensor) -> torch.Tensor:
            full = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
            return separable_max_pool(x, kernel, strides, dilations, list(full), ceil)

        return run


def separable_max_pool(x: torch.Tensor, kernel: list[int], strides: list[int],
                       dilations: list[int], pads: list[int], ceil: bool) -> torch.Tensor:
    pad, axes = _pool_plan(tuple(x.shape), tuple(kernel), tuple(strides), tuple(dilations),
                           tuple(pads), ceil)
    if pad is not None:
        x = explicit_pad(x, list(pad), float("-inf"))
    result = x
    for axis, stride_index, taps in axes:
        result = _axis_max(result, axis, stride_index, taps)
    # a 1-wide window leaves a view of the input: the layer's output must be its own
    return result.clone() if result.data_ptr() == x.data_ptr() else result


# per axis: (axis, index taking every stride-th element or None, taps); a tap is
# (start, length) of its view, and the span (lo, length) of outputs it reaches, or None
Tap = tuple[int, int, tuple[int, int] | None]


@functools.lru_cache(maxsize=256)
def _pool_plan(shape: tuple, kernel: tuple, strides: tuple, dilations: tuple, pads: tuple,
               ceil: bool) -> tuple[tuple | None, list]:
    """The views each run takes, worked out once per input shape (the layer runs often and
    is short: Python's share of it counts)."""
    n = len(kernel)
    sizes = [pooled_size(shape[2 + i], kernel[i], strides[i], pads[i], pads[n + i], ceil,
                         dilations[i]) for i in range(n)]
    spans = [[_tap_span(k * dilations[i] - pads[i], shape[2 + i], strides[i], sizes[i])
              for k in range(kernel[i])] for i in range(n)]
    pad, begins = None, pads[:n]
    # Taps reaching into the padding cover part of the outputs and update that part in
    # place, so the input is not copied into a padded tensor (a third of mtcnn-onet's
    # pooling time). That pays where two taps cover every output (their maximum makes the
    # result); otherwise (YOLO's 5x5 stride-1 windows) one -inf padded copy for all axes
    # costs less than a copy per axis.
    if not all(kernel[i] == 1 or [s == (0, sizes[i]) for s in spans[i]].count(True) >= 2
               for i in range(n)):
        ends = [max(0, (sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                    - shape[2 + i] - pads[i]) for i in range(n)]
        pad, begins = (*pads[:n], *ends), [0] * n
        spans = [[(0, sizes[i])] * kernel[i] for i in range(n)]
    axes = []
    for i in range(n):
        taps = []
        for k, (lo, hi) in enumerate(spans[i]):
            if hi > lo:
                start = lo * strides[i] + k * dilations[i] - begins[i]
                taps.append((start, (hi - lo - 1) * strides[i] + 1,
                             None if (lo, hi) == (0, sizes[i]) else (lo, hi - lo)))
        taps.sort(key=lambda tap: tap[2] is not None)  # the whole-span taps first
        every = None
        if strides[i] != 1:
            every = tuple(slice(None, None, strides[i]) if d == 2 + i else slice(None)
                          for d in range(len(shape)))
        axes.append((2 + i, every, taps))
    return pad, axes


def _tap_span(offset: int, length: int, stride: int, size: int) -> tuple[int, int]:
    """The outputs [lo, hi) whose input index o * stride + offset lies inside the input."""
    lo = max(0, -(offset // stride))  # ceil(-offset / stride)
    hi = min(size, (length - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


def _axis_max(x: torch.Tensor, axis: int, every: tuple | None, taps: list[Tap]) -> torch.Tensor:
    """The running maximum along one axis over the taps' strided views."""
    def view(start: int, length: int) -> torch.Tensor:
        v = x.narrow(axis, start, length)
        return v if every is None else v[every]

    if len(taps) == 1:
        return view(*taps[0][:2])
    best = torch.maximum(view(*taps[0][:2]), view(*taps[1][:2]))
    for start, length, span in taps[2:]:
        part = best if span is None else best.narrow(axis, *span)
        torch.maximum(part, view(start, length), out=part)
    return best
