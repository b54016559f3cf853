"""Sub-byte and float8 types: casts against ONNX's reference, BitCast, and engine files."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.build import BuilderConfig, build_engine
from kiln.engine.plan_file import load_engine, save_engine
from kiln.runtime import ExecutionContext
from tests.ops.reference import assert_close, run_both

_SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e6, -1e6, 464.0, 61440.0, 1e-9],
                    np.float32)


def _values(seed: int, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.choice([0.01, 1, 50, 5000], shape)).astype(np.float32)
    x.reshape(-1)[: _SPECIAL.size] = _SPECIAL[: x.size]
    return x


@pytest.mark.parametrize("target", ["FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                    "FLOAT8E5M2FNUZ"])
@pytest.mark.parametrize("saturate", [0, 1])
@pytest.mark.parametrize("shape", [(40,), (6, 9)])
def test_cast_to_float8(target: str, saturate: int, shape: tuple) -> None:
    x = _values(len(shape) + saturate, shape)
    node = helper.make_node("Cast", ["x"], ["y"], to=getattr(TensorProto, target),
                            saturate=saturate)
    assert_close(*run_both(node, {"x": x}, 21))


@pytest.mark.parametrize("target", ["INT4", "UINT4", "INT2", "UINT2", "FLOAT4E2M1"])
@pytest.mark.parametrize("source", [np.float32, np.float16, np.int32])
def test_cast_to_sub_byte_and_back(target: str, source: type) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 7)) * 9).astype(source)
    to = getattr(TensorProto, target)
    narrow = helper.make_node("Cast", ["x"], ["y"], to=to)
    got, expected = run_both(narrow, {"x": x}, 25)
    assert_close(got, expected)
    wide = helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT)
    assert_close(*run_both(wide, {"y": expected[0]}, 25))


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_to_e8m0(round_mode: str, saturate: int) -> None:
    x = np.abs(_values(9, (30,)))
    x[-1] = 3.4e38  # the largest exponent: saturates or overflows to NaN
    node = helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT8E8M0,
                            saturate=saturate, round_mode=round_mode)
    assert_close(*run_both(node, {"x": x}, 25))


@pytest.mark.parametrize(("source", "target"), [
    (np.float32, TensorProto.INT32), (np.int64, TensorProto.DOUBLE),
    (np.uint16, TensorProto.FLOAT16), (np.bool_, TensorProto.UINT8)])
def test_bitcast(source: type, target: int) -> None:
    rng = np.random.default_rng(target)
    x = rng.integers(0, 2, (3, 4)).astype(source) if source is np.bool_ else (
        rng.standard_normal((3, 4)) * 1000).astype(source)
    node = helper.make_node("BitCast", ["x"], ["y"], to=target)
    got, expected = run_both(node, {"x": x}, 26)
    np.testing.assert_array_equal(got[0].view(np.uint8), expected[0].view(np.uint8))


def _build(model: onnx.ModelProto, tmp_path) -> ExecutionContext:
    engine = build_engine(model, BuilderConfig(device="cpu", precision="fp32"))
    path = tmp_path / "m.kiln"
    save_engine(engine, path)
    return ExecutionContext(load_engine(path))


def test_engine_file_keeps_e8m0_and_int4_constants(tmp_path) -> None:
    scale = np.array([0.25, 1, 2, 8], np.float32).astype(ml_dtypes.float8_e8m0fnu)
    weights = np.array([-8, -1, 3, 7], np.int8).astype(ml_dtypes.int4)
    graph = helper.make_graph(
        [helper.make_node("Where", ["pick", "scale", "scale"], ["s"]),
         helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.FLOAT),
         helper.make_node("DequantizeLinear", ["w", "s32"], ["dq"], axis=0),
         helper.make_node("Mul", ["x", "dq"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
              helper.make_tensor_value_info("pick", TensorProto.BOOL, [4]),
              helper.make_tensor_value_info("w", TensorProto.INT4, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(scale, "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    context = _build(model, tmp_path)
    x = np.random.default_rng(0).standard_normal(4).astype(np.float32)
    out = context.run({"x": x, "pick": np.ones(4, bool), "w": weights})["y"]
    np.testing.assert_allclose(out, x * weights.astype(np.float32) * scale.astype(np.float32))


def test_int4_output_comes_back_as_int4(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT4)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6])],
        [helper.make_tensor_value_info("y", TensorProto.INT4, [6])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    x = np.array([-9, -8, -1.5, 0, 7.9, 8], np.float32)
    out = _build(model, tmp_path).run({"x": x})["y"]
    assert out.dtype == ml_dtypes.int4
    np.testing.assert_array_equal(out, x.astype(ml_dtypes.int4))


def test_int4_input_as_numpy_or_torch_carrier(tmp_path) -> None:
    import torch

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "g",
        [helper.make_tensor_value_info("x", TensorProto.INT4, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    context = _build(model, tmp_path)
    values = np.array([-8, -1, 0, 7], np.int8)
    from_numpy = context.run({"x": values.astype(ml_dtypes.int4)})["y"]
    from_torch = context.run({"x": torch.from_numpy(values)})["y"]
    np.testing.assert_array_equal(from_numpy, values.astype(np.float32))
    np.testing.assert_array_equal(from_torch.numpy(), values.astype(np.float32))
    with pytest.raises(Exception, match="engine takes int4"):
        context.run({"x": values.astype(np.int16)})
