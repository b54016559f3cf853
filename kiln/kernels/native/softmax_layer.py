"""A CPU Softmax layer along its last axis through kiln's AVX-512 kernel (softmax.c), into
a new tensor: e^x by a polynomial where torch's exp costs about 0.8 ns a float (fsmn-vad's
[1, 98, 248] output softmax: 16.6 us in torch). Offered where the kernel builds; an engine
that chose it runs torch's softmax where it cannot (the same values within float32
rounding)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.native import softmax as native_softmax
from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic


@register_tactic
class SoftmaxNative(Tactic):
    name = "softmax-native"
    ops = (("", "Softmax"),)
    priority = 20
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        axis = layer.attrs.get("axis", -1 if layer.opset >= 13 else 1)
        shapes = layer.input_shapes or [None]
        last = axis == -1 or (shapes[0] is not None and axis == len(shapes[0]) - 1)
        return (target.device.type == "cpu" and layer.input_dtypes[:1] == ["fp32"] and last
                and native_softmax.into_new() is not None)

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        return native_softmax.into_new() or (lambda x: torch.softmax(x, dim=-1))
