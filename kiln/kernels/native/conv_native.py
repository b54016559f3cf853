"""A CPU convolution tactic through kiln's AVX-512 GEMM (native/gemm.c) as an implicit
im2col: each output pixel's row read in place from its window of the channels-last input
(a tap per kernel position; padding through a table of offsets, or a padded copy for large
layers), the weights packed as [k * C, OC] panels, the bias and activation in the
epilogue. The result is [N, *out, OC], handed on as a channels-last view, as
`conv-im2col-nhwc` does, which copies the windows into rows first. On one core of the AMD
EPYC machines kiln is measured on, attacut-c's k=9, d=2 layer (131 steps, 48 -> 196
channels) took 0.21 ms of GEMM against 0.24 for MKL's. Groups of one only; the tuner keeps
whichever tactic is fastest per layer. Offered where the kernel builds; an engine that
chose it runs the im2col tactic's torch GEMM where it cannot."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.native import gemm
from kiln.kernels.registry import LayerSpec, Target, register_tactic
from kiln.kernels.torch.conv import add_residual
from kiln.kernels.torch.conv_im2col_nhwc import (
    ConvIm2colNHWC,
    padded_channels_last,
    window_attrs,
)
from kiln.ops.conv import resolve_pads
from kiln.ops.fused import activate


@register_tactic
class ConvNative(ConvIm2colNHWC):
    name = "conv-native"
    priority = 44
    min_level = 1  # only where timing shows it wins

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return super().supports(layer, target) and gemm.kernel() is not None

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        if gemm.kernel() is None:  # a plan from a machine that built the kernel
            return super().bind(layer, tensors, device)
        stored = tensors["weight"]  # [*k, C, OC]
        kernel = list(stored.shape[:-2])
        strides, dilations, auto_pad, pads, activation, params = window_attrs(layer, len(kernel))
        product = gemm.PackedGemm(stored.reshape(-1, stored.shape[-1]), tensors.get("bias"),
                                  activation, params)

        windows: dict[tuple, _Windows] = {}  # per input shape: offsets, made once

        def run(x, _w=None, _b=None, residual=None):
            last = x.float().movedim(1, -1)  # a view; read in place where channels are dense
            if last.stride(-1) != 1:
                last = last.contiguous()
            key = (last.shape, last.stride())
            found = windows.get(key)
            if found is None:
                if len(windows) >= 8:  # dynamic shapes: keep the memory bounded
                    windows.clear()
                full = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
                found = windows[key] = _Windows(last, kernel, strides, dilations, full)
            y = torch.empty((x.shape[0], *found.out, product.n), dtype=torch.float32)
            fuse = residual is None  # the kernel writes y's rows: [pixels, OC], dense
            if found.table is not None:
                product.over_table(last, found.table, x.shape[1], y, fuse)
            else:
                if found.padded_copy:
                    last, _ = padded_channels_last(last.movedim(-1, 1), kernel, dilations,
                                                   strides, found.pads)
                product(last, found.rows, found.taps, x.shape[1], y, fuse)
            y = add_residual(y.movedim(-1, 1), residual)
            return y if fuse and product.fused else activate(y, activation, params)

        return run


class _Windows:
    """Where each output pixel's window lies in a channels-last input of one shape and
    strides (read in place: a channel slice of a wider tensor, as a Split makes, is not
    copied): the window origins and the taps' offsets where nothing is padded; a table of
    offsets per pixel and tap where it is and the table is small (padding taps -1: the
    kernel reads zeros); else origins and taps over a padded copy."""

    TABLE_LIMIT = 1 << 16  # entries (8 bytes each)

    def __init__(self, last: torch.Tensor, kernel: list[int], strides: list[int],
                 dilations: list[int], pads: list[int]) -> None:
        n = len(kernel)
        sizes = [last.shape[1 + d] + pads[d] + pads[n + d] for d in range(n)]
        self.pads = pads
        self.out = [(sizes[d] - dilations[d] * (kernel[d] - 1) - 1) // strides[d] + 1
                    for d in range(n)]
        self.table = self.rows = self.taps = None
        self.padded_copy = False
        steps = list(last.stride())
        count = last.shape[0] * math.prod(self.out) * math.prod(kernel)
        if any(pads) and count <= self.TABLE_LIMIT:
            self.table = _table(last.shape, steps, kernel, strides, dilations, pads, self.out)
            return
        if any(pads):
            self.padded_copy = True
            steps = _dense_steps([last.shape[0], *sizes, last.shape[-1]])
        self.rows = gemm.offsets((last.shape[0], *self.out),
                                 (steps[0], *[steps[1 + d] * strides[d] for d in range(n)]))
        self.taps = gemm.offsets(tuple(kernel),
                                 tuple(steps[1 + d] * dilations[d] for d in range(n)))


def _dense_steps(sizes: list[int]) -> list[int]:
    """Row-major strides of a dense tensor of these sizes."""
    steps = [1] * len(sizes)
    for d in reversed(range(len(sizes) - 1)):
        steps[d] = steps[d + 1] * sizes[d + 1]
    return steps


def _table(shape: torch.Size, steps: list[int], kernel: list[int], strides: list[int],
           dilations: list[int], pads: list[int], out: list[int]) -> torch.Tensor:
    """[pixels, taps] offsets into the unpadded channels-last input [N, *spatial, C] with
    these strides, -1 in the padding."""
    n = len(kernel)
    total = (torch.arange(shape[0]) * steps[0]).view(-1, *[1] * (2 * n))
    inside = torch.ones((), dtype=torch.bool)
    for d in range(n):
        at = (torch.arange(out[d]).view(-1, 1) * strides[d]
              + torch.arange(kernel[d]).view(1, -1) * dilations[d] - pads[d])
        place = [1] * (1 + 2 * n)
        place[1 + d], place[1 + n + d] = out[d], kernel[d]
        total = total + (at * steps[1 + d]).view(place)
        inside = inside & ((at >= 0) & (at < shape[1 + d])).view(place)
    table = torch.where(inside, total, -1)
    return table.reshape(shape[0] * math.prod(out), math.prod(kernel)).contiguous()
