"""Computes each value once: equal small constants become one, and nodes that apply the
same op with the same attributes to the same inputs are merged.

    m1 = Where(mask, 0, -inf)   (layer 1)       m1 = Where(mask, 0, -inf)
    m2 = Where(mask, 0, -inf)   (layer 2)  ->   (layer 2 reads m1)

Exporters repeat such work per layer (a transformer's attention mask, once per layer).
Random ops are never merged; nodes with subgraphs are left alone.
"""

from __future__ import annotations

import hashlib

import numpy as np

from kiln.ir import Graph, Node
from kiln.passes.fold_constants import NONDETERMINISTIC
from kiln.passes.pipeline import PassContext, register_pass

MAX_CONSTANT_ELEMENTS = 4096  # hashing is for small constants, not weights


@register_pass("simplify", priority=80)
def eliminate_common_subexpressions(graph: Graph, ctx: PassContext) -> bool:
    """Merges equal small constants and nodes computing the same thing."""
    merged = 0
    for g in list(graph.walk_graphs()):
        merged += _merge_constants(g) + _merge_nodes(g)
    ctx.count("eliminate_common_subexpressions", merged)
    return merged > 0


def _merge_constants(graph: Graph) -> int:
    seen: dict[tuple, object] = {}
    merged = 0
    for name, value in list(graph.initializers.items()):
        array = value.const
        if array.size > MAX_CONSTANT_ELEMENTS or array.dtype == object or not value.consumers:
            continue
        key = (array.dtype.str, array.shape, hashlib.sha1(np.ascontiguousarray(array)
                                                          .tobytes()).hexdigest())
        first = seen.setdefault(key, value)
        if first is not value and not any(value is v for v in graph.outputs):
            graph.replace_all_uses(value, first)
            del graph.initializers[name]
            merged += 1
    return merged


def _merge_nodes(graph: Graph) -> int:
    seen: dict[tuple, Node] = {}
    merged = 0
    for node in list(graph.nodes):
        if node.op_type in NONDETERMINISTIC or any(True for _ in node.subgraphs()):
            continue
        key = (node.domain, node.op_type, _attrs_key(node.attrs),
               tuple(id(v) for v in node.inputs), len(node.outputs))
        first = seen.setdefault(key, node)
        if first is node:
            continue
        if any(v is not None and any(v is o for o in graph.outputs) for v in node.outputs):
            continue
        for mine, theirs in zip(node.outputs, first.outputs):
            if mine is not None and theirs is not None:
                graph.replace_all_uses(mine, theirs)
            elif mine is not None and mine.consumers:
                break
        else:
            graph.remove_node(node)
            merged += 1
    return merged


def _attrs_key(attrs: dict) -> str:
    parts = []
    for key, value in sorted(attrs.items()):
        if isinstance(value, np.ndarray):
            value = (value.dtype.str, value.shape, value.tobytes())
        parts.append(f"{key}={value!r}")
    return ";".join(parts)
