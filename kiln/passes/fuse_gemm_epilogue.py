"""Replaces `act(MatMul(a, W) + bias)` and `act(Gemm(a, B, C))` with `kiln.FusedGemm`.

    m = MatMul(a, W); s = Add(m, b); y = Gelu(s)   ->   y = FusedGemm(a, W, b) {GeluErf}

W must be a constant 2-D matrix (a learned weight, which the tactic may re-lay out; a
MatMul with such a weight and nothing after it becomes a FusedGemm too, so every dense
layer gets the GEMM tactics); the
bias a constant broadcasting over the last axis only ([N] or [1, ..., N]). Gemm is taken
when it is a plain product (alpha = beta = 1, no transA, C a per-column vector).
"""

from __future__ import annotations

from kiln.ir import Graph, Node, Value
from kiln.passes._activation import match_activation
from kiln.passes._match import const, fused_names, only_consumer, other_input, remove_chain
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("fuse", priority=40)
def fuse_gemm_epilogue(graph: Graph, ctx: PassContext) -> bool:
    """Fuses bias Add and activation into a MatMul/Gemm with constant weights."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is not g or node.domain:
                continue
            if node.op_type == "MatMul":
                changed |= _fuse_matmul(g, node)
            elif node.op_type == "Gemm":
                changed |= _fuse_gemm(g, node)
    return changed


def _fuse_matmul(graph: Graph, matmul: Node) -> bool:
    a, w = matmul.inputs
    weight = const(w)
    if a is None or weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
        return False
    chain, out, bias = _epilogue_bias(graph, matmul, matmul.output, weight.shape[1])
    return _replace(graph, a, w, bias, 0, chain, out)


def _fuse_gemm(graph: Graph, gemm: Node) -> bool:
    a, b = gemm.inputs[0], gemm.inputs[1]
    c = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    attrs = gemm.attrs
    if a is None or const(b) is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
        return False
    trans_b = int(attrs.get("transB", 0))
    n = const(b).shape[0 if trans_b else 1]
    bias = None
    if c is not None:
        if attrs.get("beta", 1.0) != 1.0 or _column_bias(c, n) is None:
            return False
        bias = c
    chain, out, extra = _epilogue_bias(graph, gemm, gemm.output, n)
    if extra is not None:
        if bias is not None:
            return False  # two biases: leave it to constant folding of a simpler graph
        bias = extra
    return _replace(graph, a, b, bias, trans_b, chain, out)


def _epilogue_bias(graph: Graph, first: Node, out: Value, n: int):
    chain = [first]
    bias = None
    add = only_consumer(out, graph)
    if add is not None and add.op_type == "Add" and not add.domain:
        other = other_input(add, out)
        if _column_bias(other, n) is not None:
            bias = other
            chain.append(add)
            out = add.output
    return chain, out, bias


def _column_bias(value: Value | None, n: int):
    array = const(value)
    if array is None or array.dtype.kind != "f" or array.shape[-1:] != (n,):
        return None
    return array if all(d == 1 for d in array.shape[:-1]) else None


def _replace(graph: Graph, a: Value, w: Value, bias: Value | None, trans_b: int,
             chain: list[Node], out: Value) -> bool:
    activation = match_activation(out, graph)
    if activation is not None:
        chain = chain + activation.nodes
        out = activation.output
    if bias is not None and const(bias).ndim != 1:
        bias = graph.constant(const(bias).reshape(-1), f"{bias.name}_vector")
    attrs: dict = {"trans_b": trans_b}
    if activation is not None:
        attrs["activation"] = activation.name
        if activation.params:
            attrs["activation_params"] = activation.params
    fused = graph.add_node("FusedGemm", [a, w, bias], attrs, domain="kiln",
                           name=f"{chain[0].name}_fused", before=chain[-1])
    fused.meta["fused"] = fused_names(chain)
    fused.output.dtype, fused.output.shape = out.dtype, out.shape
    graph.replace_all_uses(out, fused.output)
    remove_chain(graph, chain)
    return True
