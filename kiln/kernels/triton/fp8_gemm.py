"""fp8-scaled-mm-triton: cuBLASLt's FP8 GEMM (torch._scaled_mm, per-tensor scales and bias
fused) followed by kiln's Triton epilogue in one pass, for FP8 dense layers with an
activation or a quantized output (BERT's first feed-forward layer: GELU, then FP8 for the
second). torch's chain for the same epilogue makes several passes over the output in
float32, more than the FP8 GEMM saves over FP16.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.quantized import Fp8ScaledMM, needs_epilogue
from kiln.kernels.triton import usable_on
from kiln.kernels.triton.int8 import epilogue_attrs, kernels


@register_tactic
class Fp8ScaledMMTriton(Fp8ScaledMM):
    name = "fp8-scaled-mm-triton"
    priority = 29

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return usable_on(target.device.type) and needs_epilogue(layer.attrs) \
            and super().supports(layer, target)

    def finish(self, layer: LayerSpec, n: int, device: torch.device
               ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        # the product arrives in fp16 unless bf16 is asked for, as in the torch tactic
        epi = {"out_dtype": "fp16", **epilogue_attrs(layer)}
        return partial(kernels().rows_epilogue, ones=torch.ones(n, device=device), epi=epi)
