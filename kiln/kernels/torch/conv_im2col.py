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

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.ops.conv import resolve_pads, split_pads
from kiln.ops.fused import activate
from kiln.ops.tensors import to_torch


@register_tactic
class ConvIm2col(Tactic):
    name = "conv-im2col"
    ops = (("kiln", "FusedConv"),)
    replaces_inputs = (1, 2)
    priority = 40
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        weight = layer.constant_inputs.get(1)
        if weight is None or weight.ndim != 4 or target.device.type != "cpu":
            return False
        if layer.inputs[2] is not None and 2 not in layer.constant_inputs:
            return False
        return layer.attrs.get("group", 1) == 1

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        tensors = {"weight": to_torch(layer.constant_inputs[1]).contiguous()}
        if 2 in layer.constant_inputs:
            tensors["bias"] = to_torch(layer.constant_inputs[2])
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
            if residual is not None:
                y = y.add_(residual) if residual.shape == y.shape else y + residual
            return activate(y, activation, params)

        return run
