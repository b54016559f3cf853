"""Moves the quantize step after a view of a quantized layer's output in front of the
view, into the layer.

    y = QAttention(..); r = Reshape(y); q = Quantize(r) {s}
        ->   yq = QAttention(..) {out_scale=s}; q = Reshape(yq)

Reshape, Transpose, Squeeze, Unsqueeze and Flatten move elements without changing them,
and quantizing acts on each element alone, so both orders give the same bytes. BERT's
attention output is reshaped from [B, S, H, D] to [B, S, H*D] before the output
projection quantizes it: without the swap the attention writes FP16 and a separate step
reads it back to quantize it. The layer takes the moved step as its requantizing
epilogue on lower_qdq's next round.

The step also moves through a chain of views (one per round), and up to a LayerNorm,
which then quantizes (fuse_layernorm_quantize): torchvision's ViT hands its attention's
output through a Transpose and a Reshape, and each block's first LayerNorm result through
a Transpose (MultiheadAttention's sequence-first order) to the in-projection. Quantizing
such a permuted view took the slow per-element path, 0.17 ms per layer at batch 64 on
the H100, and the views copied FP16 where they now copy INT8.
"""

from __future__ import annotations

from kiln.ir import Graph
from kiln.passes.pipeline import PassContext, register_pass
from kiln.passes.quantize_before_maxpool import move_quantize_before_ops

VIEWS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


@register_pass("fuse", priority=83)  # after lower_qdq, whose next round fuses the step
def quantize_before_views(graph: Graph, ctx: PassContext) -> bool:
    """Swaps view -> Quantize where a quantized layer or a LayerNorm alone feeds the view,
    directly or through other views."""
    return move_quantize_before_ops(graph, ctx, VIEWS, "quantize_before_views", VIEWS)
