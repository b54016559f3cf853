"""The model's own names for the tensors of an optimized graph.

Calibration caches are keyed by the ONNX tensor names (TensorRT's are), but fusions
replace chains of nodes by one whose output is a new value. `remember_names` marks every
value with its name before the passes run (meta["source_name"]); a rewrite that replaces
a value hands the mark on (Graph.replace_all_uses), so a fused Conv+BN+ReLU layer's
output is known by the ReLU's output name, the tensor it computes.
"""

from __future__ import annotations

from kiln.ir import Graph, Value
from kiln.ir.graph import SOURCE_NAME


def remember_names(graph: Graph) -> None:
    for value in graph.values():
        value.meta.setdefault(SOURCE_NAME, value.name)


def onnx_name(value: Value, graph: Graph) -> str | None:
    """The model's name for `value`, or None when it is a tensor kiln made up."""
    return value.meta.get(SOURCE_NAME)
