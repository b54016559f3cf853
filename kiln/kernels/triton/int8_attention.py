"""Triton tactics for kiln.QAttention (kiln/kernels/triton/_int8_attention.py): the whole
attention of a head in one kernel over INT8 q, k and v, with the reference's arithmetic
(kiln/ops/qattention.py), for head dims of 32, 64 or 128 and at most 256 keys.

Each query tile (BLOCK_M rows, warps), with the softmax's division or its reciprocal, is
a tactic of its own, so the builder's tuner times them like any other candidates. q, k
and v are taken as the strided views their layouts give, and the output is written
straight into the layer's out_layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from kiln.kernels.registry import LayerSpec, Tactic, Target, register_tactic
from kiln.kernels.triton import usable_on
from kiln.ops.fused import to_bhsd
from kiln.ops.qattention import score_factor, softmax_scale, value_factor
from kiln.ops.quantized import inverse_scale


class AttentionConfig(NamedTuple):
    """A tactic's tile and variant of the kernel (kiln/kernels/triton/_int8_attention.py)."""

    block_m: int  # query rows a program
    warps: int
    reciprocal: bool = False  # probabilities by the reciprocal of the row sum
    per_sm: int = 0  # persistent: at most this many programs an SM (0: a program a block)
    early_v: bool = False  # v loaded with q and k
    exp2: bool = False  # the softmax in base 2, fused score product (EXP2)


# 32w4-recip: at more than 128 keys (ViT-B/16's 197 take a tile of 256) 64w4 holds 255
# registers a thread, two programs an SM; 32 rows hold 166, three (compiled for sm_90a).
# -pN: persistent, at most N programs an SM walking the blocks with the next one's loads
# issued ahead: BERT-base at batch 32 has 384 blocks of 128 rows, 1.45 rounds of two
# programs on each of 132 SMs, each program's loads, products and store in sequence.
# -early-v: v's copy issued before the scores instead of after the softmax.
# On the H100 at BERT-base b32 the persistent tiles timed 0.014-0.016 ms and -early-v 0.013
# against 128w8-recip's 0.011 (bench/RESULTS.md, seventeenth session): both stay tactics,
# since which wins may change with the batch and the key length.
# -exp2: the kernel issues its instructions at the SM's rate (compiled for sm_90a, 1888 a
# thread at 128w8-recip for BERT-base's 128 keys, 64 of them per score), and the base-2
# softmax takes 1512 (ex2 without ptxas' subnormal range fix-up, no product by log2(e), one
# product for the reciprocal and the 127 steps, the score's product and mask one fma). On
# the H100 (bench/RESULTS.md, twentieth session) BERT-base b32 128w8-exp2 0.010 ms against
# 128w8-recip's 0.011 (the tuner's pick for 11 of 12 layers), ViT-B/16 b64 32w4-exp2 0.068
# against 32w4-recip's 0.077.
ATTENTION_CONFIGS = {
    "64w4": AttentionConfig(64, 4), "128w4": AttentionConfig(128, 4),
    "128w8": AttentionConfig(128, 8), "64w4-recip": AttentionConfig(64, 4, True),
    "128w8-recip": AttentionConfig(128, 8, True), "32w4-recip": AttentionConfig(32, 4, True),
    "128w8-recip-p1": AttentionConfig(128, 8, True, 1),
    "128w8-recip-p2": AttentionConfig(128, 8, True, 2),
    "64w4-recip-p4": AttentionConfig(64, 4, True, 4),
    "128w8-recip-early-v": AttentionConfig(128, 8, True, 0, True),
    "128w8-exp2": AttentionConfig(128, 8, exp2=True),
    "64w4-exp2": AttentionConfig(64, 4, exp2=True),
    "32w4-exp2": AttentionConfig(32, 4, exp2=True)}
HEAD_DIMS = (32, 64, 128)  # the whole head dim is one tile of the kernel
MAX_KEYS = 256  # so are all the keys of a head: its scores stay in registers
_LAYOUTS = ("bhsd", "bshd", "bhds")
_OUT_FLOATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def attention_kernels():
    from kiln.kernels.triton import _int8_attention

    return _int8_attention


def _layouts(layer: LayerSpec) -> tuple[str, str, str]:
    attrs = layer.attrs
    return tuple(attrs.get(f"{name}_layout", "bhsd") for name in "qkv")


def layout_size(shape: tuple | None, layout: str, axis: str) -> Any:
    """The size of `axis` ('s' or 'd') of a q/k/v shape stored in `layout`; None where
    the shape or layout is unknown (a size may be a symbolic name or None itself)."""
    if shape is None or len(shape) != 4 or layout not in _LAYOUTS:
        return None
    return shape[layout.index(axis)]


def attention_fits(layer: LayerSpec) -> bool:
    """Whether the layer's static shapes are ones the kernel takes: q, k and v of one head
    dim in HEAD_DIMS, and a known key length of at most MAX_KEYS."""
    shapes = [*layer.input_shapes[:3], None, None, None][:3]
    layouts = _layouts(layer)
    dims = [layout_size(shape, layout, "d") for shape, layout in zip(shapes, layouts)]
    keys = layout_size(shapes[1], layouts[1], "s")
    return (isinstance(dims[0], int) and dims[0] in HEAD_DIMS and dims[0] == dims[1] == dims[2]
            and isinstance(keys, int) and 0 < keys <= MAX_KEYS)


def _outputs_supported(attrs: dict) -> bool:
    """int8 requantized with zero point 0, or a float type; not causal (no such mask in the
    kernel); an output layout the kernel writes."""
    if attrs.get("out_scale"):
        quantized = attrs.get("out_type", "int8") == "int8" and not attrs.get(
            "out_zero_point", 0)
    else:
        quantized = attrs.get("out_dtype", "fp32") in _OUT_FLOATS
    return (quantized and not attrs.get("is_causal", 0)
            and attrs.get("out_layout", "bhsd") in ("bhsd", "bshd"))


class _TritonAttention(Tactic):
    ops = (("kiln", "QAttention"),)
    config: AttentionConfig

    def supports(self, layer: LayerSpec, target: Target) -> bool:
        types = layer.input_dtypes
        return (usable_on(target.device.type) and len(types) >= 3
                and all(t == "int8" for t in types[:3]) and _outputs_supported(layer.attrs)
                and attention_fits(layer))

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        attrs = layer.attrs
        if attrs.get("out_zero_point", 0):
            raise ValueError(f"{self.name}: out_zero_point must be 0")
        layouts, bshd_out = _layouts(layer), attrs.get("out_layout", "bhsd") == "bshd"
        out_scale = attrs.get("out_scale") or 0.0
        out_inv_scale = inverse_scale(out_scale) if out_scale else None
        dtype = torch.int8 if out_scale else _OUT_FLOATS[attrs.get("out_dtype", "fp32")]
        scales = (attrs.get("q_scale", 1.0), attrs.get("k_scale", 1.0), attrs.get("scale"))
        v_factor = value_factor(attrs.get("v_scale", 1.0))
        options, kernels = self.config._asdict(), attention_kernels()  # once, not per run

        def run(q, k, v, mask=None):
            q, k, v = (to_bhsd(t, layout) for t, layout in zip((q, k, v), layouts))
            batch, heads, s_q, d = q.shape
            kernels.check_shapes(d, k.shape[2])
            factor = score_factor(scales[0], scales[1], softmax_scale(scales[2], d))
            shape = (batch, s_q, heads, d) if bshd_out else (batch, heads, s_q, d)
            out = torch.empty(shape, dtype=dtype, device=q.device)
            kernels.int8_attention(q, k, v, mask, out.transpose(1, 2) if bshd_out else out,
                                   factor=factor, v_factor=v_factor,
                                   out_inv_scale=out_inv_scale, **options)
            return out

        return run


def _register() -> None:
    for index, (key, config) in enumerate(ATTENTION_CONFIGS.items()):
        register_tactic(type(f"TritonQAttention_{key}", (_TritonAttention,), {
            "name": f"int8-triton-attention-{key}", "config": config,
            "priority": 10 + index}))


_register()
