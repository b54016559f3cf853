"""A CPU convolution tactic through kiln's AVX-512 GEMM (native/gemm.c) as an implicit
im2col: the input laid out channels-last and padded, each output pixel's row read from its
window in place (a tap per kernel position), the weights packed as [k * C, OC] panels, the
bias and ReLU or SiLU in the epilogue. The result is [N, *out, OC], handed on as a
channels-last view, as `conv-im2col-nhwc` does, which copies the windows into rows first.
On one core of the AMD EPYC machines kiln is measured on, attacut-c's k=9, d=2 layer (131
steps, 48 -> 196 channels) took 0.21 ms of GEMM against 0.24 for MKL's. Groups of one
only; the tuner keeps whichever tactic is fastest per layer. Offered where the kernel
builds; an engine that chose it runs the im2col tactic's torch GEMM where it cannot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.native import gemm
from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.conv import add_residual
from kiln.kernels.torch.conv_im2col_nhwc import ConvIm2colNHWC, padded_channels_last
from kiln.ops.conv import resolve_pads
from kiln.ops.fused import activate


@register_tactic
class ConvNative(ConvIm2colNHWC):
    name = "conv-native"
    priority = 44
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return super().supports(layer, target) and gemm.kernel() is not None

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        if gemm.kernel() is None:  # a plan from a machine that built the kernel
            return super().bind(layer, tensors, device)
        stored = tensors["weight"]  # [*k, C, OC]
        kernel = list(stored.shape[:-2])
        product = gemm.PackedGemm(stored.reshape(-1, stored.shape[-1]), tensors.get("bias"),
                                  layer.attrs.get("activation", ""))
        attrs = layer.attrs
        n = len(kernel)
        strides = list(attrs.get("strides") or [1] * n)
        dilations = list(attrs.get("dilations") or [1] * n)
        auto_pad, pads = attrs.get("auto_pad", "NOTSET"), attrs.get("pads")
        activation, params = attrs.get("activation", ""), attrs.get("activation_params")

        def run(x, _w=None, _b=None, residual=None):
            full = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
            last, out = padded_channels_last(x.float(), kernel, dilations, strides, full)
            step = last.stride()
            rows = gemm.offsets((x.shape[0], *out),
                                (step[0], *[step[1 + i] * strides[i] for i in range(n)]))
            taps = gemm.offsets(tuple(kernel), tuple(step[1 + i] * dilations[i] for i in range(n)))
            y = torch.empty((x.shape[0], *out, product.n), dtype=torch.float32)
            fuse = residual is None
            product(last, rows, taps, x.shape[1], y.view(-1, product.n), act=fuse)
            y = add_residual(y.movedim(-1, 1), residual)
            return y if fuse and product.fused else activate(y, activation, params)

        return run

