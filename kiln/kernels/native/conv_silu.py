"""oneDNN's convolution with SiLU as kiln's AVX-512 pass after it (native/silu.c) instead of
oneDNN's swish post-op: a 1x1 32->32 layer at 80x80 (YOLOv8's) takes 0.151 ms plain, 0.242
with the post-op, 0.199 with this pass (one thread, the AMD EPYC machines kiln is measured
on). Offered where the kernel builds; an engine that chose it runs torch's silu where it
cannot (the same values within float32 rounding)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kiln.kernels.native import silu as native_silu
from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.conv_onednn import ConvOneDNNFused
from kiln.ops.fused import activation_in_place


@register_tactic
class ConvOneDNNNativeSiLU(ConvOneDNNFused):
    name = "conv-onednn-native-silu"
    priority = 26

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return (layer.attrs.get("activation") == "SiLU" and super().supports(layer, target)
                and native_silu.in_place() is not None)

    def late_activation(self, layer: LayerSpec) -> Callable[[torch.Tensor], torch.Tensor]:
        return native_silu.in_place() or activation_in_place("SiLU")
