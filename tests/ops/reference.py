"""Runs one ONNX node through kiln (FP32 engine on the CPU) and onnx's ReferenceEvaluator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

import kiln.backend


def node_model(node: onnx.NodeProto, inputs: dict[str, np.ndarray], outputs: Sequence[str],
               opset: int, domain_opsets: dict[str, int] | None = None) -> onnx.ModelProto:
    """A model of the one node; every input is a graph input (nothing folds at build)."""
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                       list(a.shape)) for name, a in inputs.items()],
        [helper.make_value_info(name, onnx.TypeProto()) for name in outputs])
    imports = [helper.make_opsetid("", opset)] + [
        helper.make_opsetid(d, v) for d, v in (domain_opsets or {}).items()]
    return helper.make_model(graph, opset_imports=imports)


def run_both(node: onnx.NodeProto, inputs: dict[str, np.ndarray], opset: int,
             domain_opsets: dict[str, int] | None = None) -> tuple[list, list]:
    """(kiln's outputs, the reference's outputs) for `node` on `inputs`."""
    outputs = [o for o in node.output if o]
    model = node_model(node, inputs, outputs, opset, domain_opsets)
    expected = ReferenceEvaluator(model).run(None, inputs)
    got = kiln.backend.prepare(model).run(inputs)
    return list(got), list(expected)


_ML_FLOATS = {"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz",
              "float8_e8m0fnu", "float4_e2m1fn", "int4", "uint4", "int2", "uint2"}


def assert_close(got: list, expected: list, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g, e = np.asarray(g), np.asarray(e)
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        if e.dtype.kind == "V" or e.dtype.name in _ML_FLOATS:  # ml_dtypes: exact values
            np.testing.assert_array_equal(g.astype(np.float64), e.astype(np.float64))
        elif e.dtype.kind in "iub":
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64),
                                       rtol=rtol, atol=atol)
