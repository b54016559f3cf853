"""ModelProto -> kiln Graph.

Declared shapes are not trusted (real exports declare wrong ones): intermediate
value_info and output dims are dropped and ONNX shape inference runs again. Constant
nodes become constants. Every operator kiln lacks is reported at once, with the nodes
that use it, before any work starts.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import onnx
import onnx.inliner  # a submodule `import onnx` does not load
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from kiln.errors import KilnError, UnsupportedModelError
from kiln.ir import DType, Graph, Node, Shape, Value
from kiln.onnx.attributes import convert_attribute, sparse_to_numpy, tensor_to_numpy
from kiln.onnx.functions import expand_schema_functions
from kiln.ops import registry

MIN_OPSET = 7


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Loads an ONNX file (with external data from beside it) or parses bytes."""
    if isinstance(source, onnx.ModelProto):
        return _no_unloaded_external_data(source, "the model")
    if isinstance(source, bytes):
        return _no_unloaded_external_data(_parse(source, "<bytes>", None), "<bytes>")
    path = Path(source)
    if not path.exists():
        raise KilnError(f"model file not found: {path}", hint="check the path")
    if path.is_dir():
        raise KilnError(f"{path} is a folder, not an ONNX file", hint="pass the .onnx file")
    return _parse(path.read_bytes(), str(path), path.parent)


def _parse(data: bytes, label: str, base_dir: Path | None) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise KilnError(
            f"{label} is not a readable ONNX model (truncated or not ONNX: {exc})",
            hint="re-export the model, or check that the download completed",
        ) from None
    if not data:
        raise KilnError(f"{label} is empty (0 bytes), not an ONNX model",
                        hint="check that the export or download completed")
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise KilnError(
            f"{label} is not an ONNX model (no IR version or graph found)",
            hint="pass a .onnx file exported by a framework",
        )
    if base_dir is not None and _has_external_data(model):
        missing = _missing_external_files(model, base_dir)
        if missing:
            raise KilnError(
                f"{label} keeps its weights in external data file(s) "
                f"{', '.join(missing)}, which are not in {base_dir}",
                hint="keep the .data file(s) beside the .onnx file, with their original names",
            )
        try:
            external_data_helper.load_external_data_for_model(model, str(base_dir))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise KilnError(
                f"{label} keeps its weights in external data that could not be read: {exc}",
                hint="keep the .data file(s) beside the .onnx file, with their original names",
            ) from None
    return model


def _no_unloaded_external_data(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """A model given in memory cannot say where its external data lives: refuse it early
    (onnx would otherwise look for the files in the current directory)."""
    if _has_external_data(model):
        files = sorted({external_data_helper.ExternalDataInfo(t).location
                        for t in external_data_helper._get_all_tensors(model)
                        if t.data_location == onnx.TensorProto.EXTERNAL})
        raise KilnError(
            f"{label} keeps its weights in external data file(s) {', '.join(files)}, which "
            "kiln cannot find for a model given in memory",
            hint="pass the .onnx file's path (with the data beside it), or onnx.load() it "
                 "with its external data first")
    return model


def _missing_external_files(model: onnx.ModelProto, base_dir: Path) -> list[str]:
    missing: list[str] = []
    for tensor in external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = external_data_helper.ExternalDataInfo(tensor).location
        if not (base_dir / location).is_file() and location not in missing:
            missing.append(location)
    return missing


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in external_data_helper._get_all_tensors(model)
    )


def read_onnx(
    source: str | os.PathLike | bytes | onnx.ModelProto, *, check_ops: bool = True
) -> Graph:
    """Reads an ONNX model into a Graph with inferred dtypes and shapes."""
    model = prepare_model(load_model(source))
    opsets = {imp.domain or "": imp.version for imp in model.opset_import}
    graph = GraphReader(opsets).read(model.graph, None, {})
    graph.meta["producer"] = f"{model.producer_name} {model.producer_version}".strip()
    graph.meta["ir_version"] = model.ir_version
    if check_ops:
        check_supported(graph)
    return graph


def prepare_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """Upgrades old opsets, inlines functions and re-infers every shape."""
    model = _copy(model)
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)
    if opset is not None and opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise KilnError(
                f"the model uses opset {opset}; converting it to opset {MIN_OPSET} failed: "
                f"{exc}",
                hint=f"re-export the model with opset {MIN_OPSET} or newer",
            ) from None
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    model = expand_schema_functions(model, _is_supported_proto)
    return infer_types(model)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _is_supported_proto(domain: str, op_type: str, opsets: dict[str, int]) -> bool:
    return registry.lookup(domain, op_type, registry.opset_of(opsets, domain)) is not None


def infer_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drops declared intermediate and output shapes, then runs ONNX shape inference."""
    _forget_declared_shapes(model.graph)
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=False, strict_mode=False, data_prop=True
        )
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        return model  # types stay unknown where inference gave up; the runtime does not need them


def _forget_declared_shapes(graph: onnx.GraphProto) -> None:
    del graph.value_info[:]
    for output in graph.output:
        if output.type.HasField("tensor_type"):
            output.type.tensor_type.ClearField("shape")
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _forget_declared_shapes(attr.g)
            for sub in attr.graphs:
                _forget_declared_shapes(sub)


def value_type(type_proto: onnx.TypeProto) -> tuple[DType | None, Shape | None, str]:
    """(dtype, shape, kind) from a TypeProto; unknown parts are None."""
    which = type_proto.WhichOneof("value")
    if which == "tensor_type" or which == "sparse_tensor_type":
        tensor = getattr(type_proto, which)
        dtype = DType(tensor.elem_type) if tensor.elem_type else None
        if not tensor.HasField("shape"):
            return dtype, None, "tensor"
        dims: list[int | str | None] = []
        for dim in tensor.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                dims.append(int(dim.dim_value))  # some exporters write -1 for "dynamic"
            elif dim.HasField("dim_param") and not dim.dim_param.startswith("unk__"):
                dims.append(dim.dim_param)  # unk__N: inference's name for "not computable"
            else:
                dims.append(None)
        return dtype, tuple(dims), "tensor"
    if which in ("sequence_type", "optional_type"):
        inner = getattr(type_proto, which).elem_type
        dtype, shape, _ = value_type(inner)
        return dtype, shape, which.removesuffix("_type")
    if which == "map_type":
        return None, None, "map"
    return None, None, "tensor"


class GraphReader:
    """Converts one GraphProto (and, recursively, its subgraphs)."""

    def __init__(self, opsets: dict[str, int]) -> None:
        self.opsets = opsets
        self.root: Graph | None = None

    def read(self, proto: onnx.GraphProto, parent: Graph | None, outer: dict[str, Value]) -> Graph:
        graph = Graph(proto.name or "main", opsets=self.opsets, parent=parent)
        self.root = self.root or graph
        types = {vi.name: value_type(vi.type) for vi in proto.value_info}
        types.update({vi.name: value_type(vi.type) for vi in proto.output})
        scope: dict[str, Value] = dict(outer)
        for tensor in proto.initializer:
            scope[tensor.name] = self._constant(graph, tensor.name, tensor_to_numpy(tensor))
        for sparse in proto.sparse_initializer:
            name = sparse.values.name
            scope[name] = self._constant(graph, name, sparse_to_numpy(sparse))
        for vi in proto.input:
            if vi.name in graph.initializers:
                continue  # IR < 4 lists initializers among the inputs
            dtype, shape, kind = value_type(vi.type)
            scope[vi.name] = graph.add_input(vi.name, dtype, shape, kind=kind)
        for index, node_proto in enumerate(proto.node):
            self._read_node(graph, node_proto, index, scope, types)
        for vi in proto.output:
            if vi.name not in scope:
                raise KilnError(f"graph {graph.name!r} output {vi.name!r} is produced by no node",
                                hint="the model is malformed; check it with onnx.checker")
            value = scope[vi.name]
            dtype, _, kind = value_type(vi.type)
            value.dtype = value.dtype or dtype
            graph.outputs.append(value)
        return graph

    def _constant(self, graph: Graph, name: str, array: Any) -> Value:
        value = Value(graph.reserve_name(name), const=array)
        graph.initializers[value.name] = value
        return value

    def _read_node(self, graph: Graph, proto: onnx.NodeProto, index: int,
                   scope: dict[str, Value], types: dict[str, tuple]) -> None:
        name = graph.fresh_node_name(proto.name or f"{proto.op_type}_{index}")
        if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
            scope[proto.output[0]] = self._constant(graph, proto.output[0], _constant_value(proto))
            return
        inputs = []
        for input_name in proto.input:
            if not input_name:
                inputs.append(None)
            elif input_name in scope:
                inputs.append(scope[input_name])
            else:
                raise KilnError(
                    f"node {name!r} ({proto.op_type}) reads {input_name!r}, which nothing defines",
                    hint="the model is malformed; check it with onnx.checker.check_model",
                )
        attrs = {
            a.name: convert_attribute(a, lambda g: self.read(g, graph, scope))
            for a in proto.attribute
        }
        outputs: list[Value | None] = []
        for output_name in proto.output:
            if not output_name:
                outputs.append(None)
                continue
            dtype, shape, kind = types.get(output_name, (None, None, "tensor"))
            value = Value(graph.fresh_name(output_name), dtype, shape, kind=kind)
            scope[output_name] = value
            outputs.append(value)
        node = Node(proto.op_type, inputs, outputs, attrs, domain=_domain(proto.domain), name=name)
        graph.insert(node)


def _domain(domain: str) -> str:
    return registry.canonical_domain(domain)


def _constant_value(proto: onnx.NodeProto) -> Any:
    import numpy as np

    attr = proto.attribute[0]
    if attr.name == "value":
        return tensor_to_numpy(attr.t)
    if attr.name == "sparse_value":
        return sparse_to_numpy(attr.sparse_tensor)
    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    if attr.name == "value_string":
        return np.array(attr.s.decode("utf-8"), dtype=object)
    if attr.name == "value_strings":
        return np.array([s.decode("utf-8") for s in attr.strings], dtype=object)
    raise KilnError(f"Constant node {proto.name!r} has no value attribute")


def check_supported(graph: Graph) -> None:
    """Raises one error listing every operator (and its nodes) kiln cannot run."""
    missing: dict[str, list[str]] = defaultdict(list)
    for node in graph.walk_nodes():
        opset = registry.opset_of(graph.opsets, node.domain)
        if registry.lookup(node.domain, node.op_type, opset) is None:
            key = f"{node.domain or 'ai.onnx'}::{node.op_type}"
            key += f" (opset {opset})" if opset is not None else " (domain not imported)"
            missing[key].append(node.name)
    if missing:
        lines = []
        for key, names in sorted(missing.items()):
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            lines.append(f"  {key}: used by {shown}")
        raise UnsupportedModelError(
            f"the model uses {len(missing)} operator(s) kiln does not implement:\n"
            + "\n".join(lines),
            hint="open an issue with the model attached, or replace these operators at export",
        )
