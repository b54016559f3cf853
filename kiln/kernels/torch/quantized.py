"""Tactics for kiln's quantized layers (QConv, QGemm, QMatMul) that call torch.

- int8-exact-sim: the reference arithmetic (exact integer accumulation, float32 epilogue);
  what INT8 engines run on the CPU, and the fallback on the GPU for layers no faster
  kernel takes (grouped convolutions, odd shapes).
- int8-int-mm: torch._int_mm (cuBLAS IMMA) for dense layers and 1x1 convolutions, the
  epilogue in torch ops. One candidate among others: it measured far below the chip's
  INT8 peak on the H200, so the tuner keeps it only where it wins.
- fp8-scaled-mm: torch._scaled_mm (cuBLASLt FP8, per-tensor scales, bias fused) for FP8
  dense layers on Hopper/Ada, with fast accumulation as inference libraries run FP8
  forward passes (Transformer Engine's default): without it BERT-base's QKV GEMM at
  batch 32 measured 24 us, no faster than FP16; with it 17 us (H100).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch

from kiln.kernels.registry import (
    LayerSpec,
    Tactic,
    Target,
    get_tactic,
    register_tactic,
    tactic_names,
)
from kiln.ops import registry
from kiln.ops.quantized import combined_scales, epilogue, qconv_core, qgemm_core
from kiln.ops.tensors import to_torch

QUANTIZED = (("kiln", "QConv"), ("kiln", "QGemm"), ("kiln", "QMatMul"),
             ("kiln", "QConvShortcut"))


def epilogue_tensors(layer: LayerSpec, scale_key: str = "x_scale") -> dict[str, torch.Tensor]:
    """Per-channel factors and bias as float32 tensors (stored with the layer, so they
    live on the device rather than being moved there on every call)."""
    attrs = layer.attrs
    tensors = {}
    if "w_scale" in attrs:
        scale = attrs.get(scale_key, attrs.get("a_scale", attrs.get("x_scale", 1.0)))
        tensors["scales"] = torch.from_numpy(combined_scales(scale, _np(attrs["w_scale"])))
    if attrs.get("bias") is not None:
        tensors["bias"] = torch.from_numpy(_np(attrs["bias"]).astype(np.float32).reshape(-1))
    return tensors


def _np(value: Any) -> np.ndarray:
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


@register_tactic
class Int8ExactSim(Tactic):
    """On the GPU only for layers no faster tactic takes (it accumulates in float64)."""

    name = "int8-exact-sim"
    ops = QUANTIZED
    priority = 90

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        if target.device.type == "cpu":
            return True
        faster = (get_tactic(n) for n in tactic_names() if n != self.name)
        return not any(t.ops and layer.key in t.ops and t.supports(layer, target)
                       for t in faster)

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        return epilogue_tensors(layer, "x_scale" if layer.op == "QConv" else "a_scale")

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        impl = registry.lookup(layer.domain, layer.op, layer.opset)
        kwargs = impl.bind_attrs(layer.attrs)
        core = {"QConv": qconv_core, "QGemm": qgemm_core}.get(layer.op)
        if core is None:  # QMatMul (per-tensor scales) and QConvShortcut: the reference
            return partial(impl.fn, **kwargs)
        for key in ("x_scale", "a_scale", "w_scale", "bias"):
            kwargs.pop(key, None)
        return partial(_call_core, core, scales=tensors["scales"], bias=tensors.get("bias"),
                       **kwargs)


def _call_core(core, x, w, *rest, scales, bias, **kwargs):
    residual = rest[0] if rest else None
    if core is qgemm_core:
        return core(x, w, scales, bias, **kwargs)
    return core(x, w, residual, scales, bias, **kwargs)


def column_major(weight: torch.Tensor) -> torch.Tensor:
    """A [K, N] GEMM operand in column-major memory, as prepared and timed (the IMMA and
    FP8 kernels take it so); a saved or moved engine may hand it back row-major."""
    return weight if weight.stride(0) == 1 else weight.t().contiguous().t()


def _int_mm_shapes_ok(k: int, n: int) -> bool:
    return k % 8 == 0 and n % 8 == 0 and k >= 16 and n >= 16


@register_tactic
class Int8IntMM(Tactic):
    name = "int8-int-mm"
    ops = (("kiln", "QGemm"), ("kiln", "QConv"))
    priority = 30
    replaces_inputs = (1,)
    channels_last = True  # a 1x1 convolution over NHWC rows is a GEMM without copies

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        w = layer.constant_inputs.get(1)
        if target.device.type != "cuda" or w is None or w.dtype != np.int8:
            return False
        if layer.input_dtypes and layer.input_dtypes[0] not in ("int8", "uint8"):
            return False
        if layer.op == "QConv":
            attrs = layer.attrs
            if w.ndim != 4 or tuple(w.shape[2:]) != (1, 1) or attrs.get("group", 1) != 1 \
                    or any(attrs.get("strides") or [1]) != 1 \
                    or any(attrs.get("pads") or [0]) \
                    or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                return False
            return _int_mm_shapes_ok(w.shape[1], w.shape[0])
        return w.ndim == 2 and _int_mm_shapes_ok(w.shape[1], w.shape[0])

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        w = to_torch(layer.constant_inputs[1])
        w = w.reshape(w.shape[0], -1)  # [N, K]
        tensors = epilogue_tensors(layer)
        tensors["weight_kn"] = w.t()  # [K, N], column-major: a view of [N, K]
        tensors["weight_sums"] = w.to(torch.int32).sum(dim=1)
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = layer.attrs
        conv = layer.op == "QConv"
        zp = int(attrs.get("x_zero_point" if conv else "a_zero_point", 0))
        weight, sums = tensors["weight_kn"], tensors["weight_sums"]
        weight = column_major(weight)
        scales, bias = tensors["scales"], tensors.get("bias")
        finish = partial(epilogue, residual_scale=float(attrs.get("residual_scale", 0.0)),
                         residual_zero_point=int(attrs.get("residual_zero_point", 0)),
                         activation=attrs.get("activation", ""),
                         activation_params=attrs.get("activation_params"),
                         out_scale=float(attrs.get("out_scale", 0.0)),
                         out_zero_point=int(attrs.get("out_zero_point", 0)),
                         out_type=attrs.get("out_type", "int8"),
                         out_dtype=attrs.get("out_dtype", "fp32"))
        n = weight.shape[1]

        def run(x, _w=None, residual=None):
            if x.dtype == torch.uint8:  # the IMMA kernels take signed bytes
                x, shift = (x.to(torch.int16) - 128).to(torch.int8), 128
            else:
                shift = 0
            if conv:  # NHWC rows: a 1x1 convolution is a GEMM over pixels
                nhwc = x.permute(0, 2, 3, 1)
                rows = nhwc.reshape(-1, nhwc.shape[-1])
            else:
                rows = x.reshape(-1, x.shape[-1])
            if rows.shape[0] <= 16:  # cuBLAS needs more than 16 rows
                pad = torch.zeros(17 - rows.shape[0], rows.shape[1], dtype=rows.dtype,
                                  device=rows.device)
                acc = torch._int_mm(torch.cat([rows, pad]), weight)[:rows.shape[0]]
            else:
                acc = torch._int_mm(rows.contiguous(), weight)
            if zp - shift:
                acc = acc - (zp - shift) * sums
            if conv:
                acc = acc.reshape(*nhwc.shape[:-1], n).permute(0, 3, 1, 2)
                shape = (1, -1, 1, 1)
            else:
                acc = acc.reshape(*x.shape[:-1], n)
                shape = (-1,)
            return finish(acc, scales.reshape(shape),
                          None if bias is None else bias.reshape(shape), residual)

        return run


@register_tactic
class Fp8ScaledMM(Tactic):
    name = "fp8-scaled-mm"
    ops = (("kiln", "QGemm"),)
    priority = 30
    replaces_inputs = (1,)

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        w = layer.constant_inputs.get(1)
        if target.device.type != "cuda" or w is None or w.dtype.name != "float8_e4m3fn" \
                or not hasattr(torch, "_scaled_mm"):
            return False
        major, minor = torch.cuda.get_device_capability(target.device)
        scales = _np(layer.attrs["w_scale"]).reshape(-1)
        return (major, minor) >= (8, 9) and w.ndim == 2 and w.shape[0] % 16 == 0 \
            and w.shape[1] % 16 == 0 and bool(np.all(scales == scales[0]))

    def prepare(self, layer: LayerSpec, target: Target) -> dict[str, torch.Tensor]:
        w = to_torch(layer.constant_inputs[1])  # [N, K] float8
        tensors = {"weight_kn": w.t()}  # [K, N], column-major
        if layer.attrs.get("bias") is not None:
            tensors["bias"] = epilogue_tensors(layer)["bias"]
        return tensors

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = layer.attrs
        weight = column_major(tensors["weight_kn"])  # cuBLASLt takes B column-major
        out_dtype = torch.bfloat16 if attrs.get("out_dtype") == "bf16" else torch.float16
        bias = tensors.get("bias")
        bias = None if bias is None else bias.to(out_dtype)
        scale_a = torch.tensor(float(attrs["a_scale"]), dtype=torch.float32, device=device)
        w_scale = float(_np(attrs["w_scale"]).reshape(-1)[0])
        scale_b = torch.tensor(w_scale, dtype=torch.float32, device=device)
        finish = self.finish(layer, weight.shape[1], device)

        def run(a, _w=None):
            rows = a.reshape(-1, a.shape[-1])
            y = torch._scaled_mm(rows.contiguous(), weight, scale_a=scale_a, scale_b=scale_b,
                                 bias=bias, out_dtype=out_dtype, use_fast_accum=True)
            if finish is not None:
                y = finish(y)
            return y.reshape(*a.shape[:-1], weight.shape[1])

        return run

    def finish(self, layer: LayerSpec, n: int, device: torch.device
               ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What follows cuBLASLt's product (scales and bias applied, fp16 or bf16) to give
        the layer's output; None where the product is the output already, since each
        extra pass over a large output costs more than the FP8 GEMM saves."""
        attrs = layer.attrs
        if not needs_epilogue(attrs):
            return None
        return partial(epilogue, scales=torch.ones((), device=device), bias=None,
                       residual=None, residual_scale=0.0, residual_zero_point=0,
                       activation=attrs.get("activation", ""),
                       activation_params=attrs.get("activation_params"),
                       out_scale=float(attrs.get("out_scale", 0.0)), out_zero_point=0,
                       out_type=attrs.get("out_type", "fp8e4m3"),
                       out_dtype=attrs.get("out_dtype", "fp16"))


def needs_epilogue(attrs: dict) -> bool:
    """Whether a layer's output differs from its scaled product plus bias in fp16 or bf16."""
    return bool(attrs.get("activation") or attrs.get("out_scale")
                or attrs.get("out_dtype", "fp16") not in ("fp16", "bf16"))
