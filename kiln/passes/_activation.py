"""Recognizing the activation that follows a value, for epilogue fusions.

Returns the activation's name as kiln's fused ops spell it (kiln/ops/fused.py
ACTIVATIONS), its parameters, the nodes it spans and the value it produces. SiLU is
matched in its exported form `y * Sigmoid(y)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir import Graph, Node, Value
from kiln.passes._match import only_consumer, scalar

_SIMPLE = {"Relu": "Relu", "Sigmoid": "Sigmoid", "Tanh": "Tanh", "HardSwish": "HardSwish"}


@dataclass
class Activation:
    name: str
    params: list[float] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    output: Value | None = None


def match_activation(value: Value, graph: Graph) -> Activation | None:
    silu = _match_silu(value, graph)
    if silu is not None:
        return silu
    node = only_consumer(value, graph)
    if node is None:
        return None
    if node.domain == "kiln" and node.op_type == "Gelu":
        name = "GeluTanh" if node.attrs.get("approximate") == "tanh" else "GeluErf"
        return Activation(name, [], [node], node.output)
    if node.domain == "kiln" and node.op_type == "HardSwish":
        return Activation("HardSwish", [], [node], node.output)
    if node.domain:
        return None
    if node.op_type in _SIMPLE:
        return Activation(_SIMPLE[node.op_type], [], [node], node.output)
    if node.op_type == "Gelu":
        name = "GeluTanh" if node.attrs.get("approximate") == "tanh" else "GeluErf"
        return Activation(name, [], [node], node.output)
    if node.op_type == "LeakyRelu":
        return Activation("LeakyRelu", [node.attrs.get("alpha", 0.01)], [node], node.output)
    if node.op_type == "HardSigmoid":
        params = [node.attrs.get("alpha", 0.2), node.attrs.get("beta", 0.5)]
        return Activation("HardSigmoid", params, [node], node.output)
    if node.op_type == "Clip":
        return _match_clip(node)
    return None


def _match_clip(node: Node) -> Activation | None:
    bounds = match_clip_bounds(node)
    if bounds is None:
        return None
    return Activation("Clip", [float(bounds[0]), float(bounds[1])], [node], node.output)


def match_clip_bounds(node: Node) -> tuple[float, float] | None:
    """A Clip node's (min, max) when both are constant (absent: unbounded), else None."""
    if "min" in node.attrs or "max" in node.attrs:  # opset < 11
        return node.attrs.get("min", float("-inf")), node.attrs.get("max", float("inf"))
    inputs = list(node.inputs) + [None, None]
    lo_v, hi_v = inputs[1], inputs[2]
    lo = scalar(lo_v) if lo_v is not None else float("-inf")
    hi = scalar(hi_v) if hi_v is not None else float("inf")
    if lo is None or hi is None:
        return None
    return lo, hi


def _match_silu(value: Value, graph: Graph) -> Activation | None:
    if len(value.consumers) != 2 or any(value is v for v in graph.outputs):
        return None
    sig = next((n for n in value.consumers if n.op_type == "Sigmoid" and not n.domain), None)
    mul = next((n for n in value.consumers if n.op_type == "Mul" and not n.domain), None)
    if sig is None or mul is None or only_consumer(sig.output, graph) is not mul:
        return None
    if {id(v) for v in mul.inputs} != {id(value), id(sig.output)}:
        return None
    return Activation("SiLU", [], [sig, mul], mul.output)
