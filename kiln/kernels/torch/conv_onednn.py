"""A CPU convolution tactic through oneDNN's fused primitive, as torch.compile's CPU path
calls it: the weights reordered once into oneDNN's blocked layout (for the input size of
the first call), the activation and the residual add done by the convolution as post-ops.
torch's plain conv2d reorders the weights on every call and runs the activation as a
second pass over the output; the tuner keeps whichever is faster per layer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.torch._onednn import POST_OPS, available
from kiln.ops.conv import pad_split, resolve_pads, split_pads
from kiln.ops.fused import activation_in_place
from kiln.ops.tensors import to_torch

PACKED_SIZES = 4  # input sizes whose reordered weights a layer keeps


@register_tactic
class ConvOneDNNFused(Tactic):
    name = "conv-onednn-fused"
    ops = (("kiln", "FusedConv"),)
    replaces_inputs = (1, 2)
    channels_last = True
    priority = 25
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        weight = layer.constant_inputs.get(1)
        if weight is None or weight.ndim != 4 or target.device.type != "cpu":
            return False
        if layer.inputs[2] is not None and 2 not in layer.constant_inputs:
            return False
        return (layer.attrs.get("activation", "") in POST_OPS
                and available("_convolution_pointwise") and layer.input_dtypes[:1] == ["fp32"])

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        tensors = {"weight": to_torch(layer.constant_inputs[1]).contiguous(
            memory_format=torch.channels_last)}
        if 2 in layer.constant_inputs:
            tensors["bias"] = to_torch(layer.constant_inputs[2])
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        weight, bias = tensors["weight"], tensors.get("bias")
        attrs = layer.attrs
        kernel = list(weight.shape[2:])
        strides = list(attrs.get("strides") or [1, 1])
        dilations = list(attrs.get("dilations") or [1, 1])
        group = attrs.get("group", 1)
        auto_pad, pads = attrs.get("auto_pad", "NOTSET"), attrs.get("pads")
        activation, params = attrs.get("activation", ""), attrs.get("activation_params") or []
        post, scalars_of, algorithm = POST_OPS[activation]
        scalars = scalars_of(params)
        after_residual = activation_in_place(activation, params)
        # oneDNN's layout depends on the input size: the last few sizes' reorders are kept
        packed: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        fixed = None
        if auto_pad in ("NOTSET", "VALID"):
            fixed = pad_split([0] * 4 if auto_pad == "VALID" or not pads else list(pads))

        def run(x, _w=None, _b=None, residual=None):
            if fixed is None:
                x, symmetric = split_pads(
                    x, resolve_pads(x, kernel, strides, dilations, pads, auto_pad))
            else:
                symmetric, extra = fixed
                if extra:
                    x = F.pad(x, extra)
            x = x.contiguous(memory_format=torch.channels_last)
            w = packed.get(tuple(x.shape))
            if w is None:
                w = packed[tuple(x.shape)] = torch.ops.mkldnn._reorder_convolution_weight(
                    weight, symmetric, strides, dilations, group, list(x.shape))
                if len(packed) > PACKED_SIZES:  # dynamic shapes: weights, not a copy per size
                    packed.popitem(last=False)
            else:
                packed.move_to_end(tuple(x.shape))
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, w, bias, symmetric, strides, dilations, group, post, scalars, algorithm)
            y = torch.ops.mkldnn._convolution_pointwise(
                x, w, bias, symmetric, strides, dilations, group, "none", [], None)
            y = y.add_(residual) if residual.shape == y.shape else y + residual
            return after_residual(y)

        return run
