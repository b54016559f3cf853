"""Folds an inference-mode BatchNormalization into the Conv (or ConvTranspose) before it.

    %c = Conv(%x, %W, %b)
    %y = BatchNormalization(%c, %gamma, %beta, %mean, %var) {epsilon}
        ->   %y = Conv(%x, %W', %b')

BatchNormalization computes, per output channel m,

    y[m] = s[m] * (c[m] - mean[m]) + beta[m]        with  s = gamma / sqrt(var + epsilon)

and c[m] = (W[m] * x) + b[m], so

    W'[m] = s[m] * W[m]                      (every weight feeding output channel m)
    b'[m] = s[m] * (b[m] - mean[m]) + beta[m]   (b = 0 when the Conv has no bias)

A ConvTranspose's weight is [C_in, M / group, k...]; output channel g * (M / group) + j
reads W[c, j] for the input channels c of group g, which is where s is applied. The new
weights are computed in float64 and stored in the weight's dtype.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Node, Value
from kiln.passes.pipeline import PassContext, register_pass

CONVS = ("Conv", "ConvTranspose")


@register_pass("fuse", priority=10)
def fuse_conv_bn(graph: Graph, ctx: PassContext) -> bool:
    """Folds BatchNormalization (inference) into the preceding Conv's weights and bias."""
    count = 0
    for g in list(graph.walk_graphs()):
        for bn in list(g.nodes):
            if bn.op_type != "BatchNormalization" or bn.domain:
                continue
            conv = _conv_before(bn)
            if conv is None:
                continue
            reason = fusion_blocker(conv, bn, g)
            if reason:
                ctx.note(f"fuse_conv_bn: {bn.name} not fused into {conv.name}: {reason}")
                continue
            _fuse(g, conv, bn)
            count += 1
    ctx.count("fuse_conv_bn", count)
    return count > 0


def _conv_before(bn: Node) -> Node | None:
    source = bn.inputs[0] if bn.inputs else None
    producer = source.producer if source is not None else None
    if producer is None or producer.op_type not in CONVS or producer.domain:
        return None
    return producer


def fusion_blocker(conv: Node, bn: Node, graph: Graph) -> str | None:
    """Why `bn` cannot be folded into `conv`, or None when it can."""
    conv_out = conv.outputs[0]
    if conv.graph is not graph:
        return "the Conv is in an enclosing graph"
    if bn.attrs.get("training_mode", 0):
        return "training_mode=1 normalizes with batch statistics"
    if not bn.attrs.get("spatial", 1):
        return "spatial=0 (opset < 9) keeps statistics per element, not per channel"
    extra = [v for v in bn.outputs[1:] if v is not None and (v.consumers or _is_output(v, graph))]
    if extra:
        return f"its statistics output {extra[0].name} is used"
    users = [n.name for n in conv_out.consumers if n is not bn]  # type: ignore[union-attr]
    if users or _is_output(conv_out, graph) or len(conv_out.consumers) != 1:  # type: ignore[union-attr]
        return f"the Conv output is also used by {', '.join(users) or 'the graph outputs'}"
    params = bn.inputs[1:5]
    if len(params) != 4 or any(p is None or not p.is_const for p in params):
        return "scale, bias, mean and variance must be constants"
    weight = conv.inputs[1] if len(conv.inputs) > 1 else None
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    if weight is None or not weight.is_const or (bias is not None and not bias.is_const):
        return "the Conv weight and bias must be constants"
    if weight.const.dtype.kind != "f":
        return f"the Conv weight is {weight.const.dtype}, not floating point"
    channels = _out_channels(conv, weight.const)
    if channels is None:
        return "the Conv weight shape does not match its group attribute"
    shapes = {tuple(p.const.shape) for p in params}  # type: ignore[union-attr]
    if bias is not None:
        shapes.add(tuple(bias.const.shape))
    if shapes != {(channels,)}:
        return (f"parameter shapes {sorted(shapes)} do not all match the Conv's "
                f"{channels} output channels")
    return None


def _is_output(value: Value, graph: Graph) -> bool:
    return any(v is value for g in graph.root().walk_graphs() for v in g.outputs)


def _out_channels(conv: Node, weight: np.ndarray) -> int | None:
    if weight.ndim < 2:
        return None
    if conv.op_type == "Conv":
        return int(weight.shape[0])
    group = int(conv.attrs.get("group", 1))
    if group < 1 or weight.shape[0] % group:
        return None
    return int(weight.shape[1]) * group


def folded_weights(conv: Node, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """W' and b' (see the module docstring)."""
    gamma, beta, mean, var = (p.const.astype(np.float64) for p in bn.inputs[1:5])  # type: ignore[union-attr]
    weight = conv.inputs[1].const  # type: ignore[union-attr]
    bias_in = conv.inputs[2] if len(conv.inputs) > 2 else None
    bias = bias_in.const.astype(np.float64) if bias_in is not None else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    w = weight.astype(np.float64)
    if conv.op_type == "Conv":
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    else:
        group = int(conv.attrs.get("group", 1))
        grouped = w.reshape(group, w.shape[0] // group, *w.shape[1:])
        grouped = grouped * scale.reshape(group, 1, w.shape[1], *([1] * (w.ndim - 2)))
        w = grouped.reshape(w.shape)
    new_bias = (bias - mean) * scale + beta
    return w.astype(weight.dtype), new_bias.astype(weight.dtype)


def _fuse(graph: Graph, conv: Node, bn: Node) -> None:
    weight, bias = folded_weights(conv, bn)
    w_value = conv.inputs[1]
    conv.set_inputs([conv.inputs[0],
                     graph.constant(weight, name=f"{w_value.name}_bn"),  # type: ignore[union-attr]
                     graph.constant(bias, name=f"{conv.name}_bn_bias")])
    result = bn.outputs[0]
    bn.set_outputs([None] * len(bn.outputs))
    graph.remove_node(bn)
    conv.set_outputs([result])  # the BN's output keeps its name (it may be a graph output)
