"""The models and the repository the serve tests run against.

digits   the demo CNN (real weights): version 1 a prebuilt .kiln engine, version 2 the ONNX
         model built at load; dynamic batching up to 16, two instances
plain    the same CNN without dynamic batching (each request runs alone)
mixed    eight inputs of eight dtypes -> six outputs (elementwise, batch axis N)
ragged   y = 2x + 1 over x [N, L] with L dynamic: only requests of equal L may share a batch
slow     the CNN behind a queue of 2 that holds requests 1.5 s (preferred batch 8, never met)
fixed    no config.pbtxt: completed from the engine (auto-complete)
broken   an ONNX model with an operator kiln does not have: fails to load
badcfg   a config.pbtxt that is not protobuf text: fails to load
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from kiln.build import BuilderConfig, build_engine
from kiln.demo import model_path

MIXED_INPUTS = {  # name: (ONNX type, numpy dtype)
    "a": (TensorProto.FLOAT, np.float32),
    "b": (TensorProto.FLOAT16, np.float16),
    "c": (TensorProto.INT32, np.int32),
    "d": (TensorProto.INT64, np.int64),
    "e": (TensorProto.UINT8, np.uint8),
    "f": (TensorProto.BOOL, np.bool_),
    "g": (TensorProto.DOUBLE, np.float64),
    "h": (TensorProto.INT8, np.int8),
}
MIXED_OUTPUTS = {"sum": TensorProto.FLOAT, "square": TensorProto.FLOAT16,
                 "scaled": TensorProto.INT64, "flags": TensorProto.BOOL,
                 "double": TensorProto.DOUBLE, "negated": TensorProto.INT8}

DIGITS_CONFIG = """
name: "digits"
max_batch_size: 16
version_policy { all {} }
input [{ name: "image" data_type: TYPE_FP32 dims: [1, 8, 8] }]
output [{ name: "probabilities" data_type: TYPE_FP32 dims: [10] },
        { name: "logits" data_type: TYPE_FP32 dims: [10] }]
dynamic_batching { max_queue_delay_microseconds: 2000 }
instance_group [{ count: 2 kind: KIND_CPU }]
"""
PLAIN_CONFIG = """
max_batch_size: 16
input [{ name: "image" data_type: TYPE_FP32 dims: [1, 8, 8] }]
output [{ name: "probabilities" data_type: TYPE_FP32 dims: [10] }]
"""
MIXED_CONFIG = """
max_batch_size: 8
dynamic_batching { max_queue_delay_microseconds: 1000 }
"""
RAGGED_CONFIG = """
max_batch_size: 8
input [{ name: "x" data_type: TYPE_FP32 dims: [-1] }]
output [{ name: "y" data_type: TYPE_FP32 dims: [-1] }]
dynamic_batching { preferred_batch_size: [8] max_queue_delay_microseconds: 300000 }
"""
SLOW_CONFIG = """
max_batch_size: 8
input [{ name: "image" data_type: TYPE_FP32 dims: [1, 8, 8] }]
output [{ name: "probabilities" data_type: TYPE_FP32 dims: [10] }]
dynamic_batching {
  preferred_batch_size: [8]
  max_queue_delay_microseconds: 1500000
  default_queue_policy { max_queue_size: 2 }
}
"""


def mixed_model() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info(n, t, ["N", 4]) for n, (t, _) in MIXED_INPUTS.items()]
    outputs = [helper.make_tensor_value_info(n, t, ["N", 4]) for n, t in MIXED_OUTPUTS.items()]
    nodes = [
        helper.make_node("Cast", ["c"], ["c_float"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "c_float"], ["sum"]),
        helper.make_node("Mul", ["b", "b"], ["square"]),
        helper.make_node("Cast", ["e"], ["e_long"], to=TensorProto.INT64),
        helper.make_node("Mul", ["d", "three"], ["d3"]),
        helper.make_node("Add", ["d3", "e_long"], ["scaled"]),
        helper.make_node("Greater", ["a", "zero"], ["positive"]),
        helper.make_node("Xor", ["f", "positive"], ["flags"]),
        helper.make_node("Add", ["g", "g"], ["double"]),
        helper.make_node("Neg", ["h"], ["negated"]),
    ]
    inits = [helper.make_tensor("three", TensorProto.INT64, [], [3]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(nodes, "mixed", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def mixed_inputs(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (rows, 4)
    return {
        "a": rng.standard_normal(shape).astype(np.float32),
        "b": rng.standard_normal(shape).astype(np.float16),
        "c": rng.integers(-1000, 1000, shape).astype(np.int32),
        "d": rng.integers(-2**40, 2**40, shape).astype(np.int64),
        "e": rng.integers(0, 256, shape).astype(np.uint8),
        "f": rng.random(shape) < 0.5,
        "g": rng.standard_normal(shape),
        "h": rng.integers(-127, 128, shape).astype(np.int8),
    }


def ragged_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L"])
    nodes = [helper.make_node("Mul", ["x", "two"], ["x2"]),
             helper.make_node("Add", ["x2", "one"], ["y"])]
    inits = [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
             helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    graph = helper.make_graph(nodes, "ragged", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def broken_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="kiln.test")
    graph = helper.make_graph([node], "broken", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("kiln.test", 1)],
                             ir_version=8)


def assert_cnn_close(got: np.ndarray, want: np.ndarray) -> None:
    """The CNN's answer from the server against the engine run directly. float32 to rounding
    rather than bit for bit: batched with other requests (or on another thread count), a
    convolution may sum in another order. The elementwise models are compared exactly."""
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def digits_images(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 8, 8), dtype=np.float32)


def write_repository(root: Path) -> Path:
    """Writes every model above under root; returns root."""
    cnn = model_path()
    (_model(root, "digits", DIGITS_CONFIG) / "1").mkdir()
    build_engine(cnn, BuilderConfig(device="cpu")).save(root / "digits" / "1" / "model.kiln")
    _copy(cnn, root / "digits" / "2" / "model.onnx")
    _copy(cnn, _model(root, "plain", PLAIN_CONFIG) / "1" / "model.onnx")
    _copy(cnn, _model(root, "slow", SLOW_CONFIG) / "1" / "model.onnx")
    _copy(cnn, _model(root, "fixed", None) / "1" / "model.onnx")
    _save(mixed_model(), _model(root, "mixed", MIXED_CONFIG) / "1" / "model.onnx")
    _save(ragged_model(), _model(root, "ragged", RAGGED_CONFIG) / "1" / "model.onnx")
    _save(broken_model(), _model(root, "broken", None) / "1" / "model.onnx")
    _copy(cnn, _model(root, "badcfg", "max_batch_size: [not a number") / "1" / "model.onnx")
    return root


def _model(root: Path, name: str, config: str | None) -> Path:
    path = root / name
    path.mkdir(parents=True)
    if config is not None:
        (path / "config.pbtxt").write_text(config)
    return path


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


def _save(model: onnx.ModelProto, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, target)
