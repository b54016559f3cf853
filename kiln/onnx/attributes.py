"""ONNX AttributeProto -> plain Python values (graphs become kiln Graphs)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, numpy_helper

from kiln.ir import Graph


def _text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def tensor_to_numpy(tensor: onnx.TensorProto, base_dir: str | None = None) -> np.ndarray:
    if tensor.data_type == onnx.TensorProto.STRING:
        values = [_text(s) for s in tensor.string_data]
        return np.array(values, dtype=object).reshape(tuple(tensor.dims))
    return np.asarray(numpy_helper.to_array(tensor, base_dir or ""))


def sparse_to_numpy(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = tensor_to_numpy(sparse.values)
    indices = tensor_to_numpy(sparse.indices).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    flat = dense.reshape(-1)
    if indices.ndim == 2:  # [NNZ, rank] coordinates
        indices = np.ravel_multi_index(tuple(indices.T), dense.shape)
    flat[indices] = values
    return dense


def convert_attribute(
    attr: AttributeProto, read_graph: Callable[[onnx.GraphProto], Graph]
) -> Any:
    kind = attr.type
    if kind == AttributeProto.FLOAT:
        return float(attr.f)
    if kind == AttributeProto.INT:
        return int(attr.i)
    if kind == AttributeProto.STRING:
        return _text(attr.s)
    if kind == AttributeProto.TENSOR:
        return tensor_to_numpy(attr.t)
    if kind == AttributeProto.GRAPH:
        return read_graph(attr.g)
    if kind == AttributeProto.SPARSE_TENSOR:
        return sparse_to_numpy(attr.sparse_tensor)
    if kind == AttributeProto.FLOATS:
        return [float(f) for f in attr.floats]
    if kind == AttributeProto.INTS:
        return [int(i) for i in attr.ints]
    if kind == AttributeProto.STRINGS:
        return [_text(s) for s in attr.strings]
    if kind == AttributeProto.TENSORS:
        return [tensor_to_numpy(t) for t in attr.tensors]
    if kind == AttributeProto.GRAPHS:
        return [read_graph(g) for g in attr.graphs]
    if kind == AttributeProto.SPARSE_TENSORS:
        return [sparse_to_numpy(t) for t in attr.sparse_tensors]
    if kind == AttributeProto.TYPE_PROTO:
        return attr.tp.tensor_type.elem_type
    if kind == AttributeProto.TYPE_PROTOS:
        return [t.tensor_type.elem_type for t in attr.type_protos]
    raise ValueError(f"attribute {attr.name!r} has unknown type {kind}")
