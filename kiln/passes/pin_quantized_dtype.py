"""Tells QuantizeLinear the type it makes when the graph knows it and the node does not say.

    y: int4 = QuantizeLinear(x, scale, zero_point: int4)  ->  ... {output_dtype: INT4}

A 4- or 2-bit zero point travels in an 8-bit carrier at run time, so the op alone would
take it for an 8-bit type; ONNX requires output_dtype to match the zero point's type.
"""

from __future__ import annotations

from kiln.ir import Graph
from kiln.passes.pipeline import PassContext, register_pass


@register_pass("simplify", priority=5)
def pin_quantized_dtype(graph: Graph, ctx: PassContext) -> bool:
    """Sets QuantizeLinear's output_dtype from its output's declared type."""
    changed = False
    for node in graph.walk_nodes():
        if node.domain or node.op_type != "QuantizeLinear" or node.attrs.get("output_dtype"):
            continue
        result = node.outputs[0] if node.outputs else None
        if result is None or result.dtype is None:
            continue
        node.attrs["output_dtype"] = result.dtype.value
        changed = True
    return changed
