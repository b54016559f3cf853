"""Merges runs of element-wise ops into one `kiln.Elementwise` node (one generated kernel).

    a = Mul(x, y); b = Add(a, z); c = Sigmoid(b)   ->   c = Elementwise(x, y, z)
        {program: [["Mul", ["i0", "i1"], []], ["Add", ["t0", "i2"], []], ["Sigmoid", ["t1"], []]]}

A group grows from a node backwards through producers whose only reader is inside the
group, so every intermediate lives in registers and each input is read once. Scalar
constants become literals of the program; other operands (bias vectors, masks) are inputs
and broadcast as numpy does. Only float tensors of known type are fused; a group that
computes Exp, Log or a power keeps float32 in FP16 engines (`meta["fp16_ok"]`).
"""

from __future__ import annotations

from kiln.ir import DType, Graph, Node, Value
from kiln.ops.elementwise_program import OPS
from kiln.passes._match import fused_names, scalar
from kiln.passes.pipeline import PassContext, register_pass

MAX_INPUTS = 8
SENSITIVE = {"Exp", "Log", "Cube", "Softplus"}
_POWERS = {2.0: "Square", 3.0: "Cube", 0.5: "Sqrt"}


@register_pass("fuse", priority=90)
def fuse_elementwise(graph: Graph, ctx: PassContext) -> bool:
    """Fuses chains of element-wise float ops into one generated kernel."""
    changed = False
    for g in list(graph.walk_graphs()):
        grouped: set[int] = set()
        for node in reversed(list(g.nodes)):
            if id(node) in grouped or node.graph is not g or _instruction(node) is None:
                continue
            group = _grow(g, node)
            grouped.update(id(n) for n in group)
            if len(group) > 1 and _fuse(g, group):
                changed = True
    return changed


def _instruction(node: Node) -> tuple[str, list[Value | float], list[float]] | None:
    """(op, operands, params) when the node can join a program, else None."""
    out = node.outputs[0] if node.outputs else None
    if out is None or len(node.outputs) != 1 or out.dtype not in (DType.FLOAT, DType.FLOAT16):
        return None
    op, inputs = node.op_type, list(node.inputs)
    if node.domain == "kiln" and op == "Gelu":
        return ("GeluTanh" if node.attrs.get("approximate") == "tanh" else "GeluErf",
                inputs[:1], [])
    if node.domain == "kiln" and op == "HardSwish":
        return ("HardSwish", inputs[:1], [])
    if node.domain:
        return None
    if op == "Pow":
        exponent = scalar(inputs[1])
        return (_POWERS[exponent], inputs[:1], []) if exponent in _POWERS else None
    if op == "Clip":
        lo = node.attrs.get("min", scalar(inputs[1]) if len(inputs) > 1 and inputs[1] else None)
        hi = node.attrs.get("max", scalar(inputs[2]) if len(inputs) > 2 and inputs[2] else None)
        if (len(inputs) > 1 and inputs[1] is not None and lo is None) or (
                len(inputs) > 2 and inputs[2] is not None and hi is None):
            return None
        return "Clip", inputs[:1], [-3.4e38 if lo is None else lo, 3.4e38 if hi is None else hi]
    if op not in OPS or op in ("Square", "Cube") or len(inputs) != OPS[op].arity:
        return None
    params = {"LeakyRelu": [node.attrs.get("alpha", 0.01)], "Elu": [node.attrs.get("alpha", 1.0)],
              "HardSigmoid": [node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)]}
    if any(v is None or v.dtype not in (DType.FLOAT, DType.FLOAT16, None) for v in inputs):
        return None
    return op, inputs, params.get(op, [])


def _grow(graph: Graph, root: Node) -> list[Node]:
    """The root and, recursively, producers read only by the group."""
    group = [root]
    frontier = [root]
    while frontier:
        node = frontier.pop()
        for value in node.inputs:
            producer = value.producer if value is not None else None
            if producer is None or producer in group or producer.graph is not graph:
                continue
            if _instruction(producer) is None or any(value is o for o in graph.outputs):
                continue
            if all(consumer in group for consumer in value.consumers):
                group.append(producer)
                frontier.append(producer)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return sorted(group, key=lambda n: order[id(n)])


def _literal(operand: Value | None, rank: int) -> float | None:
    """A scalar constant that can be written into the program without changing the
    result's shape (its rank adds no dims)."""
    number = scalar(operand) if operand is not None else None
    if number is None or operand is None or operand.const.ndim > rank:
        return None
    return number


def _fuse(graph: Graph, group: list[Node]) -> bool:
    inside = {id(n.outputs[0]): i for i, n in enumerate(group)}
    inputs: list[Value] = []
    program = []
    sensitive = False
    for node in group:
        op, operands, params = _instruction(node)  # type: ignore[misc]
        sensitive |= op in SENSITIVE
        args: list[str | float] = []
        rank = max((v.rank or 0 for v in operands if isinstance(v, Value)), default=0)
        for operand in operands:
            number = _literal(operand, rank)
            if isinstance(operand, Value) and id(operand) in inside:
                args.append(f"t{inside[id(operand)]}")
            elif number is not None:
                args.append(number)
            else:
                if operand not in inputs:
                    inputs.append(operand)
                args.append(f"i{inputs.index(operand)}")
        program.append([op, args, [float(p) for p in params]])
    if len(inputs) > MAX_INPUTS or not inputs:
        return False
    result = group[-1].outputs[0]
    fused = graph.add_node("Elementwise", inputs, {"program": program}, domain="kiln",
                           name=f"{group[-1].name}_elementwise", before=group[-1])
    fused.meta["fused"] = fused_names(group)
    fused.meta["fp16_ok"] = not sensitive
    fused.output.dtype, fused.output.shape = result.dtype, result.shape
    graph.replace_all_uses(result, fused.output)
    for node in reversed(group):
        graph.remove_node(node)
    return True
