"""Small helpers the fusion passes share for matching chains of nodes."""

from __future__ import annotations

import numpy as np

from kiln.ir import Graph, Node, Value


def only_consumer(value: Value | None, graph: Graph) -> Node | None:
    """The single node reading `value`, if exactly one does and it is no graph output."""
    if value is None or len(value.consumers) != 1 or any(value is v for v in graph.outputs):
        return None
    node = value.consumers[0]
    return node if node.graph is graph else None


def producer(value: Value | None, op_type: str, domain: str = "") -> Node | None:
    node = value.producer if value is not None else None
    if node is None or node.op_type != op_type or node.domain != domain:
        return None
    return node


def static_shapes(*values: Value | None) -> list[list[int]] | None:
    """Each value's shape when every one of them is fully static, else None."""
    shapes = [v.static_shape if v is not None else None for v in values]
    return None if any(s is None for s in shapes) else [list(s) for s in shapes]


def const(value: Value | None) -> np.ndarray | None:
    return value.const if value is not None and value.is_const else None


def scalar(value: Value | None) -> float | None:
    """The value of a constant holding a single number, else None."""
    array = const(value)
    if array is None or array.size != 1 or array.dtype.kind not in "fiu":
        return None
    return float(array.reshape(-1)[0])


def other_input(node: Node, value: Value) -> Value | None:
    """For a binary node reading `value`, its other input."""
    a, b = node.inputs[0], node.inputs[1]
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def close(a: float | None, b: float, tol: float = 1e-3) -> bool:
    return a is not None and abs(a - b) <= tol * max(1.0, abs(b))


def remove_chain(graph: Graph, nodes: list[Node]) -> None:
    """Removes replaced nodes, last first (their outputs must already be unused)."""
    for node in reversed(nodes):
        if node.graph is graph and all(
                v is None or (not v.consumers and not any(v is o for o in graph.outputs))
                for v in node.outputs):
            graph.remove_node(node)


def fused_names(nodes: list[Node]) -> list[str]:
    names: list[str] = []
    for node in nodes:
        names.extend(node.meta.get("fused", [node.name]))
    return names
