"""A CPU depthwise convolution (stride 1, one filter per channel) through kiln's AVX-512
kernel (native/depthwise.c), on NCHW planes: fsmn-vad's 128-channel 20x1 layers over 117
steps took 0.047-0.080 ms a call through oneDNN, most of it the primitive's setup. A layer
over one column (W = 1, a 1-D convolution along H) runs its planes as rows, so the sixteen
lanes run along H. Offered where the kernel builds; an engine that chose it runs torch's
grouped convolution where it cannot."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.native import function
from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.conv import ConvBase, add_residual
from kiln.kernels.torch.conv_im2col_nhwc import window_attrs
from kiln.ops.conv import resolve_pads
from kiln.ops.fused import activate


def kernel() -> Callable[..., None] | None:
    return function("depthwise", "kiln_depthwise", *(ctypes.c_void_p,) * 4,
                    *(ctypes.c_int64,) * 12)


@register_tactic
class ConvDepthwiseNative(ConvBase):
    name = "conv-depthwise-native"
    priority = 47
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        w = layer.constant_inputs.get(1)
        attrs = layer.attrs
        return (target.device.type == "cpu" and super().supports(layer, target)
                and w.ndim == 4 and w.shape[1] == 1 and attrs.get("group", 1) == w.shape[0] > 1
                and all(s == 1 for s in attrs.get("strides") or [1, 1])
                and layer.input_dtypes[:1] == ["fp32"] and kernel() is not None)

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        run_kernel = kernel()
        if run_kernel is None:  # a plan from a machine that built the kernel: torch's conv
            return super().bind(layer, tensors, device)
        weight, bias = tensors["weight"], tensors.get("bias")  # [C, 1, KH, KW]
        kh, kw = weight.shape[2:]
        _, dilations, auto_pad, pads, activation, params = window_attrs(layer, 2)
        taps = weight.reshape(weight.shape[0], kh, kw).contiguous()
        along_h = taps.transpose(1, 2).contiguous()  # for one-column planes run as rows

        def run(x, _w=None, _b=None, residual=None):
            full = resolve_pads(x, [kh, kw], [1, 1], dilations, pads, auto_pad)
            x = x.contiguous()
            n, c, h, w = x.shape
            oh = h + full[0] + full[2] - dilations[0] * (kh - 1)
            ow = w + full[1] + full[3] - dilations[1] * (kw - 1)
            y = torch.empty((n, c, oh, ow), dtype=x.dtype)
            geometry = (h, w, kh, kw, full[0], full[1], dilations[0], dilations[1], oh, ow)
            plane_taps = taps
            if w == 1 and kw == 1 and ow == 1:  # a column: its H as the row
                geometry = (1, h, 1, kh, 0, full[0], 1, dilations[0], 1, oh)
                plane_taps = along_h
            run_kernel(x.data_ptr(), plane_taps.data_ptr(),
                       bias.data_ptr() if bias is not None else None, y.data_ptr(), n * c, c,
                       *geometry)
            return activate(add_residual(y, residual), activation, params)

        return run
