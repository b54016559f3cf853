"""Builds one-node (or small) ONNX models and runs them through kiln and a reference.

Every model runs the way users run it: `kiln.backend.prepare` builds an FP32 engine (reader,
passes, lowering) and the ExecutionContext runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

import kiln.backend

ML = ("ai.onnx.ml", 5)
TRAINING = ("ai.onnx.preview.training", 1)


def model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
          outputs: Sequence[onnx.ValueInfoProto], opset: int = 21,
          domains: Sequence[tuple[str, int]] = ()) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in domains]
    made = helper.make_model(graph, opset_imports=imports)
    made.ir_version = 10  # what onnxruntime 1.31 reads
    return made


def tensor(name: str, elem: int, shape: Sequence[int | str | None] | None = None
           ) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def sequence(name: str, elem: int, shape: Sequence[int | str | None] | None = None
             ) -> onnx.ValueInfoProto:
    return helper.make_value_info(
        name, helper.make_sequence_type_proto(helper.make_tensor_type_proto(elem, shape)))


def optional(name: str, inner: onnx.TypeProto) -> onnx.ValueInfoProto:
    return helper.make_value_info(name, helper.make_optional_type_proto(inner))


def run_kiln(proto: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    rep = kiln.backend.prepare(proto, "CPU")
    return list(rep.run(feeds))


def run_ort(proto: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_reference(proto: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(proto).run(None, feeds))


def assert_same(actual: Any, expected: Any, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Equal values, dtypes and shapes; lists element by element; None only for None."""
    if expected is None:
        assert actual is None
        return
    if isinstance(expected, list):
        assert isinstance(actual, list), f"expected a sequence, got {type(actual).__name__}"
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same(a, e, rtol, atol)
        return
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    if expected.dtype.kind in ("O", "U", "S"):
        assert actual.dtype == object
        assert actual.tolist() == expected.astype(object).tolist()
        return
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def compare_with_ort(proto: onnx.ModelProto, feeds: dict[str, Any], **tolerance: float) -> list:
    got = run_kiln(proto, feeds)
    want = run_ort(proto, feeds)
    assert len(got) == len(want)
    for a, e in zip(got, want):
        assert_same(a, e, **tolerance)
    return got
