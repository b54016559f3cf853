"""QConv tactics for patch embeddings (window == stride: a vision transformer's 16x16/16
over 3 channels): the windows reordered into rows [B*OH*OW, C*P*Q] in one int8 copy, then
the 2-D TMA GEMM with its epilogue (kiln/kernels/torch/conv_patches.py does the same in
float). The gathering kernel, the only other INT8 tactic for such a layer (its 3 channels
fit neither the TMA convolution's channel blocks nor the stride-2 space-to-depth one),
took 0.167 ms for ViT-B/16's at batch 64 (H100) for 14.8 GOP, this 0.056, half of it the
reordering copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.conv_patches import is_patch_embedding, patch_rows
from kiln.kernels.torch.quantized import epilogue_tensors
from kiln.kernels.triton.int8 import (
    TMA_CONFIGS,
    TMA_LEVELS,
    _tma_ready,
    _TritonConv,
    epilogue_attrs,
    kernels_tma,
)
from kiln.ops.tensors import to_torch


class _TritonConvPatches(_TritonConv):
    def supports(self, layer: LayerSpec, target: Target) -> bool:
        if not super().supports(layer, target) or not is_patch_embedding(layer):
            return False
        _, c, p, q = layer.constant_inputs[1].shape
        return _tma_ready(layer, target, "x_zero_point") and (c * p * q) % 16 == 0

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        w = to_torch(layer.constant_inputs[1])  # [OC, C, P, Q]: rows in patch_rows' order
        tensors = epilogue_tensors(layer)
        tensors["weight"] = w.reshape(w.shape[0], -1).contiguous()
        tensors["window"] = torch.tensor(w.shape[2:], dtype=torch.int64)
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        p, q = (int(v) for v in tensors["window"].tolist())
        weight, scales, bias = tensors["weight"], tensors["scales"], tensors.get("bias")
        oc = weight.shape[0]
        epi, config, k = epilogue_attrs(layer), self.config, kernels_tma()

        def run(x, _w=None, residual=None):
            b, _, h, w = x.shape
            rows = None
            if residual is not None:  # as rows [B*OH*OW, OC], channels innermost
                rows = residual.expand(b, oc, h // p, w // q).permute(0, 2, 3, 1)
                rows = rows.reshape(-1, oc).contiguous()
            a = patch_rows(x, p, q)
            if a.stride(0) % 16 or a.data_ptr() % 16:  # TMA rows start on 16-byte boundaries
                a = a.contiguous()
            y = k.qgemm_tma(a, weight, scales, bias, epi, config, rows)
            return y.reshape(b, h // p, w // q, oc).permute(0, 3, 1, 2)

        return run


def _register() -> None:
    for index, key in enumerate(("t3", "t4", "t6")):
        register_tactic(type(f"TritonQConvPatches_{key}", (_TritonConvPatches,), {
            "name": f"int8-triton-conv-patches-{key}", "config": TMA_CONFIGS[key],
            "priority": 60 + index, "min_level": max(1, TMA_LEVELS[key])}))


_register()
