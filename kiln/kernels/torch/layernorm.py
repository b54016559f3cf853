"""LayerNorm tactic for kiln.LayerNorm: the residual add, then torch's layer_norm in the
input's type (its CUDA kernel accumulates in fp32 for fp16 inputs)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.ops.fused import layer_norm_outputs, output_dtype


def quantize_attrs(attrs: dict) -> dict[str, Any]:
    """The quantize step a LayerNorm took over (fuse_layernorm_quantize), as keywords."""
    return {k: attrs[k] for k in ("quantize_scale", "quantize_zero_point", "quantize_to")
            if k in attrs}


@register_tactic
class LayerNormTorch(Tactic):
    name = "layernorm-torch"
    ops = (("kiln", "LayerNorm"),)
    priority = 10

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        # on the CPU, torch's half-precision layer_norm is slow and not fp32-accurate
        return target.device.type == "cuda" or layer.precision != "fp16"

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        axis = layer.attrs.get("axis", -1)
        eps = layer.attrs.get("epsilon", 1e-5)
        outputs = partial(layer_norm_outputs, num_outputs=len(layer.outputs),
                          **quantize_attrs(layer.attrs))
        y_type = output_dtype(layer.attrs.get("out_dtype"), None)

        def run(x, residual=None, scale=None, bias=None):
            summed = x if residual is None else x + residual
            dims = summed.shape[axis if axis >= 0 else summed.dim() + axis:]
            weight = None if scale is None else scale.to(summed.dtype)
            shift = None if bias is None else bias.to(summed.dtype)
            y = F.layer_norm(summed, dims, weight, shift, eps)
            return outputs(y if y_type is None else y.to(y_type), summed)

        return run
