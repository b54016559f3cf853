"""A CPU convolution tactic as one matrix product: the input windows gathered (im2col,
torch's unfold) times the weights as [OC, C*KH*KW]. oneDNN's direct convolution is slow
for some shapes kiln meets, such as the [5, 1] windows of 1-D convolutions exported as 2-D
(magika: 184 ms there, one GEMM of the same work far less); the tuner keeps whichever is
faster per layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.conv import ConvBase, add_residual
from kiln.ops.conv import resolve_pads, split_pads
from kiln.ops.fused import activate


@register_tactic
class ConvIm2col(ConvBase):
    name = "conv-im2col"
    priority = 40
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return (target.device.type == "cpu" and super().supports(layer, target)
                and layer.constant_inputs[1].ndim == 4 and layer.attrs.get("group", 1) == 1)

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        tensors = super().prepare(layer, target)
        tensors["weight"] = tensors["weight"].contiguous()
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        kernel = list(tensors["weight"].shape[2:])
        weight = tensors["weight"].reshape(tensors["weight"].shape[0], -1)  # [OC, C*KH*KW]
        bias = tensors["bias"].reshape(-1, 1) if "bias" in tensors else None
        attrs = layer.attrs
        strides = attrs.get("strides") or [1, 1]
        dilations = attrs.get("dilations") or [1, 1]
        auto_pad, pads = attrs.get("auto_pad", "NOTSET"), attrs.get("pads")
        activation, params = attrs.get("activation", ""), attrs.get("activation_params")

        def run(x, _w=None, _b=None, residual=None):
            full = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
            x, symmetric = split_pads(x, full)
            batch, _, h, w = x.shape
            oh = (h + 2 * symmetric[0] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
            ow = (w + 2 * symmetric[1] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
            columns = F.unfold(x.contiguous(), kernel, dilations, symmetric, strides)
            y = torch.matmul(weight, columns)  # [B, OC, OH*OW]
            if bias is not None:
                y = y.add_(bias)
            y = y.reshape(batch, weight.shape[0], oh, ow)
            return activate(add_residual(y, residual), activation, params)

        return run
