"""The `triton-maxpool-nhwc` tactic: 2-D max pooling over channels-last tensors.

torch's CUDA max_pool2d always computes the argmax indices too (int64, four times the
bytes of fp16 values), which ONNX inference never reads; this kernel writes only the
values. Each program takes a tile of output pixels by channels; channels are contiguous
in NHWC, so every load is coalesced. Quantized activations pool as they are: int8 and
uint8 in integers, whose maximum is an ALU operation where a conversion to float32 is one
of 16 a clock per SM on Hopper (ResNet-50's int8 pool at batch 64 was bound by them); FP8
in float32, where every value is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.triton import AVAILABLE, usable_on
from kiln.ops.conv import resolve_pads
from kiln.ops.pool import pooled_size

if AVAILABLE:
    import triton
    import triton.language as tl

    from kiln.kernels.triton._pdl import launch, wait_for_inputs

    @triton.jit
    def _maxpool_nhwc(
        x, out,                     # NHWC input and output
        H, W, C, OH, OW, P,         # sizes; P = N * OH * OW output pixels
        sxn, sxh, sxw, sxc,         # input strides (elements)
        son, soh, sow, soc,         # output strides
        pad_h, pad_w,               # top / left padding
        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
        LOWEST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
        PDL: tl.constexpr = False,
    ):
        wait_for_inputs(PDL)
        # a tile of BLOCK_P output pixels x BLOCK_C channels:
        #   out[p, c] = max over the window of x, reading -inf outside the input
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        pmask = p < P
        cmask = c < C
        ow = p % OW
        oh = (p // OW) % OH
        n = p // (OW * OH)
        # integers in their own type (LOWEST their least value), floats in float32
        if x.dtype.element_ty.is_int():
            best = tl.full([BLOCK_P, BLOCK_C], LOWEST, x.dtype.element_ty)
        else:
            best = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                ih = oh * SH - pad_h + kh
                iw = ow * SW - pad_w + kw
                inside = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                row = n * sxn + ih * sxh + iw * sxw
                mask = inside[:, None] & cmask[None, :]
                value = tl.load(x + row[:, None] + c[None, :] * sxc, mask=mask)
                value = tl.where(mask, value.to(best.dtype), LOWEST).to(best.dtype)
                best = tl.maximum(best, value)
        target = n * son + oh * soh + ow * sow
        tl.store(out + target[:, None] + c[None, :] * soc, best.to(out.dtype.element_ty),
                 mask=pmask[:, None] & cmask[None, :])


_LOWEST = {torch.int8: -128, torch.uint8: 0}


# (values per program, warps): a program pools BLOCK_P pixels x BLOCK_C channels. The
# first is the default; the tuner times the others (max-pool is short of its memory rate:
# ResNet-50's int8 pool at batch 64 moved 64 MB in 0.047 ms on the H200)
POOL_CONFIGS = {"": (4096, 4), "16k": (16384, 8), "2k": (2048, 4), "8k": (8192, 4)}


def maxpool_nhwc(x: torch.Tensor, kernel: list[int], strides: list[int], pads: list[int],
                 ceil: bool, config: tuple[int, int] = POOL_CONFIGS[""]) -> torch.Tensor:
    n, c, h, w = x.shape
    oh = pooled_size(h, kernel[0], strides[0], pads[0], pads[2], ceil)
    ow = pooled_size(w, kernel[1], strides[1], pads[1], pads[3], ceil)
    out = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    if out.numel() == 0:
        return out
    values, warps = config
    block_c = min(64, triton.next_power_of_2(c))
    block_p = max(1, values // block_c)
    pixels = n * oh * ow
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(c, block_c))
    _maxpool_nhwc[grid](
        x, out, h, w, c, oh, ow, pixels,
        x.stride(0), x.stride(2), x.stride(3), x.stride(1),
        out.stride(0), out.stride(2), out.stride(3), out.stride(1),
        pads[0], pads[1], KH=kernel[0], KW=kernel[1], SH=strides[0], SW=strides[1],
        LOWEST=_LOWEST.get(x.dtype, float("-inf")), BLOCK_P=block_p, BLOCK_C=block_c,
        num_warps=warps, **launch(x.device))
    return out


class TritonMaxPoolNHWC(Tactic):
    ops = (("", "MaxPool"),)
    channels_last = True
    config: tuple[int, int] = POOL_CONFIGS[""]

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        attrs = layer.attrs
        return (usable_on(target.device.type) and len(attrs.get("kernel_shape", [])) == 2
                and len([o for o in layer.outputs if o is not None]) == 1
                and all(d == 1 for d in attrs.get("dilations") or [1, 1])
                and layer.input_dtypes[:1] in (["fp32"], ["fp16"], ["bf16"], ["int8"],
                                               ["uint8"], ["fp8e4m3"]))

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = layer.attrs
        kernel = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides") or [1, 1])
        auto_pad, pads = attrs.get("auto_pad", "NOTSET"), attrs.get("pads")
        ceil, config = bool(attrs.get("ceil_mode", 0)), self.config

        def run(x: torch.Tensor) -> torch.Tensor:
            full = resolve_pads(x, kernel, strides, [1, 1], pads, auto_pad)
            return maxpool_nhwc(x, kernel, strides, list(full), ceil, config)

        return run


def _register() -> None:
    for index, (key, config) in enumerate(POOL_CONFIGS.items()):
        register_tactic(type(f"TritonMaxPoolNHWC_{key}", (TritonMaxPoolNHWC,), {
            "name": "triton-maxpool-nhwc" + (f"-{key}" if key else ""), "config": config,
            "priority": 10 + index, "min_level": 0 if index == 0 else 1}))


_register()
