"""Replaces scaled dot-product attention, as torch and Hugging Face exports spell it, with
one `kiln.Attention` node (which tactics run as flash / memory-efficient attention).

    s = MatMul(q, kT) [* c or / c] [+ mask];  p = Softmax(s, -1);  o = MatMul(p, v)
    or, as torch's SDPA exports:  MatMul(Mul(q, c1), Mul(kT, c2)), and with the guard
    Where(IsNaN(p), 0, p) on the probabilities (kept as the `zero_nan_rows` attribute)

The scale is the product of the constant factors. Transposes that only move heads
([B,S,H,D] -> [B,H,S,D], and the key's transpose to [B,H,D,S]) are absorbed as layouts,
and so is the transpose of the output back to [B,S,H,D], so no copies remain.
"""

from __future__ import annotations

from kiln.ir import Graph, Node, Value
from kiln.passes._match import fused_names, only_consumer, other_input, remove_chain, scalar
from kiln.passes.pipeline import PassContext, register_pass

HEADS_TO_FRONT = [0, 2, 1, 3]  # [B,S,H,D] <-> [B,H,S,D]
KEY_TRANSPOSED = [0, 2, 3, 1]  # [B,S,H,D] -> [B,H,D,S]
LAST_TWO = [0, 1, 3, 2]  # [B,H,S,D] -> [B,H,D,S]


@register_pass("fuse", priority=50)
def fuse_attention(graph: Graph, ctx: PassContext) -> bool:
    """Fuses MatMul -> scale -> mask -> Softmax -> MatMul into kiln.Attention."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is g and node.op_type == "Softmax" and not node.domain:
                changed |= _fuse(g, node)
    return changed


def _fuse(graph: Graph, softmax: Node) -> bool:
    x = softmax.inputs[0]
    default_axis = -1 if graph.opsets.get("", 13) >= 13 else 1  # opset < 13: flattened at 1
    if x is None or x.rank != 4 or softmax.attrs.get("axis", default_axis) not in (-1, 3):
        return False
    probs, guard = softmax.output, _nan_guard(softmax.output, graph)
    if guard:
        probs = guard[-1].output
    out_mm = only_consumer(probs, graph)
    if out_mm is None or out_mm.op_type != "MatMul" or out_mm.inputs[0] is not probs:
        return False
    chain: list[Node] = [softmax, *guard, out_mm]
    scale, mask, scores = 1.0, None, x
    node = scores.producer
    if node is not None and node.op_type == "Add" and only_consumer(scores, graph) is softmax:
        a, b = node.inputs
        mm_side = a if _leads_to_matmul(a) else b
        mask = other_input(node, mm_side) if mm_side is not None else None
        if mask is None or mask.rank is None or mask.rank > 4:
            return False
        chain.insert(0, node)
        scores = mm_side
    factor, scores, scaled = _strip_scale(scores, graph)
    scale *= factor
    chain[0:0] = scaled
    qk = scores.producer if scores is not None else None
    if qk is None or qk.op_type != "MatMul" or only_consumer(scores, graph) is None:
        return False
    chain.insert(0, qk)
    fq, q, q_nodes = _strip_scale(qk.inputs[0], graph)
    fk, kt, k_nodes = _strip_scale(qk.inputs[1], graph)
    scale *= fq * fk
    chain[0:0] = q_nodes + k_nodes
    if q is None or kt is None or q.rank != 4 or kt.rank != 4:
        return False
    q, q_layout, q_t = _peel(q, HEADS_TO_FRONT, "bshd", graph)
    k, k_layout, k_t = _key(kt, graph)
    v, v_layout, v_t = _peel(out_mm.inputs[1], HEADS_TO_FRONT, "bshd", graph)
    out, out_layout = out_mm.output, "bhsd"
    after = only_consumer(out, graph)
    if after is not None and after.op_type == "Transpose" and after.attrs.get(
            "perm") == HEADS_TO_FRONT:
        out, out_layout = after.output, "bshd"
        chain.append(after)
    chain = [*q_t, *k_t, *v_t, *chain]
    attrs = {"scale": float(scale), "q_layout": q_layout, "k_layout": k_layout,
             "v_layout": v_layout, "out_layout": out_layout}
    if guard:
        attrs["zero_nan_rows"] = 1
    fused = graph.add_node("Attention", [q, k, v, mask], attrs, domain="kiln",
                           name=f"{softmax.name}_attention", before=out_mm)
    fused.meta["fused"] = fused_names(chain)
    fused.output.dtype, fused.output.shape = out.dtype, out.shape
    graph.replace_all_uses(out, fused.output)
    remove_chain(graph, chain)
    return True


def _nan_guard(probs: Value, graph: Graph) -> list[Node]:
    """[IsNaN, Where] when the probabilities go through Where(IsNaN(p), 0, p), as torch's
    scaled_dot_product_attention exports (rows whose mask removed every key)."""
    isnan = next((n for n in probs.consumers if n.op_type == "IsNaN"), None)
    where = next((n for n in probs.consumers if n.op_type == "Where"), None)
    if len(probs.consumers) != 2 or isnan is None or where is None:
        return []
    if only_consumer(isnan.output, graph) is not where or where.inputs[0] is not isnan.output:
        return []
    if where.inputs[2] is not probs or scalar(where.inputs[1]) != 0.0:
        return []
    return [isnan, where]


def _leads_to_matmul(value: Value | None) -> bool:
    """Whether `value` is a MatMul output, possibly scaled by constants."""
    while value is not None and value.producer is not None:
        node = value.producer
        if node.op_type == "MatMul":
            return True
        if node.op_type in ("Mul", "Div") and any(scalar(v) is not None for v in node.inputs):
            value = node.inputs[0] if scalar(node.inputs[1]) is not None else node.inputs[1]
            continue
        return False
    return False


def _strip_scale(value: Value | None, graph: Graph) -> tuple[float, Value | None, list[Node]]:
    """Peels Mul/Div by scalar constants; returns (factor, the unscaled value, the nodes)."""
    factor, nodes = 1.0, []
    while value is not None and value.producer is not None and only_consumer(value, graph):
        node = value.producer
        if node.op_type == "Mul":
            c0, c1 = scalar(node.inputs[0]), scalar(node.inputs[1])
            if c1 is not None:
                factor, value = factor * c1, node.inputs[0]
            elif c0 is not None:
                factor, value = factor * c0, node.inputs[1]
            else:
                break
        elif node.op_type == "Div" and scalar(node.inputs[1]) not in (None, 0.0):
            factor, value = factor / scalar(node.inputs[1]), node.inputs[0]
        else:
            break
        nodes.insert(0, node)
    return factor, value, nodes


def _peel(value: Value | None, perm: list[int], layout: str, graph: Graph):
    node = value.producer if value is not None else None
    if node is not None and node.op_type == "Transpose" and node.attrs.get("perm") == perm \
            and only_consumer(value, graph) is not None:
        return node.inputs[0], layout, [node]
    return value, "bhsd", []


def _key(kt: Value, graph: Graph):
    node = kt.producer
    if node is not None and node.op_type == "Transpose" and only_consumer(kt, graph):
        perm = node.attrs.get("perm")
        if perm == KEY_TRANSPOSED:
            return node.inputs[0], "bshd", [node]
        if perm == LAST_TWO:
            return node.inputs[0], "bhsd", [node]
    return kt, "bhds", []
