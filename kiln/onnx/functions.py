"""Expands operators kiln has no kernel for into their ONNX function bodies.

Many ONNX operators (Celu, HardSwish, Range, ...) are defined as a function of simpler
ones. When kiln lacks an operator but the ONNX schema has a body for it, the node is
renamed to a model-local function carrying that body and `onnx.inliner` inlines it, so
the renaming and attribute substitution are onnx's own.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx.inliner  # a submodule `import onnx` does not load
from onnx import defs, helper

_EXPAND_DOMAIN = "kiln.expand"
_MAX_ROUNDS = 4


def expand_schema_functions(
    model: onnx.ModelProto, is_supported: Callable[[str, str, dict[str, int]], bool]
) -> onnx.ModelProto:
    for _ in range(_MAX_ROUNDS):
        opsets = {imp.domain or "": imp.version for imp in model.opset_import}
        types = _known_types(model)
        functions: list[onnx.FunctionProto] = []
        for graph in _graphs(model.graph):
            for node in graph.node:
                if is_supported(node.domain or "", node.op_type, opsets):
                    continue
                body = _function_body(node, opsets, types)
                if body is not None:
                    functions.append(_as_local_function(node, body, len(functions)))
        if not functions:
            return model
        model.functions.extend(functions)
        if not any(imp.domain == _EXPAND_DOMAIN for imp in model.opset_import):
            model.opset_import.append(helper.make_opsetid(_EXPAND_DOMAIN, 1))
        for function in functions:
            _merge_opsets(model, function)
        model = onnx.inliner.inline_local_functions(model)
    return model


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _known_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    types: dict[str, onnx.TypeProto] = {}
    for graph in _graphs(inferred.graph):
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            types[vi.name] = vi.type
        for init in graph.initializer:
            types[init.name] = helper.make_tensor_type_proto(init.data_type, list(init.dims))
    return types


def _function_body(
    node: onnx.NodeProto, opsets: dict[str, int], types: dict[str, onnx.TypeProto]
) -> onnx.FunctionProto | None:
    domain = node.domain or ""
    opset = opsets.get(domain)
    if opset is None:
        return None
    try:
        schema = defs.get_schema(node.op_type, opset, domain)
    except defs.SchemaError:
        return None
    if schema.has_function:
        raw = schema.get_function_with_opset_version(opset)
        if not raw:
            body = schema.function_body
        elif isinstance(raw, onnx.FunctionProto):
            body = raw
        else:
            body = onnx.FunctionProto()  # onnx hands the body over serialized
            body.ParseFromString(raw)
        _add_default_attributes(node, schema)
        return body
    if schema.has_context_dependent_function:
        input_types = []
        for name in node.input:
            if name and name not in types:
                return None
            input_types.append(types[name].SerializeToString() if name else b"")
        try:
            raw = schema.get_context_dependent_function(node.SerializeToString(), input_types)
        except Exception:
            return None
        body = onnx.FunctionProto()
        body.ParseFromString(raw)
        return body
    return None


def _add_default_attributes(node: onnx.NodeProto, schema: defs.OpSchema) -> None:
    """Writes the schema's defaults onto the node: a body refers to attributes by name, and
    the inliner drops a reference the call site does not set (leaving, e.g., an empty
    Constant)."""
    given = {attr.name for attr in node.attribute}
    for name, attr in schema.attributes.items():
        default = attr.default_value
        if name not in given and default.type != onnx.AttributeProto.UNDEFINED:
            node.attribute.append(default)


def _as_local_function(
    node: onnx.NodeProto, body: onnx.FunctionProto, index: int
) -> onnx.FunctionProto:
    function = onnx.FunctionProto()
    function.CopyFrom(body)
    function.domain = _EXPAND_DOMAIN
    function.name = f"{node.op_type}_{index}"
    node.domain = _EXPAND_DOMAIN
    node.op_type = function.name
    return function


def _merge_opsets(model: onnx.ModelProto, function: onnx.FunctionProto) -> None:
    have = {imp.domain or "" for imp in model.opset_import}
    for imp in function.opset_import:
        if (imp.domain or "") not in have:
            model.opset_import.append(helper.make_opsetid(imp.domain, imp.version))
