"""Precision assignment: which layers compute in FP16, and the casts between them.

Every float32 value of the model gets a run-time type. A layer computes in one of:

- fp16: the compute-bound layers (convolutions, matrix products, their fused forms);
- fp32: numerically sensitive layers (Softmax, normalization statistics, reductions,
  Exp/Log/Pow, recurrent cells) and every layer whose output type is fixed by an
  attribute (Cast, ConstantOfShape, ...);
- follow: layers that work in whatever type their inputs have (ReLU, Add, Reshape, ...).

Casts are inserted as explicit Cast nodes (one per value and type, shared by all who need
it) and constants are converted once at build time, so `kiln inspect` shows every
reformat. The engine's inputs and outputs keep the model's types.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import DType, Graph, Node, Value

FP16_OPS = {
    ("", "Conv"), ("", "ConvTranspose"), ("", "MatMul"), ("", "Gemm"),
    ("", "BatchNormalization"),
}
FOLLOW_OPS = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
    "Selu", "Celu", "Softsign", "Gelu", "Mish", "ThresholdedRelu", "Clip", "Erf",
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min", "Sum", "Mean", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Where",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Split", "Slice",
    "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Identity",
    "DepthToSpace", "SpaceToDepth", "Resize", "Upsample",
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "ArgMax", "ArgMin",
    "TopK", "ReduceMax", "ReduceMin",
}
# Ops whose listed inputs must stay in the model's type (indices, shapes, scalars).
_FP16_NAME = "fp16"


def assign_precision(graph: Graph, precision: str,
                     overrides: dict[str, str] | None = None) -> dict[str, int]:
    """Rewrites `graph` for `precision` ("fp32" leaves it alone); returns counts by kind."""
    counts = {"fp16": 0, "fp32": 0, "follow": 0, "casts": 0}
    if precision not in ("fp16",):
        return counts
    overrides = overrides or {}
    _assign(graph, overrides, counts, {})
    return counts


def layer_kind(node: Node, overrides: dict[str, str]) -> str:
    # an override names the layer, or a model node fused into it
    forced = next((overrides[n] for n in (node.name, *node.meta.get("fused", ()))
                   if n in overrides), None)
    if forced is not None:
        return "fp16" if forced == "fp16" else "fp32"
    if node.key in FP16_OPS or (node.domain == "kiln" and node.meta.get("fp16_ok", True)):
        return "fp16"
    if node.domain == "" and node.op_type in FOLLOW_OPS:
        return "follow"
    return "fp32"


def _assign(graph: Graph, overrides: dict[str, str], counts: dict[str, int],
            casts: dict[tuple[int, DType], Value]) -> None:
    for node in list(graph.nodes):
        if any(True for _ in node.subgraphs()):
            for sub in node.subgraphs():
                _assign(sub, overrides, counts, {})
        kind = layer_kind(node, overrides)
        floats = [i for i, v in enumerate(node.inputs) if v is not None and _is_float(v)]
        if kind == "follow":
            known = all(v is not None and v.dtype is not None for v in node.inputs)
            half = any(node.inputs[i].dtype is DType.FLOAT16 for i in floats)
            kind = "fp16" if (half and known) else "fp32"
            counts["follow"] += 1
        else:
            counts[kind] += 1
        node.meta["precision"] = kind
        target = DType.FLOAT16 if kind == "fp16" else DType.FLOAT
        for i in floats:
            value = node.inputs[i]
            if value is not None and value.dtype is not target:
                node.set_input(i, _converted(graph, value, target, node, casts, counts))
        if kind == "fp16":
            for out in node.outputs:
                if out is not None and out.dtype is DType.FLOAT:
                    out.dtype = DType.FLOAT16
    _restore_outputs(graph, casts, counts)


def _is_float(value: Value) -> bool:
    return value.kind == "tensor" and value.dtype in (DType.FLOAT, DType.FLOAT16) and (
        value.meta.get("model_dtype", value.dtype) is DType.FLOAT)


def _converted(graph: Graph, value: Value, target: DType, user: Node,
               casts: dict[tuple[int, DType], Value], counts: dict[str, int]) -> Value:
    key = (id(value), target)
    if key in casts:
        return casts[key]
    if value.is_const:
        array = value.const.astype(np.float16 if target is DType.FLOAT16 else np.float32)
        converted = graph.constant(array, name=f"{value.name}_{target.short}")
        converted.meta["model_dtype"] = DType.FLOAT
    else:
        node = graph.add_node("Cast", [value], {"to": target.value},
                              name=f"reformat_{value.name}_{target.short}", before=user)
        node.meta["precision"] = "reformat"
        converted = node.output
        converted.dtype, converted.shape = target, value.shape
        converted.meta["model_dtype"] = DType.FLOAT
        counts["casts"] += 1
    casts[key] = converted
    return converted


def _restore_outputs(graph: Graph, casts: dict[tuple[int, DType], Value],
                     counts: dict[str, int]) -> None:
    """Graph outputs go back to the model's float32."""
    for index, value in enumerate(list(graph.outputs)):
        if value.dtype is DType.FLOAT16 and value.meta.get("model_dtype") is DType.FLOAT:
            node = graph.add_node("Cast", [value], {"to": DType.FLOAT.value},
                                  name=f"reformat_{value.name}_out")
            node.meta["precision"] = "reformat"
            out = node.output
            out.dtype, out.shape = DType.FLOAT, value.shape
            # the output keeps the model's name
            name = value.name
            value.name = graph.fresh_name(f"{name}_fp16")
            out.name = name
            graph.outputs[index] = out
            counts["casts"] += 1


def mark_model_dtypes(graph: Graph) -> None:
    """Remembers each value's type in the model before precision changes it."""
    for g in graph.walk_graphs():
        for value in g.values():
            value.meta.setdefault("model_dtype", value.dtype)
