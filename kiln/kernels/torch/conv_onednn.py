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

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch._onednn import POST_OPS, available
from kiln.kernels.torch.conv import ConvBase, add_residual
from kiln.ops.conv import padder
from kiln.ops.fused import activation_in_place

PACKED_SIZES = 4  # input sizes whose reordered weights a layer keeps


@register_tactic
class ConvOneDNNFused(ConvBase):
    name = "conv-onednn-fused"
    channels_last = True
    priority = 25
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return (target.device.type == "cpu" and super().supports(layer, target)
                and layer.attrs.get("activation", "") in POST_OPS
                and available("_convolution_pointwise") and layer.input_dtypes[:1] == ["fp32"])

    def late_activation(self, layer: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """An in-place activation to run after the convolution instead of oneDNN's post-op
        (None: the post-op)."""
        return None

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
        late = self.late_activation(layer)
        post, scalars_of, algorithm = POST_OPS["" if late else activation]
        scalars = scalars_of(params)
        after_residual = late or activation_in_place(activation, params)
        # oneDNN's layout depends on the input size: the last few sizes' reorders are kept
        packed: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        pad = padder(kernel, strides, dilations, pads, auto_pad)

        def run(x, _w=None, _b=None, residual=None):
            x, symmetric = pad(x)
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
                y = torch.ops.mkldnn._convolution_pointwise(
                    x, w, bias, symmetric, strides, dilations, group, post, scalars, algorithm)
                return late(y) if late else y
            y = torch.ops.mkldnn._convolution_pointwise(
                x, w, bias, symmetric, strides, dilations, group, "none", [], None)
            return after_residual(add_residual(y, residual))

        return run
