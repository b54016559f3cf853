"""A CPU convolution tactic as one matrix product over channels-last windows: the input
laid out [N, *spatial, C], padded, its windows taken as a strided view [N, *out, *k, C]
and gathered in one copy into rows of length k*C, times the weights as [k*C, OC]. The
result is [N, *out, OC]: the output in channels-last order, handed on as that view.

oneDNN is slow for dilated 1-D convolutions (attacut's k=5, d=3 and k=9, d=2 over 131
steps: 0.37 and 0.53 ms, as one GEMM 0.16 and 0.28), and the NCHW unfold of
`conv-im2col` gathers along the slow axis. The tuner keeps whichever is fastest per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.conv import ConvBase, add_residual
from kiln.ops.conv import resolve_pads
from kiln.ops.fused import activate


@register_tactic
class ConvIm2colNHWC(ConvBase):
    name = "conv-im2col-nhwc"
    priority = 45
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return (target.device.type == "cpu" and super().supports(layer, target)
                and layer.constant_inputs[1].ndim in (3, 4) and layer.attrs.get("group", 1) == 1
                and layer.input_dtypes[:1] == ["fp32"])

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        tensors = super().prepare(layer, target)
        weight = tensors["weight"]  # [OC, C, *k]
        tensors["weight"] = weight.permute([*range(2, weight.dim()), 1, 0]).contiguous()
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        stored, bias = tensors["weight"], tensors.get("bias")  # [*k, C, OC]
        kernel = list(stored.shape[:-2])  # ONNX lets kernel_shape be left out
        weight = stored.reshape(-1, stored.shape[-1])
        n = len(kernel)
        strides, dilations, auto_pad, pads, activation, params = window_attrs(layer, n)

        def run(x, _w=None, _b=None, residual=None):
            full = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
            rows, out = _windows(x, kernel, strides, dilations, full)
            y = torch.addmm(bias, rows, weight) if bias is not None else rows @ weight
            y = y.view(x.shape[0], *out, weight.shape[1]).movedim(-1, 1)
            return activate(add_residual(y, residual), activation, params)

        return run


def window_attrs(layer: LayerSpec, n: int) -> tuple:
    """A convolution layer's strides, dilations, auto_pad, pads, activation and its
    parameters, over n spatial dims (ONNX's defaults where left out)."""
    attrs = layer.attrs
    return (list(attrs.get("strides") or [1] * n), list(attrs.get("dilations") or [1] * n),
            attrs.get("auto_pad", "NOTSET"), attrs.get("pads"), attrs.get("activation", ""),
            attrs.get("activation_params"))


def _windows(x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int],
             pads: list[int]) -> tuple[torch.Tensor, list[int]]:
    """The input's windows as rows [N * prod(out), prod(k) * C], and the output's size."""
    n = len(kernel)
    last, out = padded_channels_last(x, kernel, dilations, strides, pads)
    step = last.stride()[1:-1]
    windows = last.as_strided(
        (x.shape[0], *out, *kernel, x.shape[1]),
        (last.stride(0), *[step[i] * strides[i] for i in range(n)],
         *[step[i] * dilations[i] for i in range(n)], 1))
    return windows.reshape(x.shape[0] * math.prod(out), -1), out


def padded_channels_last(x: torch.Tensor, kernel: list[int], dilations: list[int],
                         strides: list[int], pads: list[int]) -> tuple[torch.Tensor, list[int]]:
    """x as [N, *spatial, C], dense and padded, and the convolution's output size."""
    n = len(kernel)
    last = x.movedim(1, -1).contiguous()  # a view already when x is channels-last
    spec = [0, 0]  # F.pad lists the last axis first: C unpadded, then spatial reversed
    for i in reversed(range(n)):
        spec += [pads[i], pads[n + i]]
    if any(spec):
        last = F.pad(last, spec)
    sizes = last.shape[1:-1]
    out = [(sizes[i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(n)]
    return last, out
