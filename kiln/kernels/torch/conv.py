"""Convolution tactics for kiln.FusedConv: NCHW, channels-last (NHWC), and cuDNN's fused
convolution + bias + (residual add) + ReLU kernels.

Channels-last is a property of the tensors, not of the graph: a channels-last convolution
returns a channels-last tensor, element-wise ops keep the layout, so a whole CNN runs in
NHWC after its first convolution converts the input, and no transposes appear anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.ops.conv import padder
from kiln.ops.fused import activation_in_place
from kiln.ops.tensors import to_torch

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def add_residual(y: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """The convolution's output plus the fused residual: in place unless it broadcasts."""
    if residual is None:
        return y
    return y.add_(residual) if residual.shape == y.shape else y + residual


class ConvBase(Tactic):
    ops = (("kiln", "FusedConv"),)
    replaces_inputs = (1, 2)

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        weight = layer.constant_inputs.get(1)
        if weight is None or (layer.inputs[2] is not None and 2 not in layer.constant_inputs):
            return False
        return not self.channels_last or weight.ndim == 4

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        weight = to_torch(layer.constant_inputs[1])
        if self.channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
        tensors = {"weight": weight}
        if 2 in layer.constant_inputs:
            tensors["bias"] = to_torch(layer.constant_inputs[2])
        return tensors

    def weights(self, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """The prepared weight and bias. A channels-last tactic's weight goes back to
        channels-last memory once, at bind: a saved plan stores tensors contiguous, and an
        NCHW weight beside an NHWC input makes torch convert it on every call (magika's
        first convolution ran 99 ms in an engine where the tuner had timed it at 72)."""
        weight = tensors["weight"]
        if self.channels_last and weight.dim() == 4:
            weight = weight.contiguous(memory_format=torch.channels_last)
        return weight, tensors.get("bias")

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        weight, bias = self.weights(tensors)
        attrs = layer.attrs
        n = weight.dim() - 2
        kernel = attrs.get("kernel_shape") or list(weight.shape[2:])
        strides = attrs.get("strides") or [1] * n
        dilations = attrs.get("dilations") or [1] * n
        group = attrs.get("group", 1)
        auto_pad, pads = attrs.get("auto_pad", "NOTSET"), attrs.get("pads")
        activation = attrs.get("activation", "")
        act = activation_in_place(activation, attrs.get("activation_params"))
        conv = _CONV[n]
        memory_format = torch.channels_last if self.channels_last else None
        pad = padder(kernel, strides, dilations, pads, auto_pad)

        def run(x, _w=None, _b=None, residual=None):
            x, symmetric = pad(x)
            if memory_format is not None:
                x = x.contiguous(memory_format=memory_format)
            y = conv(x, weight, bias, strides, symmetric, dilations, group)
            return act(add_residual(y, residual))

        return run


@register_tactic
class ConvNCHW(ConvBase):
    """Plain NCHW: for 1-D/3-D convolutions, and a candidate on the CPU. On CUDA a 4-D
    convolution always runs channels-last: tensor cores want it, and timing one layer
    in NCHW against its NHWC neighbours would ignore the reorders it forces on them."""

    name = "conv-nchw"
    priority = 20

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        weight = layer.constant_inputs.get(1)
        return super().supports(layer, target) and (
            target.device.type == "cpu" or weight.ndim != 4)


@register_tactic
class ConvNHWC(ConvBase):
    name = "conv-nhwc"
    channels_last = True
    priority = 10


@register_tactic
class CudnnFusedConvRelu(ConvBase):
    """cuDNN's conv+bias(+add)+ReLU in one kernel (torch.cudnn_convolution_[add_]relu)."""

    name = "cudnn-fused-relu"
    channels_last = True
    priority = 30
    min_level = 1

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        attrs = layer.attrs
        pads = attrs.get("pads") or [0, 0, 0, 0]
        return (target.device.type == "cuda" and super().supports(layer, target)
                and attrs.get("activation", "") in ("", "Relu")
                and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
                and pads[:2] == pads[2:] and hasattr(torch, "cudnn_convolution_relu"))

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        weight, bias = self.weights(tensors)
        attrs = layer.attrs
        stride = attrs.get("strides") or [1, 1]
        padding = (attrs.get("pads") or [0, 0, 0, 0])[:2]
        dilation = attrs.get("dilations") or [1, 1]
        group = attrs.get("group", 1)
        relu = attrs.get("activation", "") == "Relu"
        fallback = super().bind(layer, {**tensors, "weight": weight}, device)

        def run(x, _w=None, _b=None, residual=None):
            if not relu or (residual is not None and residual.dim() != 4):
                return fallback(x, None, None, residual)
            x = x.contiguous(memory_format=torch.channels_last)
            if residual is None:
                return torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation,
                                                    group)
            z = residual.contiguous(memory_format=torch.channels_last)
            return torch.cudnn_convolution_add_relu(x, weight, z, 1.0, bias, stride, padding,
                                                    dilation, group)

        return run
