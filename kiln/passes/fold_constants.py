"""Replaces a node whose inputs are all constants with the constants it computes.

Evaluated with the reference implementation on the CPU. Random ops and ops with
subgraphs are left alone, and a result much larger than its inputs is not materialized
(an Expand to a huge shape would bloat the engine file more than it saves).
"""

from __future__ import annotations

import numpy as np
import torch

from kiln.ir import Graph, Node
from kiln.ops.interpreter import node_step
from kiln.ops.tensors import to_numpy, to_torch
from kiln.passes.pipeline import PassContext, register_pass

NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli", "Dropout"}
GROWTH_LIMIT_BYTES = 1 << 20  # results up to 1 MiB fold even when larger than their inputs


def foldable(node: Node) -> bool:
    if node.op_type in NONDETERMINISTIC or any(True for _ in node.subgraphs()):
        return False
    inputs = [v for v in node.inputs if v is not None]
    return all(v.is_const for v in inputs) and all(
        v is not None and v.kind == "tensor" for v in node.outputs)


@register_pass("simplify", priority=20)
def fold_constants(graph: Graph, ctx: PassContext) -> bool:
    """Computes nodes whose inputs are all constants at build time."""
    folded = 0
    for g in list(graph.walk_graphs()):
        for node in list(g.nodes):
            if foldable(node) and _fold(g, node, ctx):
                folded += 1
    ctx.count("fold_constants", folded)
    return folded > 0


def _fold(graph: Graph, node: Node, ctx: PassContext) -> bool:
    step = node_step(node, graph.opsets, "cpu")
    args = [None if v is None else to_torch(v.const) for v in node.inputs]
    try:
        with torch.no_grad():
            result = step.fn(*args)
    except Exception as exc:  # leave it for run time, where the error names the layer
        ctx.note(f"fold_constants: {node.name} ({node.op_type}) not folded: {exc}")
        return False
    outputs = result if isinstance(result, tuple) else (result,)
    arrays = [to_numpy(o, v.dtype if v is not None else None)
              for o, v in zip(outputs, node.outputs)]
    if not all(isinstance(a, np.ndarray) for a in arrays):
        return False
    in_bytes = sum(v.const.nbytes for v in node.inputs if v is not None)
    out_bytes = sum(a.nbytes for a in arrays)
    if out_bytes > max(2 * in_bytes, GROWTH_LIMIT_BYTES):
        return False
    for value, array in zip(node.outputs, arrays):
        if value is None:
            continue
        const = graph.constant(array, name=value.name + "_folded")
        graph.replace_all_uses(value, const)
    if all(v is None or not v.consumers for v in node.outputs) and not any(
            v in graph.outputs for v in node.outputs if v is not None):
        graph.remove_node(node)
    return True
