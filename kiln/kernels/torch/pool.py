"""CPU max-pooling tactics: torch's max_pool, and the window as a running maximum over
shifted strided views, one spatial axis at a time (max is separable).

torch's CPU max_pool over NCHW tensors is slow at every size kiln meets (mtcnn-pnet's
2x2 pool over 10x177x177: 1.7 ms, where ORT takes 0.08): the separable form does
(KH - 1) + (KW - 1) vectorized elementwise maxima instead (0.25 ms there). Over NHWC
tensors torch's kernel is often the faster; the tuner times both per layer.
"""

from __future__ import annotations

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
    n = len(kernel)
    sizes = [pooled_size(x.shape[2 + i], kernel[i], strides[i], pads[i], pads[n + i], ceil,
                         dilations[i]) for i in range(n)]
    # the end pads the windows reach (ceil mode may reach past the given ones, or not use them)
    ends = [max(0, (sizes[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                - x.shape[2 + i] - pads[i]) for i in range(n)]
    if any(pads[:n]) or any(ends):
        x = explicit_pad(x, [*pads[:n], *ends], float("-inf"))
    result = x
    for i in range(n):
        result = _axis_max(result, 2 + i, kernel[i], strides[i], dilations[i], sizes[i])
    # a 1-wide window leaves a view of the input: the layer's output must be its own
    return result.clone() if result.data_ptr() == x.data_ptr() else result


def _axis_max(x: torch.Tensor, axis: int, kernel: int, stride: int, dilation: int,
              size: int) -> torch.Tensor:
    def tap(k: int) -> torch.Tensor:
        view = x.narrow(axis, k * dilation, (size - 1) * stride + 1)
        if stride == 1:
            return view
        index = [slice(None)] * x.dim()
        index[axis] = slice(None, None, stride)
        return view[tuple(index)]

    if kernel == 1:
        return tap(0)
    best = torch.maximum(tap(0), tap(1))
    for k in range(2, kernel):
        torch.maximum(best, tap(k), out=best)
    return best
