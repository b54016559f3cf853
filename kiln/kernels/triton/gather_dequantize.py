"""The `gather-dequantize-triton` tactic for kiln.GatherDequantize (an INT8 embedding
table, kiln/quant/quantize_embeddings.py): the rows gathered, widened and scaled in one
pass. The reference takes two index_selects (rows and their scales), a conversion and a
product, four kernels where the float table took one.

A row's integers times its scale, computed in float32 and rounded once to the output type,
is the reference's product: an int8 times a float16 or bfloat16 scale is exact in float32,
so both round the same exact value. Negative ids count from the end, as ONNX Gather's do;
an id outside the table gives a row of zeros instead of reading past it (a GPU kernel
cannot raise; the reference, on the CPU, does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.triton import AVAILABLE, usable_on

if AVAILABLE:
    import triton
    import triton.language as tl

    from kiln.kernels.triton._pdl import launch, wait_for_inputs

    @triton.jit
    def _gather_dequantize(table, scales, ids, out, R, V, E, BLOCK_R: tl.constexpr,
                           BLOCK_E: tl.constexpr, PDL: tl.constexpr = False):
        wait_for_inputs(PDL)
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        row_ok = r < R
        idx = tl.load(ids + r, mask=row_ok, other=0).to(tl.int64)
        idx = tl.where(idx < 0, idx + V, idx)
        found = row_ok & (idx >= 0) & (idx < V)
        col_ok = (e < E)[None, :]
        scale = tl.load(scales + idx, mask=found, other=0.0).to(tl.float32)
        q = tl.load(table + idx[:, None] * E + e[None, :], mask=found[:, None] & col_ok,
                    other=0)
        y = q.to(tl.float32) * scale[:, None]
        tl.store(out + r[:, None] * E + e[None, :], y.to(out.dtype.element_ty),
                 mask=row_ok[:, None] & col_ok)


def gather_dequantize(table: torch.Tensor, scales: torch.Tensor,
                      ids: torch.Tensor) -> torch.Tensor:
    """table int8 [V, E] (contiguous), scales [V, 1] in the output's float type, ids of any
    integer type and shape: [*ids.shape, E]."""
    vocab, width = table.shape
    flat = ids.reshape(-1).contiguous()
    out = torch.empty((flat.numel(), width), dtype=scales.dtype, device=table.device)
    if out.numel():
        block_e = min(1024, triton.next_power_of_2(width))
        block_r = max(1, 4096 // block_e)
        grid = (triton.cdiv(flat.numel(), block_r), triton.cdiv(width, block_e))
        _gather_dequantize[grid](table, scales, flat, out, flat.numel(), vocab, width,
                                 BLOCK_R=block_r, BLOCK_E=block_e, num_warps=4,
                                 **launch(table.device))
    return out.reshape(*ids.shape, width)


@register_tactic
class GatherDequantizeTriton(Tactic):
    name = "gather-dequantize-triton"
    ops = (("kiln", "GatherDequantize"),)
    priority = 10

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        table, scales = layer.constant_inputs.get(0), layer.constant_inputs.get(1)
        return (usable_on(target.device.type) and table is not None and scales is not None
                and table.dtype == np.int8 and table.ndim == 2
                and tuple(scales.shape) == (table.shape[0], 1))

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        def run(table, scales, ids):
            return gather_dequantize(table.contiguous(), scales.contiguous(), ids)

        return run
