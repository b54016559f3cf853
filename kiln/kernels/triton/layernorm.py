"""The `layernorm-triton` tactic: the residual add and LayerNorm in one Triton kernel.

One program normalizes one row. Rows are addressed through two leading strides per input,
so the permuted views transformer exports hand over (torch's MultiheadAttention returns
its output through a [1, 0, 2] Transpose) are read in place: torch's add reads those on
its slow strided path and layer_norm then needs a contiguous copy. The sum is rounded to
the input type before the statistics, as the two-kernel reference computes them, and
written out only when the graph reads it (the next residual). Where a quantized layer
reads the result, the kernel quantizes it too (fuse_layernorm_quantize), saving the
quantize step's pass over memory; y itself is then written only if something else reads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.torch.layernorm import quantize_attrs
from kiln.kernels.triton import AVAILABLE, usable_on
from kiln.ops.fused import layer_norm, output_dtype
from kiln.ops.quantized import inverse_scale

MAX_ROW = 8192  # one row lives in registers

if AVAILABLE:
    import triton
    import triton.language as tl

    from kiln.kernels.triton._int8_kernels import _OUT_TORCH, OUT_MODES, _bytes, quantized
    from kiln.kernels.triton._pdl import launch, wait_for_inputs

    @triton.jit
    def _add_layer_norm(x, res, w, b, y, total, q, d1, n, eps, q_inv_scale, q_zp,
                        x_s0, x_s1, r_s0, r_s1, R,
                        HAS_RES: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                        STORE_SUM: tl.constexpr, STORE_Y: tl.constexpr, Q_MODE: tl.constexpr,
                        BLOCK: tl.constexpr, ROWS: tl.constexpr = 1,
                        PDL: tl.constexpr = False):
        """ROWS rows a program, each normalized on its own as by a program of one (the
        same arithmetic): their loads are independent, so a program has ROWS rows' loads
        in flight at once."""
        wait_for_inputs(PDL)
        for r in tl.static_range(ROWS):
            _norm_row(tl.program_id(0).to(tl.int64) * ROWS + r, x, res, w, b, y, total, q, d1,
                      n, eps, q_inv_scale, q_zp, x_s0, x_s1, r_s0, r_s1, R, HAS_RES, HAS_W,
                      HAS_B, STORE_SUM, STORE_Y, Q_MODE, BLOCK)

    @triton.jit
    def _norm_row(row, x, res, w, b, y, total, q, d1, n, eps, q_inv_scale, q_zp,
                  x_s0, x_s1, r_s0, r_s1, R, HAS_RES: tl.constexpr, HAS_W: tl.constexpr,
                  HAS_B: tl.constexpr, STORE_SUM: tl.constexpr, STORE_Y: tl.constexpr,
                  Q_MODE: tl.constexpr, BLOCK: tl.constexpr):
        i0 = row // d1
        i1 = row % d1
        cols = tl.arange(0, BLOCK)
        mask = (cols < n) & (row < R)
        v = tl.load(x + i0 * x_s0 + i1 * x_s1 + cols, mask=mask, other=0.0)
        if HAS_RES:
            v = v + tl.load(res + i0 * r_s0 + i1 * r_s1 + cols, mask=mask, other=0.0)
        if STORE_SUM:
            tl.store(total + row * n + cols, v, mask=mask)
        v = v.to(tl.float32)
        mean = tl.sum(v, axis=0) / n
        centered = tl.where(mask, v - mean, 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / n + eps)
        out = centered * rstd
        if HAS_W:
            out = out * tl.load(w + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_B:
            out = out + tl.load(b + cols, mask=mask, other=0.0).to(tl.float32)
        out = out.to(y.dtype.element_ty)
        if STORE_Y:
            tl.store(y + row * n + cols, out, mask=mask)
        if Q_MODE != 0:  # the quantize step that read y, from y as stored
            tl.store(q + row * n + cols,
                     quantized(out.to(tl.float32), q_inv_scale, q_zp, Q_MODE, True), mask=mask)


def rows_view(t: torch.Tensor, lead: int) -> tuple[int, int, int, int] | None:
    """(d0, d1, stride0, stride1) addressing `t`'s leading dims as two, when its trailing
    (normalized) dims are one contiguous run; None otherwise."""
    tail = t.shape[lead:]
    expected = 1
    for size, stride in zip(reversed(tail), reversed(t.stride()[lead:])):
        if size != 1 and stride != expected:
            return None
        expected *= size
    dims = [(s, st) for s, st in zip(t.shape[:lead], t.stride()[:lead]) if s != 1]
    while len(dims) > 2:  # merge neighbours that are contiguous with each other
        for k in range(len(dims) - 1):
            (a, sa), (b, sb) = dims[k], dims[k + 1]
            if sa == b * sb:
                dims[k:k + 2] = [(a * b, sb)]
                break
        else:
            return None
    dims = [(1, 0)] * (2 - len(dims)) + dims
    (d0, s0), (d1, s1) = dims
    return d0, d1, s0, s1


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
                   bias: torch.Tensor | None, axis: int, eps: float, want_sum: bool,
                   quantize: dict | None = None, want_y: bool = True,
                   config: tuple[int, int] | None = None,
                   y_dtype: torch.dtype | None = None) -> tuple:
    """(y, sum or None, y quantized or None); `quantize`: the keywords of quantize_attrs;
    config: (rows a program, warps), by default one row and 4 or 8 warps by its length;
    y_dtype: y's type where it is not x's."""
    lead = axis if axis >= 0 else x.dim() + axis
    if residual is not None and residual.shape != x.shape:
        # the sum broadcasts either way (fuse_layernorm takes an Add whose operands it
        # could not prove of one shape when no static size contradicts it)
        shape = torch.broadcast_shapes(x.shape, residual.shape)
        x, residual = x.expand(shape), residual.expand(shape)
    n = math.prod(x.shape[lead:])
    views = [rows_view(t, lead) for t in (x, residual) if t is not None]
    if any(v is None for v in views) or (len(views) == 2 and views[0][:2] != views[1][:2]):
        x = x.contiguous()
        residual = residual.contiguous() if residual is not None else None
        views = [rows_view(t, lead) for t in (x, residual) if t is not None]
    (d0, d1, x_s0, x_s1), (_, _, r_s0, r_s1) = views[0], views[-1]
    # unread y: a one-element stand-in that tells the kernel y's type
    y = torch.empty(x.shape if want_y else (1,), dtype=y_dtype or x.dtype, device=x.device)
    total = torch.empty(x.shape, dtype=x.dtype, device=x.device) if want_sum else y
    q_mode = OUT_MODES[quantize.get("quantize_to", "int8")] if quantize else 0
    q = torch.empty(x.shape, dtype=_OUT_TORCH[q_mode], device=x.device) if q_mode else y
    rows, warps = config or (1, 4 if n <= 2048 else 8)
    if x.numel():
        _add_layer_norm[(triton.cdiv(d0 * d1, rows),)](
            x, residual if residual is not None else x, weight if weight is not None else x,
            bias if bias is not None else x, y, total, _bytes(q), d1, n, eps,
            inverse_scale(quantize["quantize_scale"]) if quantize else 1.0,
            int(quantize.get("quantize_zero_point", 0)) if quantize else 0,
            x_s0, x_s1, r_s0, r_s1, d0 * d1,
            HAS_RES=residual is not None, HAS_W=weight is not None, HAS_B=bias is not None,
            STORE_SUM=want_sum, STORE_Y=want_y, Q_MODE=q_mode,
            BLOCK=triton.next_power_of_2(n), ROWS=rows, num_warps=warps, **launch(x.device))
    return (y if want_y else None), (total if want_sum else None), (q if q_mode else None)


@register_tactic
class LayerNormTriton(Tactic):
    name = "layernorm-triton"
    ops = (("kiln", "LayerNorm"),)
    priority = 5
    config: tuple[int, int] | None = None  # (rows a program, warps); None: add_layer_norm's

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        return usable_on(target.device.type) and layer.precision in ("fp16", "fp32")

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        axis = layer.attrs.get("axis", -1)
        eps = float(layer.attrs.get("epsilon", 1e-5))
        outputs = list(layer.outputs) + [None] * (3 - len(layer.outputs))
        quantize = quantize_attrs(layer.attrs) if outputs[2] is not None else None
        want_sum = outputs[1] is not None
        count = len(layer.outputs)
        out_dtype = layer.attrs.get("out_dtype")
        y_type = output_dtype(out_dtype, None)

        def run(x, residual=None, scale=None, shift=None):
            lead = axis if axis >= 0 else x.dim() + axis
            if math.prod(x.shape[lead:]) > MAX_ROW or not x.is_floating_point():
                return layer_norm(x, residual, scale, shift, axis=axis, epsilon=eps,
                                  num_outputs=count, out_dtype=out_dtype, **(quantize or {}))
            y, total, q = add_layer_norm(x, residual, scale, shift, axis, eps, want_sum,
                                         quantize, want_y=outputs[0] is not None,
                                         config=self.config, y_dtype=y_type)
            return (y, total, q)[:count] if count > 1 else y

        return run


# One warp a row: its sums are shuffles within the warp, with no barrier between one row's
# statistics and the next row's loads, and 32 one-warp programs fit an SM, so BERT-base's
# 4096 rows at batch 32 are all in flight at once (one row of 4 warps a program: 16 an SM).
# For rows of at most SHORT_ROW elements (32 registers a thread per 1024). On the H100 the
# tuner took w1 for BERT-base's INT8 LayerNorms (0.175 -> 0.147 ms for its 24) and
# rows2-w1 for its FP16 ones (bench/RESULTS.md, 2026-12-07, seventeenth session).
SHORT_ROW = 2048
LAYERNORM_CONFIGS = {"w1": (1, 1), "rows2-w1": (2, 1), "rows4-w1": (4, 1)}


class _ShortRowLayerNorm(LayerNormTriton):
    def supports(self, layer: LayerSpec, target: Target) -> bool:
        shape = layer.input_shapes[0] if layer.input_shapes else None
        axis = layer.attrs.get("axis", -1)
        if not shape or not all(isinstance(d, int) for d in shape[axis:]):
            return False
        return super().supports(layer, target) and math.prod(shape[axis:]) <= SHORT_ROW


for _key, _config in LAYERNORM_CONFIGS.items():
    register_tactic(type(f"LayerNormTriton_{_key.replace('-', '_')}", (_ShortRowLayerNorm,),
                         {"name": f"layernorm-triton-{_key}", "config": _config,
                          "priority": 6}))
