"""Tiny ONNX models for the bench tests, written with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES, CLASSES, VOCAB, DIM = 16, 10, 50, 8
IR_VERSION = 9  # what the pinned ONNX Runtime reads (onnx writes a newer one by default)


def classifier_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    w1 = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32) * 0.1
    b = rng.standard_normal(CLASSES).astype(np.float32)
    return w0, w1, b


def classifier(path: Path, batch: int | str = "N", seed: int = 0) -> Path:
    """logits = x @ (w0 + w1) + b; probs = Softmax(logits). `w0 + w1` is an Add of two
    constants: the optimized engine folds it, the unoptimized one runs it."""
    w0, w1, b = classifier_weights(seed)
    nodes = [
        helper.make_node("Add", ["w0", "w1"], ["w"], name="add_weights"),
        helper.make_node("MatMul", ["x", "w"], ["xw"], name="matmul"),
        helper.make_node("Add", ["xw", "b"], ["logits"], name="bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, CLASSES])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def embedding(path: Path) -> Path:
    """Mean of token embeddings under a mask: `input_ids` (int64 [N, T]) index a [VOCAB, DIM]
    table, `attention_mask` (int64 [N, T]) weights them, and a boolean `flip` negates."""
    rng = np.random.default_rng(1)
    table = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="lookup", axis=0),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("Neg", ["mean"], ["negated"]),
        helper.make_node("Where", ["flip", "negated", "mean"], ["pooled"]),
    ]
    graph = helper.make_graph(
        nodes, "embedding",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "T"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "T"]),
         helper.make_tensor_value_info("flip", TensorProto.BOOL, ["N", 1])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", DIM])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def one_hot_by_equal(path: Path, depth: int = 12) -> Path:
    """A one-hot written as JAX exports it: Equal(Expand(x[..., None]), iota) -> Cast."""
    iota = np.arange(depth, dtype=np.int32).reshape(1, 1, depth)
    nodes = [
        helper.make_node("Unsqueeze", ["codes", "last"], ["codes3"]),
        helper.make_node("Expand", ["iota", "shape"], ["iota_b"]),
        helper.make_node("Equal", ["codes3", "iota_b"], ["hot"]),
        helper.make_node("Cast", ["hot"], ["hotf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["hotf", "last"], ["counts"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "one_hot",
        [helper.make_tensor_value_info("codes", TensorProto.INT32, ["N", 6])],
        [helper.make_tensor_value_info("counts", TensorProto.FLOAT, ["N", 6])],
        [numpy_helper.from_array(iota, "iota"),
         numpy_helper.from_array(np.array([1, 1, depth], dtype=np.int64), "shape"),
         numpy_helper.from_array(np.array([-1], dtype=np.int64), "last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
