"""Tactics for kiln.QConvShortcut (a 1x1 INT8 layer with the 1x1 projection its residual
comes from, kiln/ops/qconv_shortcut.py):

- int8-triton-conv-shortcut-{tile}: both products in one kernel per output tile, the
  projection's int8 output kept in registers (_int8_shortcut.py; Hopper, depths <= 256);
- int8-triton-conv-shortcut-split: the projection, then the layer reading it, as the
  unfused engine ran them (the stationary kernel; a strided projection on the TMA
  convolution's t1 tile), so the tuner keeps the two layers' cost where fusing loses.

fuse_projection_shortcut folds only where the fused kernel runs (`foldable`). ResNet-50 at
batch 64 (H200): stage 1 0.065 ms fused against 0.082 as two layers, stage 2 0.062 either
way; a first build that folded stages 3 and 4 as well ran them split on the gathering
kernel at 0.16 and 0.12 ms against about 0.04 unfused (H100).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.torch.quantized import epilogue_tensors
from kiln.kernels.triton import usable_on
from kiln.kernels.triton.int8 import TMA_CONFIGS, _tma_ready, epilogue_attrs, kernels_tma
from kiln.kernels.triton.int8_stationary import STATIONARY_CONFIGS, stationary_kernels
from kiln.ops.qconv_shortcut import shortcut_attrs
from kiln.ops.tensors import to_torch


def shortcut_kernels():
    from kiln.kernels.triton import _int8_shortcut

    return _int8_shortcut


def foldable(device: torch.device, channels: int, shortcut_channels: int) -> bool:
    """Whether the fused kernel runs for a layer of these depths on this device (Hopper or
    newer: TMA; each depth one box of whole 16-byte units)."""
    return (usable_on(device.type) and (device.type != "cuda" or torch.cuda
                                        .get_device_capability(device) >= (9, 0))
            and shortcut_kernels().fits(channels, shortcut_channels))


class _Shortcut(Tactic):
    ops = (("kiln", "QConvShortcut"),)
    replaces_inputs = (1, 3)
    channels_last = True

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        w, sw = layer.constant_inputs.get(1), layer.constant_inputs.get(3)
        types = layer.input_dtypes
        return (usable_on(target.device.type) and w is not None and sw is not None
                and w.dtype == np.int8 and sw.dtype == np.int8 and len(types) > 2
                and types[0] == types[2] == "int8"
                and not layer.attrs.get("shortcut_x_zero_point")
                and _tma_ready(layer, target, "x_zero_point"))

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        tensors = epilogue_tensors(layer)
        tensors.update({f"shortcut_{k}": t for k, t in
                        epilogue_tensors(_projection(layer)).items()})
        tensors["weight"] = _rows(layer.constant_inputs[1])
        tensors["shortcut_weight"] = _rows(layer.constant_inputs[3])
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        launch = self.launcher(tensors, epilogue_attrs(layer),
                               epilogue_attrs(_projection(layer)), _stride(layer))

        def run(x, _w, sx, _sw=None):
            return launch(x, sx)

        return run

    def launcher(self, tensors: dict[str, torch.Tensor], epi: dict, s_epi: dict,
                 stride: int) -> Callable[..., Any]:
        raise NotImplementedError


def _rows(w: np.ndarray) -> torch.Tensor:
    """[N, C, 1, 1] weights as the [N, C] GEMM operand."""
    return to_torch(w).reshape(w.shape[0], -1).contiguous()


def _projection(layer: LayerSpec) -> LayerSpec:
    """The projection as a QConv layer of its own (its scales, bias and epilogue: no
    activation, requantized to its int8/uint8 output)."""
    return dataclasses.replace(layer, attrs=shortcut_attrs(layer.attrs))


def _stride(layer: LayerSpec) -> int:
    return int((_projection(layer).attrs.get("strides") or [1])[0])


class _Fused(_Shortcut):
    config: tuple = ()

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return super().supports(layer, target) and shortcut_kernels().fits(
            layer.constant_inputs[1].shape[1], layer.constant_inputs[3].shape[1])

    def launcher(self, tensors: dict[str, torch.Tensor], epi: dict, s_epi: dict,
                 stride: int) -> Callable[..., Any]:
        k, config = shortcut_kernels(), self.config
        w, scales, bias = tensors["weight"], tensors["scales"], tensors.get("bias")
        sw, s_scales = tensors["shortcut_weight"], tensors["shortcut_scales"]
        s_bias = tensors.get("shortcut_bias")

        def launch(x, sx):
            return k.qconv_shortcut(x, w, scales, bias, epi, sx, sw, s_scales, s_bias, s_epi,
                                    stride, config)

        return launch


@register_tactic
class TritonQConvShortcutSplit(_Shortcut):
    name = "int8-triton-conv-shortcut-split"
    priority = 70

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        # the layer, and a stride-1 projection, on the stationary kernel; a strided
        # projection on the TMA convolution
        fits, stride = stationary_kernels().fits, _stride(layer)
        if not super().supports(layer, target) or not fits(layer.constant_inputs[1].shape[1]):
            return False
        if stride == 1:
            return fits(layer.constant_inputs[3].shape[1])
        shape = layer.input_shapes[2] if len(layer.input_shapes) > 2 else None
        if not shape or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            return False  # the TMA convolution's view needs the map's size at build
        return kernels_tma().fits(shape[1], shape[2], shape[3], (1, 1), (stride, stride),
                                  TMA_CONFIGS["t1"][2])

    def launcher(self, tensors: dict[str, torch.Tensor], epi: dict, s_epi: dict,
                 stride: int) -> Callable[..., Any]:
        st, tma = stationary_kernels(), kernels_tma()
        config = STATIONARY_CONFIGS["128x64x8"]
        w, scales, bias = tensors["weight"], tensors["scales"], tensors.get("bias")
        sw, s_scales = tensors["shortcut_weight"], tensors["shortcut_scales"]
        s_bias = tensors.get("shortcut_bias")

        def launch(x, sx):
            if stride == 1:
                r = st.qconv1x1_stationary(sx, sw, s_scales, s_bias, s_epi, config)
            else:
                r = tma.qconv2d_tma(sx, sw, (1, 1), (stride, stride), (0, 0, 0, 0), (1, 1),
                                    s_scales, s_bias, s_epi, TMA_CONFIGS["t1"])
            return st.qconv1x1_stationary(x, w, scales, bias, epi, config, r)

        return launch


# (BLOCK_M, BLOCK_N, row blocks per program, warps, stages): the stationary GEMM's tiles,
# and a wider one, since every column block re-reads both layers' rows (ResNet-50's
# second stage: 8 blocks of 64 columns over 256-byte projection rows)
SHORTCUT_CONFIGS = {**STATIONARY_CONFIGS, "128x128x8": (128, 128, 8, 8, 3)}


def _register() -> None:
    for index, (key, config) in enumerate(SHORTCUT_CONFIGS.items()):
        register_tactic(type(f"TritonQConvShortcut_{key}", (_Fused,), {
            "name": f"int8-triton-conv-shortcut-{key}", "config": config,
            "priority": 60 + index, "min_level": 0 if index == 0 else 2}))


_register()
