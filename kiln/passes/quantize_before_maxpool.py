"""Moves the quantize step after a max-pool in front of it, into the quantized layer
that feeds the pool.

    y = QConv(..); m = MaxPool(y); q = Quantize(m) {s}
        ->   yq = QConv(..) {out_scale=s}; q = MaxPool(yq)

Quantizing is monotone (round(x / s) + zero point, saturated, s > 0), so the largest
quantized value of a window is the quantized largest value: the result is the same
bytes. ResNet's INT8 stem otherwise writes its output in FP16, the pool reads it and
writes FP16, and a quantize step reads that again (at batch 64: 103 + 103 + 26 + 26 +
13 MB); with the pool on INT8, 51 + 51 + 13 MB. The layer takes the moved step as its
requantizing epilogue on lower_qdq's next round.
"""

from __future__ import annotations

from kiln.ir import Graph, Node, Value
from kiln.passes._match import only_consumer
from kiln.passes.lower_qdq import QUANTIZED_OPS, qtype_dtype, quantize_key, requantize_key
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("fuse", priority=82)  # after lower_qdq, whose next round fuses the step
def quantize_before_maxpool(graph: Graph, ctx: PassContext) -> bool:
    """Swaps MaxPool -> Quantize where a quantized layer alone feeds the pool."""
    return move_quantize_before_ops(graph, ctx, ("MaxPool",), "quantize_before_maxpool")


def move_quantize_before_ops(graph: Graph, ctx: PassContext, ops: tuple[str, ...],
                             counter: str, through: tuple[str, ...] = ()) -> bool:
    """move_quantize_before on every ONNX node of `ops`, counted under `counter`."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is g and not node.domain and node.op_type in ops:
                swapped = move_quantize_before(g, node, through)
                ctx.count(counter, int(swapped))
                changed |= swapped
    return changed


def move_quantize_before(graph: Graph, pool: Node, through: tuple[str, ...] = ()) -> bool:
    """Runs the quantize step that reads `pool`'s first output before the node instead,
    where a float output of a layer that can take the step is `pool`'s first input, found
    through a chain of `through` nodes each read by the next alone, and nothing else reads
    `pool`'s input or output. Only for nodes the quantize step commutes with (max-pool,
    views); the step moves one node per call, so a chain takes a call per node."""
    if any(v is not None for v in pool.outputs[1:]):  # the indices output is read
        return False
    y, m = pool.inputs[0], pool.outputs[0]
    layer = _taker(y, graph, through)
    if (layer is None or only_consumer(y, graph) is not pool
            or not m.consumers or any(m is v for v in graph.outputs)):
        return False
    readers = list(m.consumers)
    key = _step_key(layer, readers)
    if key is None:
        return False
    qtype = key[2]
    step = readers[0]
    for other in readers[1:]:  # steps of one scale and type: one is enough
        graph.replace_all_uses(other.outputs[0], step.outputs[0])
        graph.remove_node(other)
    result = step.outputs[0]
    yq = Value(graph.fresh_name(f"{y.name}_quantized"), qtype_dtype(qtype), y.shape)
    step.set_inputs([y, *step.inputs[1:]])
    step.set_outputs([yq])
    pool.set_input(0, yq)
    pool.set_outputs([result, *pool.outputs[1:]])
    graph.nodes.remove(step)  # the step now runs before the pool
    graph.insert(step, before=pool)
    return True


def _taker(y: Value | None, graph: Graph, through: tuple[str, ...]) -> Node | None:
    """The node that will take the step as its epilogue: a quantized layer that does not
    requantize yet, or (through views) a LayerNorm that does not quantize yet
    (fuse_layernorm_quantize), reached from y through `through` nodes."""
    layer = y.producer if y is not None else None
    while (through and layer is not None and not layer.domain and layer.op_type in through
           and only_consumer(layer.inputs[0], graph) is layer):
        layer = layer.inputs[0].producer
    if layer is None or layer.domain != "kiln":
        return None
    if layer.op_type in QUANTIZED_OPS:
        return None if layer.attrs.get("out_scale") else layer
    quantizes = len(layer.outputs) > 2 and layer.outputs[2] is not None
    return layer if through and layer.op_type == "LayerNorm" and not quantizes else None


def _step_key(layer: Node, readers: list[Node]) -> tuple[float, int, str] | None:
    if layer.op_type in QUANTIZED_OPS:
        return requantize_key(layer, readers)
    keys = {quantize_key(q) for q in readers}  # a LayerNorm writes any per-tensor step
    return keys.pop() if len(keys) == 1 and None not in keys else None
