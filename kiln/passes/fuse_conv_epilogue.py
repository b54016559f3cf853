"""Replaces `act(Conv(x, w, b) [+ bias] [+ residual])` with one `kiln.FusedConv` node.

    c = Conv(x, w, b); s = Add(c, r); y = Relu(s)   ->   y = FusedConv(x, w, b, r) {Relu}

A constant added after the convolution that is per output channel ([C], [C,1,1] or
[1,C,1,1] for 2-D) folds into the bias; a tensor of the convolution's own shape is a
residual (ResNet's bottleneck tail). The convolution's weights must be constant (so the
tactic can prepare them); its output and each intermediate must have no other reader.
A convolution with nothing to fuse becomes a FusedConv too, so every convolution gets
the same tactics (channels-last, cuDNN's fused kernels).
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Node, Value
from kiln.passes._activation import match_activation
from kiln.passes._match import const, fused_names, only_consumer, other_input, remove_chain
from kiln.passes.pipeline import PassContext, register_pass

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@register_pass("fuse", priority=30)
def fuse_conv_epilogue(graph: Graph, ctx: PassContext) -> bool:
    """Fuses bias, residual Add and activation into the preceding Conv."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is g and node.op_type == "Conv" and not node.domain:
                changed |= _fuse(g, node)
    return changed


def _fuse(graph: Graph, conv: Node) -> bool:
    x, w = conv.inputs[0], conv.inputs[1]
    b = conv.inputs[2] if len(conv.inputs) > 2 else None
    if x is None or const(w) is None or (b is not None and const(b) is None):
        return False
    chain: list[Node] = [conv]
    out = conv.output
    bias = None if b is None else const(b)
    residual: Value | None = None
    add = only_consumer(out, graph)
    if add is not None and add.op_type == "Add" and not add.domain:
        other = other_input(add, out)
        channel_bias = _channel_bias(other, const(w).shape[0], const(w).ndim)
        if channel_bias is not None:
            bias = channel_bias if bias is None else bias + channel_bias.astype(bias.dtype)
            chain.append(add)
            out = add.output
        elif other is not None and not other.is_const and _same_shape(other, out):
            residual = other
            chain.append(add)
            out = add.output
    activation = match_activation(out, graph)
    if activation is not None:
        chain += activation.nodes
        out = activation.output
    bias_value = b  # unchanged unless a per-channel Add was folded in
    if bias is not None and (b is None or bias is not const(b)):
        bias_value = graph.constant(bias.astype(const(w).dtype), f"{conv.name}_bias")
    attrs = {k: v for k, v in conv.attrs.items() if k in CONV_ATTRS}
    if activation is not None:
        attrs["activation"] = activation.name
        if activation.params:
            attrs["activation_params"] = activation.params
    fused = graph.add_node("FusedConv", [x, w, bias_value, residual], attrs, domain="kiln",
                           name=f"{conv.name}_fused", before=chain[-1])
    fused.meta["fused"] = fused_names(chain)
    fused.output.dtype, fused.output.shape = out.dtype, out.shape
    graph.replace_all_uses(out, fused.output)
    remove_chain(graph, chain)
    return True


def _channel_bias(value: Value | None, channels: int, weight_rank: int) -> np.ndarray | None:
    """A constant that adds one number per output channel, as a [C] vector."""
    array = const(value)
    if array is None or array.dtype.kind != "f":
        return None
    spatial = weight_rank - 2
    shape = array.shape
    if shape == (channels,) and spatial == 0:
        return array.reshape(channels)
    squeezed = shape[1:] if len(shape) == spatial + 2 and shape[0] == 1 else shape
    if len(squeezed) == spatial + 1 and squeezed[0] == channels and all(
            d == 1 for d in squeezed[1:]):
        return array.reshape(channels)
    return None


def _same_shape(a: Value, b: Value) -> bool:
    """Not provably different: equal ranks, and equal dims wherever both are known.

    Shape inference often loses spatial dims after a convolution with a symbolic input
    size, so unknown dims are accepted; the fused op adds with broadcasting exactly like
    the Add it replaces, and fast tactics check the shapes when they run."""
    if a.rank is None or a.rank != b.rank:
        return False
    return all(x is None or y is None or x == y for x, y in zip(a.shape, b.shape))
