"""QGemm tactics over the Gluon INT8 GEMM (kiln/kernels/triton/_int8_gluon.py), whose K loop
keeps an MMA in flight: offered to the tuner on Hopper GPUs (compute capability 9.x),
where they ran first on 2026-12-07 and, with the 128 x 192 tiles, took all 48 of
BERT-base's GEMMs by timing (bench/RESULTS.md, seventeenth session).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.triton.int8 import _tma_ready, _TritonGemm, epilogue_attrs

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages[, persistent]); g3k64 and g6 leave room for two
# programs an SM, so that one's epilogue runs beside the other's K loop; g3p, g4p and g6p
# are one program an SM (_qgemm_gluon_persistent_kernel). Offered as tactics: the tiles
# that won a layer of BERT-base or ViT-B/16 on the H100 (bench/RESULTS.md, 2026-12-07,
# sixteenth and seventeenth sessions). The 64-row g6/g6p, meant for grids that 128-row
# tiles fill badly (BERT's N = 768 GEMMs: 1.45 rounds of 128 x 128 tiles over 132 SMs,
# 2.9 of 64 x 128), lost there (FC2 0.025 / 0.021 ms against g3's 0.019): kept for
# bench/int8_kernels.py.
# g5/g5p: 128 x 192 tiles (two MMAs, 128 + 64 columns) for the same grids: BERT's N = 768
# GEMMs make 128 of them (one round of 132 SMs) and its QKV (N = 2304) 384 (2.9 rounds);
# g5 won FC2 and the out-projections, g5k64 (K steps of 64) QKV.
GLUON_CONFIGS = {"g3": (128, 128, 128, 8, 3), "g4": (128, 256, 128, 8, 3),
                 "g4k64": (128, 256, 64, 8, 4), "g3k64": (128, 128, 64, 8, 4),
                 "g6": (64, 128, 128, 4, 4), "g3p": (128, 128, 128, 8, 3, True),
                 "g4p": (128, 256, 128, 8, 3, True), "g6p": (64, 128, 128, 4, 4, True),
                 "g5": (128, 192, 128, 8, 3), "g5p": (128, 192, 128, 8, 3, True),
                 "g5k64": (128, 192, 64, 8, 4), "g4k64p": (128, 256, 64, 8, 4, True),
                 "g5k64p": (128, 192, 64, 8, 4, True)}
# g4k64p and g5k64p (persistent, K steps of 64) lost every BERT GEMM on the H100 (FC1
# 0.023 and 0.035 ms against g4p's 0.021; bench/RESULTS.md, eighteenth session): kept for
# bench/int8_kernels.py
GLUON_TILES = ("g3", "g4", "g3p", "g4p", "g5", "g5p", "g5k64")


def gluon_kernels():
    from kiln.kernels.triton import _int8_gluon

    return _int8_gluon


class _GluonGemm(_TritonGemm):
    erf_as_tanh = False  # the -gelu-tanh-approx-for-erf forms

    def epilogue(self, layer: LayerSpec) -> dict:
        epi = epilogue_attrs(layer)
        if self.erf_as_tanh:
            epi.update(activation="GeluTanh", fast_tanh=True)
        return epi

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        if target.device.type != "cuda" or torch.cuda.get_device_capability(
                target.device)[0] != 9:
            return False
        if not super().supports(layer, target) or not _tma_ready(layer, target, "a_zero_point"):
            return False
        w = layer.constant_inputs[1]
        if w.dtype.name == "float8_e4m3fn":
            return False
        activation = layer.attrs.get("activation", "")
        if self.erf_as_tanh != (activation == "GeluErf"):
            return False
        if self.erf_as_tanh and not layer.attrs.get("out_scale"):
            return False  # the tanh instruction's error only under an output step
        return gluon_kernels().supported(self.epilogue(layer), w.shape[0], w.shape[1])

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        weight, scales, bias = tensors["weight"], tensors["scales"], tensors.get("bias")
        epi, config, k = self.epilogue(layer), self.config, gluon_kernels()

        def run(a, _w=None):
            rows = a.reshape(-1, a.shape[-1])
            if rows.stride(-1) != 1 or rows.stride(0) % 16 or rows.data_ptr() % 16:
                rows = rows.contiguous()  # TMA rows start on 16-byte boundaries
            y = k.qgemm_gluon(rows, weight, scales, bias, epi, config)
            return y.reshape(*a.shape[:-1], weight.shape[0])

        return run


def _register() -> None:
    for index, key in enumerate(GLUON_TILES):
        for suffix, erf in (("", False), ("-gelu-tanh-approx-for-erf", True)):
            register_tactic(type(f"GluonQGemm_{key}{'_erf' if erf else ''}", (_GluonGemm,), {
                "name": f"int8-gluon-gemm-{key}{suffix}", "config": GLUON_CONFIGS[key],
                "erf_as_tanh": erf, "priority": 60 + index, "min_level": 1}))


_register()
