"""Folds a 1x1 quantized projection into the 1x1 quantized layer that reads it as its
residual (kiln.QConvShortcut, kiln/ops/qconv_shortcut.py):

    r = QConv(sx, sw) {1x1, no activation, int8 out}; y = QConv(x, w, r) {1x1}
        ->  y = QConvShortcut(x, w, sx, sw) {the layer's attributes, shortcut_*}

ResNet's first bottleneck of every stage adds such a projection: at ResNet-50's first
stage (batch 64) it writes 51 MB of int8 that the tail reads back at once, in a kernel of
its own. On CUDA, where the fused kernel runs (kiln/kernels/triton/int8_shortcut.py
`foldable`: Hopper, depths up to 256, which at ResNet-50 are its first two stages); a
split form (the two layers' kernels) stands beside it for the tuner, so a layer on which
the fused kernel loses keeps the two layers' cost. Elsewhere the fused operator would
fall back to a reference far slower than the two layers' own tactics.
"""

from __future__ import annotations

from kiln.ir import Graph, Node
from kiln.ops.qconv_shortcut import PREFIX, SHORTCUT_ATTRS
from kiln.passes._match import const, fused_names, producer
from kiln.passes.pipeline import PassContext, register_pass

DEVICES = ("cuda",)


def _foldable(channels: int, shortcut_channels: int) -> bool:
    import torch

    from kiln.kernels.triton.int8_shortcut import foldable

    return foldable(torch.device("cuda"), channels, shortcut_channels)


@register_pass("fuse", priority=86)  # after lower_qdq has made the QConv layers
def fuse_projection_shortcut(graph: Graph, ctx: PassContext) -> bool:
    """Folds a 1x1 INT8 projection into the 1x1 INT8 layer whose residual it is."""
    if ctx.device not in DEVICES:
        return False
    fused = 0
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is g and node.domain == "kiln" and node.op_type == "QConv":
                fused += _fuse(g, node)
    ctx.count("fuse_projection_shortcut", fused)
    return bool(fused)


def _fuse(graph: Graph, layer: Node) -> int:
    if len(layer.inputs) < 3 or not layer.attrs.get("residual_scale") \
            or not _pointwise(layer):
        return 0
    projection = producer(layer.inputs[2], "QConv", "kiln")
    if projection is None or not _fusable_projection(graph, projection) or not _foldable(
            const(layer.inputs[1]).shape[1], const(projection.inputs[1]).shape[1]):
        return 0
    x, w = layer.inputs[:2]
    sx, sw = projection.inputs[:2]
    attrs = dict(layer.attrs)
    attrs.update({PREFIX + k: projection.attrs[k] for k in SHORTCUT_ATTRS
                  if projection.attrs.get(k) is not None})
    out = layer.outputs[0]
    layer.set_outputs([None])
    node = Node("QConvShortcut", [x, w, sx, sw], [out], attrs, domain="kiln", name=layer.name)
    node.meta.update(layer.meta)
    node.meta["fused"] = fused_names([layer, projection])
    graph.insert(node, before=layer)
    graph.remove_node(layer)
    projection.set_outputs([None])
    graph.remove_node(projection)
    return 1


def _pointwise(node: Node) -> bool:
    """A 1x1 unpadded, undilated, ungrouped convolution of int8 input, zero point 0 (the
    fused kernel's and the TMA kernels' condition)."""
    attrs, w = node.attrs, const(node.inputs[1])
    return (w is not None and w.ndim == 4 and tuple(w.shape[2:]) == (1, 1)
            and attrs.get("group", 1) == 1 and not any(attrs.get("pads") or ())
            and attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
            and all(d == 1 for d in attrs.get("dilations") or ())
            and not attrs.get("x_zero_point") and node.meta.get("quantized") == "int8")


def _fusable_projection(graph: Graph, node: Node) -> bool:
    """A pointwise layer (any stride) with no residual or activation of its own, writing
    int8/uint8 that only the one layer reads."""
    out = node.outputs[0]
    return (_pointwise(node) and len(node.inputs) == 2 and not node.attrs.get("activation")
            and bool(node.attrs.get("out_scale"))
            and node.attrs.get("out_type", "int8") in ("int8", "uint8")
            and len(out.consumers) == 1 and not any(out is v for v in graph.outputs))
