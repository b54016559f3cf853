"""Replaces GELU spelled out by exporters with one `kiln.Gelu` node.

Erf form (BERT, ViT):  0.5 * x * (1 + erf(x / sqrt(2)))
    Div(x, 1.4142) or Mul(x, 0.7071) -> Erf -> Add(1) -> Mul(x) -> Mul(0.5)
    (or the 0.5 applied to x first: Mul(Mul(x, 0.5), Add(Erf(..), 1)))
Tanh form (GPT-2):     0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
    the cube as Pow(x, 3) or as a product of three x (jax2tf: x * (x * (0.044715 * x))),
    the tail as x * (1 + tanh) * 0.5, (x * 0.5) * (1 + tanh) or x * ((1 + tanh) * 0.5)
"""

from __future__ import annotations

import math

from kiln.ir import Graph, Node, Value
from kiln.passes._match import (
    close,
    fused_names,
    only_consumer,
    other_input,
    producer,
    remove_chain,
    scalar,
)
from kiln.passes.pipeline import PassContext, register_pass

SQRT2 = math.sqrt(2.0)


@register_pass("fuse", priority=10)
def fuse_gelu(graph: Graph, ctx: PassContext) -> bool:
    """Replaces the exported erf/tanh GELU formulas with kiln.Gelu."""
    changed = False
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if node.graph is not g or node.domain:
                continue
            if node.op_type == "Erf":
                changed |= _fuse(g, node, _erf_input(node), "none")
            elif node.op_type == "Tanh":
                changed |= _fuse(g, node, _tanh_input(node), "tanh")
    return changed


def _erf_input(erf: Node) -> tuple[Value, list[Node]] | None:
    """x when erf's input is x / sqrt(2)."""
    scaled = erf.inputs[0].producer if erf.inputs[0] is not None else None
    if scaled is None or scaled.domain:
        return None
    if scaled.op_type == "Div" and close(scalar(scaled.inputs[1]), SQRT2):
        return scaled.inputs[0], [scaled]
    if scaled.op_type == "Mul":
        for x, c in ((scaled.inputs[0], scaled.inputs[1]), (scaled.inputs[1], scaled.inputs[0])):
            if close(scalar(c), 1 / SQRT2):
                return x, [scaled]
    return None


def _tanh_input(tanh: Node) -> tuple[Value, list[Node]] | None:
    """x when tanh's input is sqrt(2/pi) * (x + 0.044715 * x^3)."""
    outer = producer(tanh.inputs[0], "Mul")
    if outer is None:
        return None
    for inner_v, c in _operand_pairs(outer):
        add = producer(inner_v, "Add")
        if add is None or not close(scalar(c), math.sqrt(2 / math.pi)):
            continue
        for x, cubic_v in _operand_pairs(add):
            cube = _scaled_cube(cubic_v, x)
            if cube is not None:
                return x, [*cube, add, outer]
    return None


def _scaled_cube(value: Value | None, x: Value | None) -> list[Node] | None:
    """The nodes computing `value` = 0.044715 * x^3 (in their order), if it is that."""
    factors: list[Value] = []
    constants: list[float] = []
    nodes: list[Node] = []

    def expand(v: Value | None, top: bool) -> bool:
        c = scalar(v)
        if c is not None:
            constants.append(c)
            return True
        if v is x:
            factors.append(v)
            return True
        node = v.producer if v is not None else None
        if node is None or node.domain or (not top and len(v.consumers) != 1):
            return False
        if node.op_type == "Pow" and node.inputs[0] is x and scalar(node.inputs[1]) in (2, 3):
            factors.extend([x] * int(scalar(node.inputs[1])))
            nodes.insert(0, node)
            return True
        if node.op_type != "Mul":
            return False
        nodes.insert(0, node)
        return expand(node.inputs[0], False) and expand(node.inputs[1], False)

    if x is None or not expand(value, True) or len(factors) != 3 or len(constants) != 1:
        return None
    return nodes if close(constants[0], 0.044715) else None


def _operand_pairs(node: Node) -> list[tuple[Value | None, Value | None]]:
    a, b = node.inputs[0], node.inputs[1]
    return [(a, b), (b, a)]


def _fuse(graph: Graph, fn_node: Node, matched: tuple[Value, list[Node]] | None,
          approximate: str) -> bool:
    if matched is None:
        return False
    x, prefix = matched
    add = only_consumer(fn_node.output, graph)
    if add is None or add.op_type != "Add" or not close(
            scalar(other_input(add, fn_node.output)), 1.0):
        return False
    mul = only_consumer(add.output, graph)
    if mul is None or mul.op_type != "Mul":
        return False
    other = other_input(mul, add.output)
    tail: list[Node] = [add, mul]
    if close(scalar(other), 0.5):  # (1 + erf) * 0.5, then * x
        last = only_consumer(mul.output, graph)
        if last is None or last.op_type != "Mul" or other_input(last, mul.output) is not x:
            return False
        tail.append(last)
    elif other is x:  # x * (1 + erf) then * 0.5
        half = only_consumer(mul.output, graph)
        if half is None or half.op_type != "Mul" or not close(
                scalar(other_input(half, mul.output)), 0.5):
            return False
        tail.append(half)
    else:  # (x * 0.5) * (1 + erf)
        first = other.producer if other is not None else None
        if first is None or first.op_type != "Mul" or only_consumer(other, graph) is not mul:
            return False
        if not (close(scalar(other_input(first, x)), 0.5) and x in first.inputs):
            return False
        prefix = [first, *prefix]
    if any(only_consumer(n.output, graph) is None for n in [*prefix, fn_node]):
        return False  # an intermediate is used elsewhere: keep the formula
    result = tail[-1].output
    node = graph.add_node("Gelu", [x], {"approximate": approximate}, domain="kiln",
                          name=f"{fn_node.name}_gelu", before=prefix[0] if prefix else fn_node)
    node.meta["fused"] = fused_names([*prefix, fn_node, *tail])
    node.output.dtype, node.output.shape = result.dtype, result.shape
    graph.replace_all_uses(result, node.output)
    remove_chain(graph, [*prefix, fn_node, *tail])
    return True
