"""Precision assignment: the type each layer computes in, and the casts between them.

`precision_policy.py` decides (compute layers fp16, sensitive ones fp32, the rest follow
their inputs with type promotion, the output tail fp32); this module applies the
decision to the graph. Casts are explicit Cast nodes (one per value and type in each
graph, shared by every reader) and constants are converted once at build time, so
`kiln inspect` shows every reformat. The engine's inputs and outputs keep the model's
types, and so do integer, boolean and host-read inputs.

`--layerPrecisions` (node name -> fp32/fp16) overrides the policy for a layer, in FP16
and FP32 builds alike; names are those of the model's nodes, or of the layers
`kiln inspect` lists (a fused layer answers to the names of the nodes it fused).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kiln.build import precision_policy as policy
from kiln.errors import KilnError
from kiln.ir import DType, Graph, Node, Value

LAYER_PRECISIONS = ("fp32", "fp16")
_TYPES = {"fp16": DType.FLOAT16, "fp32": DType.FLOAT}


@dataclass
class _Run:
    """State of one precision assignment over a graph tree."""

    allow_fp16: bool
    overrides: dict[str, str]
    counts: dict[str, Any] = field(default_factory=lambda: {
        "fp16": 0, "fp32": 0, "tail": 0, "forced": 0, "casts": 0, "constants": 0})
    used: set[str] = field(default_factory=set)
    constants: dict[tuple[int, DType], Value] = field(default_factory=dict)


def assign_precision(graph: Graph, precision: str,
                     overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """Rewrites `graph` for `precision`; returns counts of layers by precision and casts.

    An FP32 build without overrides is left alone.
    """
    overrides = dict(overrides or {})
    _check_overrides(graph, overrides)
    mark_model_dtypes(graph)  # values the passes made have not been seen yet
    run = _Run(allow_fp16=precision == "fp16", overrides=overrides)
    if not run.allow_fp16 and not overrides:
        return run.counts
    _assign(graph, run, root=True)
    unused = sorted(set(overrides) - run.used)
    if unused:  # named nodes of the model that optimization removed (folded, fused away)
        run.counts["overrides_unused"] = unused
    return run.counts


def mark_model_dtypes(graph: Graph) -> None:
    """Remembers each value's type (and each node's name) in the model before building."""
    names = set()
    for g in graph.walk_graphs():
        for value in g.values():
            value.meta.setdefault("model_dtype", value.dtype)
        names.update(node.name for node in g.nodes)
    graph.meta.setdefault("model_node_names", names)


def _check_overrides(graph: Graph, overrides: dict[str, str]) -> None:
    known = set(graph.meta.get("model_node_names", ()))
    for node in graph.walk_nodes():
        known.add(node.name)
        known.update(node.meta.get("fused", ()))
    for name, precision in overrides.items():
        if precision not in LAYER_PRECISIONS:
            raise KilnError(
                f"--layerPrecisions: {name}:{precision} asks for {precision}, but a layer "
                f"can only be forced to {' or '.join(LAYER_PRECISIONS)}",
                hint=f"write {name}:fp32 or {name}:fp16")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}?" if close else (
                "`kiln inspect model.onnx` lists the layer names")
            raise KilnError(f"--layerPrecisions names {name!r}, which is no node of the model",
                            hint=hint)


def _assign(graph: Graph, run: _Run, root: bool) -> None:
    tail = policy.output_tail(graph)
    casts: dict[tuple[int, DType], Value] = {}
    for node in list(graph.nodes):
        for sub in node.subgraphs():
            _assign(sub, run, root=False)
        kind = _decide(node, run, id(node) in tail)
        node.meta["precision"] = "fp32" if kind == "any" else kind
        if kind == "any":
            continue
        target = _TYPES[kind]
        for i in policy.converted_inputs(node):
            value = node.inputs[i]
            if value is not None and value.dtype is not target:
                node.set_input(i, _converted(graph, value, target, node, casts, run))
        if kind == "fp16":
            for out in node.outputs:
                if out is not None and out.dtype is DType.FLOAT:
                    out.dtype = DType.FLOAT16
    _restore_outputs(graph, casts, run, root)


def _decide(node: Node, run: _Run, in_tail: bool) -> str:
    """The precision `node` computes in: "fp16", "fp32" or "any" (reads types as they are)."""
    forced = _override(node, run)
    if forced is not None:
        run.counts["forced"] += 1
        return _counted(forced, run)
    cls = policy.op_class(node)
    if cls == "any":
        return cls
    inputs = policy.converted_inputs(node)
    if not run.allow_fp16 or cls == "fp32":
        return _counted("fp32", run)
    if cls == "follow":
        if in_tail:
            run.counts["tail"] += bool(inputs)
            return _counted("fp32", run)
        cls = _promoted(node, inputs)
    if cls == "fp16" and not policy.constants_fit(node, inputs):
        cls = "fp32"
    return _counted(cls, run)


def _override(node: Node, run: _Run) -> str | None:
    for name in (node.name, *node.meta.get("fused", ())):
        if name in run.overrides:
            run.used.add(name)
            return run.overrides[name]
    return None


def _promoted(node: Node, inputs: list[int]) -> str:
    """fp32 if any non-constant input is fp32 (or of unknown type), fp16 if one is fp16.

    A layer whose only float inputs are constants (an embedding lookup: Gather from a
    weight table by integer ids) reads weights, which are narrowed as a compute layer's
    are (halving the biggest table of a transformer)."""
    if any(v is not None and v.dtype is None for v in node.inputs):
        return "fp32"
    live = [node.inputs[i] for i in inputs if not node.inputs[i].is_const]
    if any(v.dtype is DType.FLOAT for v in live):
        return "fp32"
    return "fp16" if live or inputs else "fp32"


def _counted(kind: str, run: _Run) -> str:
    run.counts[kind] += 1
    return kind


def _converted(graph: Graph, value: Value, target: DType, user: Node,
               casts: dict[tuple[int, DType], Value], run: _Run) -> Value:
    if value.is_const:
        return _converted_constant(graph, value, target, run)
    key = (id(value), target)
    if key in casts:
        return casts[key]
    node = graph.add_node("Cast", [value], {"to": target.value},
                          name=f"reformat_{value.name}_{target.short}", before=user)
    node.meta["precision"] = "reformat"
    converted = node.output
    converted.dtype, converted.shape = target, value.shape
    converted.meta["model_dtype"] = DType.FLOAT
    run.counts["casts"] += 1
    casts[key] = converted
    return converted


def _converted_constant(graph: Graph, value: Value, target: DType, run: _Run) -> Value:
    """A converted copy, made once and kept in the graph that holds the original."""
    key = (id(value), target)
    if key not in run.constants:
        owner = _owner(graph, value)
        array = np.asarray(value.const).astype(target.numpy)
        converted = owner.constant(array, name=f"{value.name}_{target.short}")
        converted.meta["model_dtype"] = DType.FLOAT
        run.constants[key] = converted
        run.counts["constants"] += 1
    return run.constants[key]


def _owner(graph: Graph, value: Value) -> Graph:
    g: Graph | None = graph
    while g is not None:
        if g.initializers.get(value.name) is value:
            return g
        g = g.parent
    return graph


def _restore_outputs(graph: Graph, casts: dict[tuple[int, DType], Value], run: _Run,
                     root: bool) -> None:
    """Graph outputs go back to the model's float32 (a subgraph's too: both branches of an
    If, and a loop body's carried values, must keep the model's types)."""
    for index, value in enumerate(list(graph.outputs)):
        if value.dtype is not DType.FLOAT16 or value.meta.get("model_dtype") is not DType.FLOAT:
            continue
        key = (id(value), DType.FLOAT)
        if key not in casts and _writes_float(graph, value):
            continue
        if key not in casts:
            casts[key] = _output_cast(graph, value)
            run.counts["casts"] += 1
        out = casts[key]
        if root and value.producer is not None and value.producer.graph is graph:
            # the engine's output keeps the model's name (subgraph outputs are positional)
            name = value.name
            value.name = graph.fresh_name(f"{name}_fp16")
            out.name = name
        graph.outputs[index] = out


# layers whose tactics write y in another type than their input's (attribute out_dtype)
_TAKES_OUT_DTYPE = {("kiln", "LayerNorm")}


def _writes_float(graph: Graph, value: Value) -> bool:
    """Has the layer producing an output write it in float32 itself, where only the
    output reads it: one pass over the result fewer than an FP16 y and its Cast (BERT's
    last LayerNorm)."""
    node = value.producer
    if node is None or node.graph is not graph or node.outputs[0] is not value \
            or (node.domain, node.op_type) not in _TAKES_OUT_DTYPE or value.consumers \
            or sum(v is value for v in graph.outputs) != 1:
        return False
    node.attrs["out_dtype"] = DType.FLOAT.value
    value.dtype = DType.FLOAT
    value.meta["model_dtype"] = DType.FLOAT
    return True


def _output_cast(graph: Graph, value: Value) -> Value:
    node = graph.add_node("Cast", [value], {"to": DType.FLOAT.value},
                          name=f"reformat_{value.name}_out")
    node.meta["precision"] = "reformat"
    out = node.output
    out.dtype, out.shape = DType.FLOAT, value.shape
    out.meta["model_dtype"] = DType.FLOAT
    return out
