"""kiln Graph -> ONNX ModelProto, so a rewritten graph can be checked and run by other tools.

    model = write_onnx(graph)
    onnx.checker.check_model(model, full_check=True)

Constants become initializers of the graph that owns them, If/Loop/Scan bodies become
graph attributes, and every value whose dtype is known gets a value_info entry (with its
shape where known). The reader turns attributes into plain Python values, which loses
their ONNX type (an empty list, or a TYPE_PROTO read as its element type), so the type is
taken from the operator's schema where onnx has one and from the Python value otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from kiln.errors import KilnError
from kiln.ir import Graph, Node, Value
from kiln.ops import registry

MIN_IR_VERSION = 4  # from IR 4 on, initializers need not be listed among the graph inputs
_ONNX_DOMAINS = ("", "ai.onnx")


def write_onnx(graph: Graph, *, producer: str = "kiln") -> onnx.ModelProto:
    """The ONNX model of `graph` (the root of a graph tree)."""
    opsets = _opset_imports(graph)
    writer = _GraphWriter({imp.domain: imp.version for imp in opsets})
    model = helper.make_model(writer.graph(graph), opset_imports=opsets,
                              producer_name=producer)
    required = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    model.ir_version = max(int(graph.meta.get("ir_version") or 0), required, MIN_IR_VERSION)
    return model


def _opset_imports(graph: Graph) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {}
    for domain, version in graph.opsets.items():
        key = "" if domain in _ONNX_DOMAINS else domain
        versions[key] = max(version, versions.get(key, 0))
    for node in graph.walk_nodes():
        key = "" if node.domain in _ONNX_DOMAINS else node.domain
        if key not in versions:  # e.g. kiln's own domain, which no model imports
            versions[key] = registry.opset_of(graph.opsets, key) or 1
    return [helper.make_opsetid(d, v) for d, v in sorted(versions.items())]


class _GraphWriter:
    def __init__(self, opsets: dict[str, int]) -> None:
        self.opsets = opsets

    def graph(self, graph: Graph) -> onnx.GraphProto:
        main = graph.parent is None
        outputs = {id(v) for v in graph.outputs}
        value_info = [
            info for node in graph.nodes for v in node.outputs
            if v is not None and id(v) not in outputs
            and (info := _value_info(v, io=False, main=False)) is not None
        ]
        nodes = [self.node(n) for n in graph.nodes]
        output_infos = [_value_info(v, io=True, main=main) for v in graph.outputs]
        if not main:
            nodes += _pass_outer_outputs(graph, output_infos)
        return helper.make_graph(
            nodes=nodes,
            name=graph.name,
            inputs=[_value_info(v, io=True, main=main) for v in graph.inputs],
            outputs=output_infos,
            initializer=[_tensor(v.const, name) for name, v in graph.initializers.items()],
            value_info=value_info,
        )

    def node(self, node: Node) -> onnx.NodeProto:
        proto = helper.make_node(
            node.op_type,
            inputs=["" if v is None else v.name for v in node.inputs],
            outputs=["" if v is None else v.name for v in node.outputs],
            name=node.name,
            domain=node.domain,
        )
        schema = self._schema(node)
        for key, value in node.attrs.items():
            attr_type = _schema_attr_type(schema, key) or _python_attr_type(node, key, value)
            proto.attribute.append(self.attribute(key, value, attr_type))
        return proto

    def _schema(self, node: Node) -> onnx.defs.OpSchema | None:
        domain = "" if node.domain in _ONNX_DOMAINS else node.domain
        version = self.opsets.get(domain)
        if version is None:
            return None
        try:
            return onnx.defs.get_schema(node.op_type, version, domain)
        except onnx.defs.SchemaError:
            return None

    def attribute(self, key: str, value: Any, attr_type: int) -> onnx.AttributeProto:
        if attr_type == AttributeProto.GRAPH:
            value = self.graph(value)
        elif attr_type == AttributeProto.GRAPHS:
            value = [self.graph(g) for g in value]
        elif attr_type == AttributeProto.TENSOR:
            value = _tensor(value, "")
        elif attr_type == AttributeProto.TENSORS:
            value = [_tensor(v, "") for v in value]
        elif attr_type == AttributeProto.SPARSE_TENSOR:
            value = _sparse_tensor(value)
        elif attr_type == AttributeProto.SPARSE_TENSORS:
            value = [_sparse_tensor(v) for v in value]
        elif attr_type == AttributeProto.TYPE_PROTO:
            value = helper.make_tensor_type_proto(int(value), None)
        elif attr_type == AttributeProto.TYPE_PROTOS:
            value = [helper.make_tensor_type_proto(int(v), None) for v in value]
        elif attr_type == AttributeProto.INT:
            value = int(value)
        elif attr_type == AttributeProto.FLOAT:
            value = float(value)
        elif attr_type == AttributeProto.INTS:
            value = [int(v) for v in value]
        elif attr_type == AttributeProto.FLOATS:
            value = [float(v) for v in value]
        return helper.make_attribute(key, value, attr_type=attr_type)


def _pass_outer_outputs(graph: Graph, infos: list) -> list[onnx.NodeProto]:
    """Identity nodes for body outputs that are values of an enclosing graph.

    kiln's IR lets a body return an outer value as it is (removing an Identity can leave
    that), but ONNX Runtime requires a node in between; the output gets a new name.
    """
    own = {id(v) for v in graph.values()}
    taken = {v.name for g in graph.root().walk_graphs() for v in g.values()}
    nodes = []
    for index, value in enumerate(graph.outputs):
        if id(value) in own:
            continue
        name, k = f"{value.name}_{graph.name}_out", 0
        while name in taken:
            k += 1
            name = f"{value.name}_{graph.name}_out{k}"
        taken.add(name)
        nodes.append(helper.make_node("Identity", [value.name], [name],
                                      name=f"{graph.name}_pass_{name}"))
        infos[index].name = name
    return nodes


def _schema_attr_type(schema: onnx.defs.OpSchema | None, key: str) -> int | None:
    if schema is None or key not in schema.attributes:
        return None
    return int(schema.attributes[key].type.value)


_SCALAR_TYPES = (
    (bool, AttributeProto.INT),
    (int | np.integer, AttributeProto.INT),
    (float | np.floating, AttributeProto.FLOAT),
    (str | bytes, AttributeProto.STRING),
    (np.ndarray, AttributeProto.TENSOR),
    (Graph, AttributeProto.GRAPH),
)
_LIST_TYPES = {
    AttributeProto.INT: AttributeProto.INTS,
    AttributeProto.FLOAT: AttributeProto.FLOATS,
    AttributeProto.STRING: AttributeProto.STRINGS,
    AttributeProto.TENSOR: AttributeProto.TENSORS,
    AttributeProto.GRAPH: AttributeProto.GRAPHS,
}


def _python_attr_type(node: Node, key: str, value: Any) -> int:
    """The ONNX attribute type of a value, for ops onnx has no schema for."""
    if isinstance(value, list | tuple):
        if not value:
            return AttributeProto.INTS  # the commonest list; an empty one carries no type
        kinds = {_python_attr_type(node, key, v) for v in value}
        if AttributeProto.FLOAT in kinds and kinds <= {AttributeProto.INT, AttributeProto.FLOAT}:
            return AttributeProto.FLOATS  # [1, 0.5] is a float list
        if len(kinds) == 1 and (kind := kinds.pop()) in _LIST_TYPES:
            return _LIST_TYPES[kind]
    else:
        for python_type, attr_type in _SCALAR_TYPES:
            if isinstance(value, python_type):
                return attr_type
    raise KilnError(
        f"node {node.name!r} ({node.op_type}) has attribute {key!r} of type "
        f"{type(value).__name__}, which has no ONNX attribute type",
        hint="attributes are numbers, strings, arrays, graphs or lists of one of these",
    )


def _tensor(array: np.ndarray, name: str) -> onnx.TensorProto:
    array = np.asarray(array)
    if array.dtype.kind in ("U", "S"):
        array = array.astype(object)
    return numpy_helper.from_array(array, name)


def _sparse_tensor(array: np.ndarray) -> onnx.SparseTensorProto:
    array = np.asarray(array)
    flat = array.reshape(-1)
    indices = np.flatnonzero(flat).astype(np.int64)
    return helper.make_sparse_tensor(_tensor(flat[indices], ""), _tensor(indices, ""),
                                     list(array.shape))


def _value_info(value: Value, *, io: bool, main: bool) -> onnx.ValueInfoProto | None:
    """The declared type of a value; None (or an untyped entry) where nothing is known.

    A main-graph input or output must have a type, so an unknown one is written with an
    undefined element type; a body's inputs and outputs may go untyped.
    """
    if value.dtype is None and not main:
        return helper.make_value_info(value.name, onnx.TypeProto()) if io else None
    elem = value.dtype.value if value.dtype is not None else onnx.TensorProto.UNDEFINED
    shape = None if value.shape is None else [_dim(d) for d in value.shape]
    tensor = helper.make_tensor_type_proto(elem, shape)
    if value.kind == "sequence":
        return helper.make_value_info(value.name, helper.make_sequence_type_proto(tensor))
    if value.kind == "optional":
        return helper.make_value_info(value.name, helper.make_optional_type_proto(tensor))
    if value.kind == "map":
        return helper.make_value_info(value.name, onnx.TypeProto()) if io else None
    return helper.make_value_info(value.name, tensor)


def _dim(dim: int | str | None) -> int | str | None:
    return int(dim) if isinstance(dim, int | np.integer) else dim
