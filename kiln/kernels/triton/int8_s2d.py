"""QConv tactics for stride-2 layers over a few channels (an RGB stem): the input unfolded
by space to depth into whole channel blocks, then the TMA convolution
(kiln/kernels/triton/_int8_s2d.py). The gathering kernel, the only other INT8 tactic for
such a layer, ran ResNet-50's 7x7/2 stem at batch 64 in 0.64 ms against cuDNN FP16's 0.19,
so the precision choice had kept the stem in FP16; this one takes 0.158 against 0.229
(H100, one run), half of it the unfold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.quantized import epilogue_tensors
from kiln.kernels.triton.int8 import _tma_ready, _TritonConv, epilogue_attrs
from kiln.ops.conv import resolve_pads
from kiln.ops.tensors import to_torch

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): K blocks of 64, so a stem over 3 channels
# pads 48 to 64 channels per tap, not to 128
S2D_CONFIGS = {"128x64": (128, 64, 64, 4, 4), "256x64": (256, 64, 64, 8, 3),
               "128x128": (128, 128, 64, 8, 4)}
S2D_LEVELS = {"128x64": 0, "256x64": 2, "128x128": 4}
MAX_CHANNELS = 128  # of u (CP): beyond, the layer is wide enough for the plain kernels


def s2d_kernels():
    from kiln.kernels.triton import _int8_s2d

    return _int8_s2d


class _TritonConvS2D(_TritonConv):
    def supports(self, layer: LayerSpec, target: Target) -> bool:
        if not super().supports(layer, target) or not _tma_ready(layer, target, "x_zero_point"):
            return False
        attrs = layer.attrs
        _, c, kh, kw = layer.constant_inputs[1].shape
        return (tuple(attrs.get("strides") or (1, 1)) == (2, 2)
                and tuple(attrs.get("dilations") or (1, 1)) == (1, 1)
                and kh > 1 and kw > 1 and s2d_kernels().real_channels(c, kw) <= MAX_CHANNELS)

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        w = to_torch(layer.constant_inputs[1])  # [OC, C, KH, KW]
        tensors = epilogue_tensors(layer)
        tensors["weight"] = s2d_kernels().pack_weights(w, self.config[2])
        tensors["geometry"] = torch.tensor(w.shape[1:], dtype=torch.int64)  # C, KH, KW
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = layer.attrs
        _, kh, kw = (int(v) for v in tensors["geometry"].tolist())
        weight, scales, bias = tensors["weight"], tensors["scales"], tensors.get("bias")
        pads, auto_pad = attrs.get("pads"), attrs.get("auto_pad", "NOTSET")
        epi, config, k = epilogue_attrs(layer), self.config, s2d_kernels()

        def run(x, _w=None, residual=None):
            full = resolve_pads(x, (kh, kw), (2, 2), (1, 1), pads, auto_pad)
            return k.qconv2d_s2d(x, weight, (kh, kw), tuple(full[:4]), scales, bias, epi,
                                 config, residual)

        return run


def _register() -> None:
    for index, (key, config) in enumerate(S2D_CONFIGS.items()):
        register_tactic(type(f"TritonQConvS2D_{key}", (_TritonConvS2D,), {
            "name": f"int8-triton-conv-s2d-{key}", "config": config,
            "priority": 5 + index, "min_level": S2D_LEVELS[key]}))


_register()
