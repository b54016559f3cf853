"""Replaces hard-swish spelled out by exporters (MobileNetV3, PP-OCR) with one
`kiln.HardSwish` node, which the convolution and GEMM epilogues then take in:

    x * Clip(x + 3, 0, 6) / 6       Add -> Clip -> Mul(x) -> Div(6) or Mul(1/6)
    x * (Clip(x + 3, 0, 6) / 6)     Add -> Clip -> Div(6) or Mul(1/6) -> Mul(x)
    x * HardSigmoid(x, 1/6, 0.5)    HardSigmoid -> Mul(x)

(a kiln-domain node, so graphs of opset < 14, which lack HardSwish, can hold it).
"""

from __future__ import annotations

from kiln.ir import Graph, Node, Value
from kiln.passes._activation import match_clip_bounds
from kiln.passes._match import close, fused_names, only_consumer, other_input, remove_chain, scalar
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("fuse", priority=12)
def fuse_hardswish(graph: Graph, ctx: PassContext) -> bool:
    """Replaces x * relu6(x + 3) / 6 and x * HardSigmoid(x) with kiln.HardSwish."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is not g or node.domain:
                continue
            if node.op_type == "Clip":
                changed |= _fuse(g, *_from_clip(g, node))
            elif node.op_type == "HardSigmoid":
                changed |= _fuse(g, *_from_hard_sigmoid(g, node))
    return changed


def _from_clip(graph: Graph, clip: Node) -> tuple[Value | None, list[Node]]:
    """x and the chain's nodes when `clip` is the Clip(x + 3, 0, 6) of a hard-swish."""
    add = clip.inputs[0].producer if clip.inputs[0] is not None else None
    if add is None or add.op_type != "Add" or add.domain or match_clip_bounds(clip) != (0, 6):
        return None, []
    x = next((v for v in add.inputs if v is not None and close(scalar(other_input(add, v)), 3)),
             None)
    if x is None or only_consumer(add.output, graph) is not clip:
        return None, []
    step = only_consumer(clip.output, graph)
    if step is None or step.domain:
        return None, []
    if step.op_type == "Mul" and other_input(step, clip.output) is x:  # x * relu6, then / 6
        last = _sixth(graph, step.output)
        return (x, [add, clip, step, last]) if last is not None else (None, [])
    if _is_sixth(step, clip.output):  # relu6 / 6, then * x
        mul = only_consumer(step.output, graph)
        if mul is not None and mul.op_type == "Mul" and other_input(mul, step.output) is x:
            return x, [add, clip, step, mul]
    return None, []


def _from_hard_sigmoid(graph: Graph, node: Node) -> tuple[Value | None, list[Node]]:
    x = node.inputs[0]
    if not (close(node.attrs.get("alpha", 0.2), 1 / 6) and close(node.attrs.get("beta", 0.5), 0.5)):
        return None, []
    mul = only_consumer(node.output, graph)
    if mul is None or mul.op_type != "Mul" or mul.domain or other_input(mul, node.output) is not x:
        return None, []
    return x, [node, mul]


def _sixth(graph: Graph, value: Value) -> Node | None:
    """The node dividing `value` by 6 (or multiplying it by 1/6), if that is its one use."""
    node = only_consumer(value, graph)
    return node if node is not None and not node.domain and _is_sixth(node, value) else None


def _is_sixth(node: Node, value: Value) -> bool:
    if node.op_type == "Div":
        return node.inputs[0] is value and close(scalar(node.inputs[1]), 6)
    return node.op_type == "Mul" and close(scalar(other_input(node, value)), 1 / 6)


def _fuse(graph: Graph, x: Value | None, chain: list[Node]) -> bool:
    if x is None:
        return False
    if any(only_consumer(n.output, graph) is None for n in chain[:-1]):
        return False  # an intermediate is used elsewhere: keep the formula
    result = chain[-1].output
    node = graph.add_node("HardSwish", [x], {}, domain="kiln",
                          name=f"{chain[0].name}_hardswish", before=chain[0])
    node.meta["fused"] = fused_names(chain)
    node.output.dtype, node.output.shape = result.dtype, result.shape
    graph.replace_all_uses(result, node.output)
    remove_chain(graph, chain)
    return True
