"""attention-explicit with kiln's AVX-512 softmax (kernels/native/softmax.c): khmersm's
[6, 187, 187] scores in 0.085 ms against torch's 0.147 on one thread of the AMD EPYC
machines kiln is measured on. Offered where the kernel builds; an engine that chose it
runs torch's softmax where it cannot (the same values within float32 rounding)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kiln.kernels.native import softmax as native_softmax
from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.attention import AttentionExplicitCPU


@register_tactic
class AttentionExplicitNative(AttentionExplicitCPU):
    name = "attention-explicit-native"
    priority = 16

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return super().supports(layer, target) and native_softmax.in_place() is not None

    def softmax(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return native_softmax.in_place() or super().softmax()

    def masked_softmax(self) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
        """An additive mask that broadcasts over the query rows (a key padding mask) is added
        inside the softmax's own passes (khmersm: 23 us a layer less); others as torch's."""
        fused, plain = native_softmax.masked_in_place(), super().masked_softmax()
        if fused is None:
            return plain
        return lambda scores, mask: fused(scores, mask) if mask is not None and (
            mask.dtype == scores.dtype) else plain(scores, mask)
