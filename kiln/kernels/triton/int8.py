"""Triton INT8/FP8 tactics for kiln.QGemm and kiln.QConv (kiln/kernels/triton/_int8_kernels.py).

Each tile configuration is a tactic of its own, so the builder's tuner times them like
any other candidates and the engine records the winner (no autotuning at run time).
Weights are stored quantized (a quarter of FP32), re-laid-out for the kernels: [N, K] for
GEMMs, [OC, KH, KW, C] (taps major, channels minor) for NHWC convolutions; the per-channel
epilogue factors, the bias and the weight sums for zero-point correction go beside them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.torch.quantized import epilogue_tensors
from kiln.kernels.triton import usable_on
from kiln.ops.conv import resolve_pads
from kiln.ops.quantized import inverse_scale
from kiln.ops.tensors import to_torch

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
GEMM_CONFIGS = {"a": (128, 128, 128, 8, 3), "b": (128, 256, 64, 8, 3),
                "c": (64, 128, 128, 4, 4), "d": (64, 64, 128, 4, 3)}
CONV_CONFIGS = {"a": (128, 128, 64, 8, 3), "b": (128, 64, 64, 4, 4),
                "c": (64, 128, 64, 4, 4), "d": (64, 64, 64, 4, 3),
                "e": (128, 128, 128, 8, 3)}  # K steps of 128: Hopper's int8 MMA depth x4
# the TMA convolution (_int8_tma.py): BLOCK_M output rows as images x rows x columns
TMA_CONFIGS = {"t1": (128, 64, 64, 4, 4), "t2": (128, 128, 64, 8, 4),
               "t3": (128, 128, 128, 8, 3), "t4": (128, 256, 128, 8, 3),
               "t5": (256, 128, 64, 8, 3), "t6": (64, 128, 128, 4, 4),
               "t7": (128, 256, 128, 8, 4), "t8": (256, 128, 128, 8, 3)}
# ... and with the residual and output tiles by TMA as well (a sixth field: True). On the
# H100 this wins only where a residual is read (1x1 64->256 at 56x56 with an int8 residual
# 0.089 -> 0.080 ms; without one 0.061 -> 0.065), so these are tactics for residual layers.
TMA_STORE_CONFIGS = {f"{key}s": (*config, True) for key, config in TMA_CONFIGS.items()}
_INPUT_TYPES = ("int8", "uint8", "fp8e4m3")


def kernels():
    from kiln.kernels.triton import _int8_kernels

    return _int8_kernels


def kernels_tma():
    from kiln.kernels.triton import _int8_tma

    return _int8_tma


def epilogue_attrs(layer: LayerSpec) -> dict[str, Any]:
    attrs = layer.attrs
    epi = {k: attrs.get(k) for k in ("activation", "activation_params", "residual_scale",
                                      "residual_zero_point", "out_scale", "out_zero_point",
                                      "out_type", "out_dtype") if attrs.get(k) is not None}
    if attrs.get("out_scale"):
        epi["out_inv_scale"] = inverse_scale(attrs["out_scale"])
    return epi


def _usable(layer: LayerSpec, target: Target) -> bool:
    w = layer.constant_inputs.get(1)
    if not usable_on(target.device.type) or w is None:
        return False
    fp8 = w.dtype.name == "float8_e4m3fn"
    if fp8 and target.device.type == "cuda" and torch.cuda.get_device_capability(
            target.device) < (8, 9):
        return False
    x_type = layer.input_dtypes[0] if layer.input_dtypes else None
    return (w.dtype == np.int8 or fp8) and x_type in _INPUT_TYPES


class _TritonGemm(Tactic):
    ops = (("kiln", "QGemm"),)
    replaces_inputs = (1,)
    config: tuple = ()

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return _usable(layer, target) and layer.constant_inputs[1].ndim == 2

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        w = to_torch(layer.constant_inputs[1]).contiguous()  # [N, K]
        tensors = epilogue_tensors(layer, "a_scale")
        tensors["weight"] = w
        if not w.is_floating_point():
            tensors["weight_sums"] = w.to(torch.int32).sum(dim=1)
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        weight = tensors["weight"]
        launch = self.launcher(weight, tensors["scales"], tensors.get("bias"),
                               tensors.get("weight_sums"),
                               int(layer.attrs.get("a_zero_point", 0)), epilogue_attrs(layer))

        def run(a, _w=None):
            y = launch(a.reshape(-1, a.shape[-1]))
            return y.reshape(*a.shape[:-1], weight.shape[0])

        return run

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        """The kernel call on [M, K] rows."""
        k, config = kernels(), self.config

        def launch(rows):
            if rows.stride(-1) != 1:
                rows = rows.contiguous()
            return k.qgemm(rows, weight, scales, bias, sums, zp, epi, config)

        return launch


class _TritonConv(Tactic):
    ops = (("kiln", "QConv"),)
    replaces_inputs = (1,)
    channels_last = True
    config: tuple = ()

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        if not _usable(layer, target):
            return False
        w = layer.constant_inputs[1]
        return w.ndim == 4 and layer.attrs.get("group", 1) == 1

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        w = to_torch(layer.constant_inputs[1])  # [OC, C, KH, KW]
        tensors = epilogue_tensors(layer)
        tensors["weight"] = w.permute(0, 2, 3, 1).contiguous()  # [OC, KH, KW, C]
        if not w.is_floating_point():
            tensors["weight_sums"] = w.to(torch.int32).sum(dim=(1, 2, 3))
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = layer.attrs
        taps, scales = tensors["weight"], tensors["scales"]
        weight = taps.reshape(taps.shape[0], -1)  # [OC, KH*KW*C]: taps major, C minor
        bias, sums = tensors.get("bias"), tensors.get("weight_sums")
        kernel = (int(taps.shape[1]), int(taps.shape[2]))
        strides = tuple(attrs.get("strides") or (1, 1))
        dilations = tuple(attrs.get("dilations") or (1, 1))
        pads, auto_pad = attrs.get("pads"), attrs.get("auto_pad", "NOTSET")
        launch = self.launcher(weight, scales, bias, sums, int(attrs.get("x_zero_point", 0)),
                               epilogue_attrs(layer))

        def run(x, _w=None, residual=None):
            full = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
            return launch(x, kernel, strides, tuple(full[:4]), dilations, residual)

        return run

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        """The kernel call on an NHWC input: (x, kernel, strides, pads, dilations,
        residual)."""
        k, config = kernels(), self.config

        def launch(x, kernel, strides, pads, dilations, residual):
            return k.qconv2d(x, weight, kernel, strides, pads, dilations, scales, bias, sums,
                             zp, epi, config, residual)

        return launch


def _tma_ready(layer: LayerSpec, target: Target, zero_point: str) -> bool:
    """Hopper or newer (or the interpreter), a zero point of 0, signed or FP8 input."""
    if int(layer.attrs.get(zero_point, 0)) or layer.input_dtypes[0] == "uint8":
        return False
    return target.device.type != "cuda" or torch.cuda.get_device_capability(
        target.device) >= (9, 0)


class _TritonGemmTMA(_TritonGemm):
    """The TMA kernel over the GEMM's rows as plain 2-D boxes (_int8_tma.qgemm_tma)."""

    persistent = False  # one program per SM walking the tiles (the -persistent tactics)

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return (super().supports(layer, target) and _tma_ready(layer, target, "a_zero_point")
                and layer.constant_inputs[1].shape[1] % 16 == 0
                and (len(self.config) < 6 or _output_rows_aligned(layer)))

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        k, config = kernels_tma(), self.config  # zp is 0 (supports): no weight sums
        persistent = self.persistent

        def launch(rows):
            if rows.stride(-1) != 1 or rows.stride(0) % 16 or rows.data_ptr() % 16:
                rows = rows.contiguous()  # TMA rows start on 16-byte boundaries
            return k.qgemm_tma(rows, weight, scales, bias, epi, config, persistent=persistent)

        return launch


def _output_rows_aligned(layer: LayerSpec) -> bool:
    """Whether the GEMM's output rows (N elements of the output type) are whole 16-byte
    lines, as a TMA store of them needs (else the store tiles would store by pointer,
    the plain tiles' kernel again)."""
    attrs = layer.attrs
    size = 1 if attrs.get("out_scale") else {"fp32": 4}.get(attrs.get("out_dtype", "fp32"), 2)
    return (layer.constant_inputs[1].shape[0] * size) % 16 == 0


class _TritonGemmTMAPersistent(_TritonGemmTMA):
    """The 2-D TMA GEMM as one program per SM walking the tiles (_qgemm_tma_persistent_kernel),
    for requantizing layers only: with a float32 output tile the flattened pipeline asked
    the H100 for 278 KB of shared memory with t4 (227 KB there), a compile that fails."""

    persistent = True

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return bool(layer.attrs.get("out_scale")) and super().supports(layer, target)


class _TritonGemmTMATanhForErf(_TritonGemmTMA):
    """Erf GELU in its tanh form, as gemm-lt-gelu-tanh-for-erf takes it for FP16 layers:
    the forms differ by at most 4.8e-4, far below the step of the INT8/FP8 input. libdevice's
    erf made the epilogue cost BERT-base's FC1 in FP8 at batch 32 45 us against 36 (H100)."""

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return layer.attrs.get("activation") == "GeluErf" and super().supports(layer, target)

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        return super().launcher(weight, scales, bias, sums, zp, {**epi, "activation": "GeluTanh"})


class _TritonGemmTMATanhApproxForErf(_TritonGemmTMATanhForErf):
    """The tanh form by the GPU's tanh instruction (tanh.approx.f32, relative error
    2**-10.99): compiled for the H100, BERT-base's FC1 epilogue (t4s) takes 2099 instructions
    a thread instead of 3331. For quantized outputs only, whose step is far above that
    error; CUDA only (the interpreter runs no PTX)."""

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return (target.device.type == "cuda" and bool(layer.attrs.get("out_scale"))
                and super().supports(layer, target))

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        return super().launcher(weight, scales, bias, sums, zp, {**epi, "fast_tanh": True})


class _TritonConvTMA(_TritonConv):
    """The TMA convolution (Hopper): zero-point-0 int8 or FP8 inputs whose static shape the
    box view covers (_int8_tma.fits)."""

    persistent = False  # 1x1 stride-1 layers through the persistent GEMM

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        if not super().supports(layer, target) or not _tma_ready(layer, target, "x_zero_point"):
            return False
        shape = layer.input_shapes[0] if layer.input_shapes else None
        if not shape or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            return False
        w = layer.constant_inputs[1]
        strides = tuple(layer.attrs.get("strides") or (1, 1))
        return kernels_tma().fits(shape[1], shape[2], shape[3], tuple(w.shape[2:]), strides,
                                  self.config[2])

    def launcher(self, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                 sums: torch.Tensor | None, zp: int, epi: dict) -> Callable[..., Any]:
        k, config = kernels_tma(), self.config  # zp is 0 (supports): the zero fill pads
        persistent = self.persistent

        def launch(x, kernel, strides, pads, dilations, residual):
            return k.qconv2d_tma(x, weight, kernel, strides, pads, dilations, scales, bias,
                                 epi, config, residual, persistent=persistent)

        return launch


class _TritonConvTMAPersistent(_TritonConvTMA):
    """A 1x1 stride-1 unpadded requantizing convolution as the persistent 2-D GEMM over its
    rows (as _TritonGemmTMAPersistent, not with float outputs)."""

    persistent = True

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        attrs = layer.attrs
        w = layer.constant_inputs.get(1)
        return (w is not None and tuple(w.shape[2:]) == (1, 1) and bool(attrs.get("out_scale"))
                and tuple(attrs.get("strides") or (1, 1)) == (1, 1)
                and not any(attrs.get("pads") or ())
                and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
                and super().supports(layer, target))


class _TritonConvTMAStore(_TritonConvTMA):
    """The TMA convolution that also reads its residual tile (and writes its output tile)
    by TMA: offered for layers with a residual input, the only ones where it wins."""

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return has_residual(layer) and super().supports(layer, target)


def has_residual(layer: LayerSpec) -> bool:
    """Whether a QConv layer reads a residual (its third input)."""
    return len(layer.inputs) > 2 and bool(layer.inputs[2])


# The optimization level from which each tile is timed: each (layer, tile) pair is one Triton
# compile of a second or two, so the default level (3) times two tiles per layer and the
# wider search is left to levels 4 and 5.
GEMM_LEVELS = {"a": 0, "c": 2, "b": 4, "d": 4}
CONV_LEVELS = {"a": 0, "e": 2, "b": 4, "c": 4, "d": 4}
TMA_LEVELS = {"t1": 0, "t3": 0, "t4": 2, "t6": 2, "t2": 4, "t5": 4, "t7": 4, "t8": 4,
              "t1s": 0, "t4s": 2, "t6s": 2, "t2s": 4, "t3s": 4, "t5s": 4, "t7s": 5, "t8s": 5}
# QGemm's tiles with the output (and residual) by TMA: compiled for the H100 their
# epilogues take a third to a half fewer instructions (BERT-base's FC2 at t4 466 a thread
# against 1475, FC1 with GELU 3331 against 4946, without the spills); on the H100 t3s won
# BERT's QKV and out-projections (bench/RESULTS.md), so t3s/t4s are in the default level's
# timed search, beside the plain tiles.
GEMM_STORE_LEVELS = {"t1s": 4, "t2s": 4, "t3s": 2, "t4s": 2, "t5s": 4, "t6s": 4, "t7s": 5,
                     "t8s": 5}
# Persistent variants pay only with the large t4 tile, and little (H100, batch 32/64: BERT's
# FC1 0.028 -> 0.027 ms, a 1x1 128->512 layer with a residual 0.053 -> 0.045 where t6 takes
# 0.039; t1 and t6 persistent lost everywhere, t1 by up to 1.8x): the wider searches only.
PERSISTENT_LEVELS = {"t4": 4}


def _register() -> None:
    for key, config in GEMM_CONFIGS.items():
        register_tactic(type(f"TritonQGemm_{key}", (_TritonGemm,), {
            "name": f"int8-triton-gemm-{key}", "config": config,
            "priority": 10 + ord(key) - ord("a"), "min_level": GEMM_LEVELS[key]}))
    for key, config in CONV_CONFIGS.items():
        register_tactic(type(f"TritonQConv_{key}", (_TritonConv,), {
            "name": f"int8-triton-conv-{key}", "config": config,
            "priority": 10 + ord(key) - ord("a"), "min_level": CONV_LEVELS[key]}))
    for index, (key, config) in enumerate(TMA_CONFIGS.items()):
        register_tactic(type(f"TritonQConvTMA_{key}", (_TritonConvTMA,), {
            "name": f"int8-triton-conv-tma-{key}", "config": config,
            "priority": 20 + index, "min_level": TMA_LEVELS[key]}))
        register_tactic(type(f"TritonQGemmTMA_{key}", (_TritonGemmTMA,), {
            "name": f"int8-triton-gemm-tma-{key}", "config": config,
            "priority": 20 + index, "min_level": TMA_LEVELS[key]}))
    for index, (key, config) in enumerate(TMA_STORE_CONFIGS.items()):
        register_tactic(type(f"TritonQGemmTMA_{key}", (_TritonGemmTMA,), {
            "name": f"int8-triton-gemm-tma-{key}", "config": config,
            "priority": 30 + index, "min_level": GEMM_STORE_LEVELS[key]}))
    tanh_tiles = {**TMA_CONFIGS, **TMA_STORE_CONFIGS}
    levels = {**TMA_LEVELS, **GEMM_STORE_LEVELS}
    for index, key in enumerate(("t1", "t4", "t6", "t3s", "t4s")):  # level 0 keeps exact erf
        register_tactic(type(f"TritonQGemmTMATanhForErf_{key}", (_TritonGemmTMATanhForErf,), {
            "name": f"int8-triton-gemm-tma-{key}-gelu-tanh-for-erf", "config": tanh_tiles[key],
            "priority": 40 + index, "min_level": max(1, levels[key])}))
    for index, key in enumerate(("t3s", "t4s")):
        register_tactic(type(f"TritonQGemmTMATanhApproxForErf_{key}",
                             (_TritonGemmTMATanhApproxForErf,), {
            "name": f"int8-triton-gemm-tma-{key}-gelu-tanh-approx-for-erf",
            "config": TMA_STORE_CONFIGS[key], "priority": 45 + index,
            "min_level": GEMM_STORE_LEVELS[key]}))
    for index, key in enumerate(PERSISTENT_LEVELS):
        register_tactic(type(f"TritonQGemmTMAPersistent_{key}", (_TritonGemmTMAPersistent,), {
            "name": f"int8-triton-gemm-tma-{key}-persistent", "config": TMA_CONFIGS[key],
            "priority": 50 + index, "min_level": PERSISTENT_LEVELS[key]}))
        register_tactic(type(f"TritonQConvTMAPersistent_{key}", (_TritonConvTMAPersistent,), {
            "name": f"int8-triton-conv-tma-{key}-persistent", "config": TMA_CONFIGS[key],
            "priority": 50 + index, "min_level": PERSISTENT_LEVELS[key]}))
    for index, (key, config) in enumerate(TMA_STORE_CONFIGS.items()):
        register_tactic(type(f"TritonQConvTMAStore_{key}", (_TritonConvTMAStore,), {
            "name": f"int8-triton-conv-tma-{key}", "config": config,
            "priority": 30 + index, "min_level": TMA_LEVELS[key]}))


_register()
