"""The model's own names for the tensors of an optimized graph.

Calibration caches are keyed by the ONNX tensor names (TensorRT's are), but fusions
replace a chain of nodes by one whose output is a new value. `remember_names` marks every
value with its name before the passes run; afterwards a fused layer's output is known by
the output of the last node it absorbed (a Conv+Add+Relu layer by the Relu's output).
"""

from __future__ import annotations

from kiln.ir import Graph, Value

_NAME = "onnx_name"
_OUTPUTS = "onnx_outputs"


def remember_names(graph: Graph) -> None:
    graph.meta[_OUTPUTS] = {node.name: [v.name if v is not None else None
                                        for v in node.outputs] for node in graph.nodes}
    for value in graph.values():
        value.meta.setdefault(_NAME, value.name)


def onnx_name(value: Value, graph: Graph) -> str | None:
    """The model's name for `value`, or None when it is a tensor kiln made up."""
    if _NAME in value.meta:
        return value.meta[_NAME]
    node = value.producer
    fused = node.meta.get("fused") if node is not None else None
    if not fused:
        return None
    outputs = graph.root().meta.get(_OUTPUTS, {}).get(fused[-1])
    index = list(node.outputs).index(value)
    return outputs[index] if outputs and index < len(outputs) else None
