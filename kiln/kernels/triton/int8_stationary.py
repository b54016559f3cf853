"""QGemm and 1x1 QConv tactics for short K (up to 256): the weight block stays in shared
memory while each program walks several row blocks, their loads pipelined behind the
epilogues (kiln/kernels/triton/_int8_stationary.py). Timed beside the plain TMA tiles,
which make one load, one product and one epilogue per program at these depths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.triton.int8 import _tma_ready, _TritonConv, _TritonGemm, has_residual

# (BLOCK_M, BLOCK_N, row blocks per program, warps, stages)
# H100, batch 64, ms (the plain TMA t1 tile beside them): 1x1 64->256 at 56x56 0.040 and
# 0.042 (t1 0.050), 256->64 0.031 and 0.026 (0.031); with an int8 residual no gain (0.063
# and 0.065 against 0.063). Wider column tiles (128, 256) lost on every layer.
STATIONARY_CONFIGS = {"128x64x8": (128, 64, 8, 4, 3), "64x64x8": (64, 64, 8, 4, 3)}
STATIONARY_LEVELS = {"128x64x8": 3, "64x64x8": 3}
# ... with the residual tile read and the output tile written by TMA (a sixth field:
# True): for 1x1 layers with a residual, whose loads by pointer left ResNet-50's 64->256
# layers at 56x56 at 0.061 ms for about 0.035 of memory traffic
STATIONARY_IO_CONFIGS = {f"{key}s": (*config, True) for key, config in
                         STATIONARY_CONFIGS.items()}


def stationary_kernels():
    from kiln.kernels.triton import _int8_stationary

    return _int8_stationary


def _short(layer: LayerSpec, target: Target, zero_point: str) -> bool:
    """K fits one box and the zero point is 0."""
    return (stationary_kernels().fits(layer.constant_inputs[1].shape[1])
            and _tma_ready(layer, target, zero_point))


class _TritonGemmStationary(_TritonGemm):
    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return super().supports(layer, target) and _short(layer, target, "a_zero_point")

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        k, config = stationary_kernels(), self.config

        def launch(rows):
            if rows.stride(-1) != 1 or rows.stride(0) % 16 or rows.data_ptr() % 16:
                rows = rows.contiguous()  # TMA rows start on 16-byte boundaries
            return k.qgemm_stationary(rows, weight, scales, bias, epi, config)

        return launch


class _TritonConvStationary(_TritonConv):
    """1x1 stride-1 unpadded layers, as the GEMM over their channels-last rows."""

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        attrs = layer.attrs
        w = layer.constant_inputs.get(1)
        return (super().supports(layer, target) and tuple(w.shape[2:]) == (1, 1)
                and tuple(attrs.get("strides") or (1, 1)) == (1, 1)
                and not any(attrs.get("pads") or ())
                and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
                and _short(layer, target, "x_zero_point"))

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        k, config = stationary_kernels(), self.config

        def launch(x, kernel, strides, pads, dilations, residual):
            return k.qconv1x1_stationary(x, weight, scales, bias, epi, config, residual)

        return launch


class _TritonConvStationaryIO(_TritonConvStationary):
    """Offered for layers with a residual input, where the TMA loads replace the
    epilogue's widest reads."""

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return has_residual(layer) and super().supports(layer, target)


def _register() -> None:
    for index, (key, config) in enumerate(STATIONARY_CONFIGS.items()):
        for op, base in (("gemm", _TritonGemmStationary), ("conv", _TritonConvStationary)):
            register_tactic(type(f"TritonQ{op.title()}Stationary_{key}", (base,), {
                "name": f"int8-triton-{op}-stationary-{key}", "config": config,
                "priority": 60 + index, "min_level": STATIONARY_LEVELS[key]}))
    for index, (key, config) in enumerate(STATIONARY_IO_CONFIGS.items()):
        register_tactic(type(f"TritonQConvStationaryIO_{key}", (_TritonConvStationaryIO,), {
            "name": f"int8-triton-conv-stationary-{key}", "config": config,
            "priority": 64 + index, "min_level": STATIONARY_LEVELS[key[:-1]]}))


_register()
