"""Quantization ops against ONNX's reference on seeded random inputs of several shapes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper

import kiln.backend
from tests.ops.reference import assert_close, node_model, run_both

_ZERO_TYPES = {
    "uint8": np.uint8, "int8": np.int8, "int16": np.int16, "uint16": np.uint16,
    "int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4, "int2": ml_dtypes.int2,
    "uint2": ml_dtypes.uint2,
}


@pytest.mark.parametrize("zero_type", sorted(_ZERO_TYPES))
@pytest.mark.parametrize("layout", ["tensor", "axis", "blocked"])
def test_quantize_dequantize_roundtrip(zero_type: str, layout: str) -> None:
    rng = np.random.default_rng(len(zero_type) + len(layout))
    x = (rng.standard_normal((3, 8, 5)) * 4).astype(np.float32)
    attrs: dict = {}
    if layout == "tensor":
        scale = np.array(0.37, np.float32)
        zero = rng.integers(-1, 2, ()).astype(np.float32)
    elif layout == "axis":
        scale = rng.uniform(0.1, 1.0, (8,)).astype(np.float32)
        zero = rng.integers(0, 2, (8,)).astype(np.float32)
        attrs = {"axis": 1}
    else:  # blocks of 3 along axis 1; the last block is short
        scale = rng.uniform(0.1, 1.0, (3, 3, 5)).astype(np.float32)
        zero = rng.integers(0, 2, (3, 3, 5)).astype(np.float32)
        attrs = {"axis": 1, "block_size": 3}
    zero = zero.astype(_ZERO_TYPES[zero_type])
    quant = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs)
    got, expected = run_both(quant, {"x": x, "s": scale, "z": zero}, 25)
    assert_close(got, expected)
    dequant = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **attrs)
    assert_close(*run_both(dequant, {"q": expected[0], "s": scale, "z": zero}, 25))


@pytest.mark.parametrize("target", ["FLOAT8E4M3FN", "FLOAT8E5M2", "FLOAT8E4M3FNUZ",
                                    "FLOAT4E2M1"])
@pytest.mark.parametrize("saturate", [0, 1])
def test_quantize_to_narrow_floats(target: str, saturate: int) -> None:
    rng = np.random.default_rng(saturate)
    x = (rng.standard_normal((4, 6)) * 300).astype(np.float32)
    scale = np.array(0.5, np.float32)
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["q"], saturate=saturate,
                            output_dtype=getattr(TensorProto, target))
    if target == "FLOAT4E2M1":  # no NaN or inf: always saturates
        node = helper.make_node("QuantizeLinear", ["x", "s"], ["q"],
                                output_dtype=TensorProto.FLOAT4E2M1)
    assert_close(*run_both(node, {"x": x, "s": scale}, 25))


@pytest.mark.parametrize("shape", [(4, 6, 5), (2, 3, 7, 4)])
@pytest.mark.parametrize("signed", [False, True])
def test_qlinear_matmul(shape: tuple, signed: bool) -> None:
    rng = np.random.default_rng(len(shape) + signed)
    dtype = np.int8 if signed else np.uint8
    low, high = (-128, 128) if signed else (0, 256)
    a = rng.integers(low, high, shape[:-2] + (shape[-3], shape[-2])).astype(dtype)
    b = rng.integers(low, high, (shape[-2], shape[-1])).astype(dtype)
    feeds = {
        "a": a, "sa": np.array(0.02, np.float32), "za": np.array(3, dtype),
        "b": b, "sb": np.array(0.03, np.float32), "zb": np.array(-2 if signed else 5, dtype),
        "sy": np.array(0.5, np.float32), "zy": np.array(1, dtype),
    }
    node = helper.make_node("QLinearMatMul", list(feeds), ["y"])
    assert_close(*run_both(node, feeds, 21))
    integer = helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])
    assert_close(*run_both(integer, {k: feeds[k] for k in ("a", "b", "za", "zb")}, 21))


@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 0, 2, 1]])
def test_qlinear_conv_and_conv_integer(pads: list[int]) -> None:
    rng = np.random.default_rng(sum(pads))
    x = rng.integers(0, 256, (2, 3, 7, 6)).astype(np.uint8)
    w = rng.integers(0, 256, (4, 3, 3, 2)).astype(np.uint8)
    feeds = {
        "x": x, "sx": np.array(0.01, np.float32), "zx": np.array(128, np.uint8),
        "w": w, "sw": rng.uniform(0.01, 0.05, (4,)).astype(np.float32),
        "zw": rng.integers(100, 150, (4,)).astype(np.uint8),
        "sy": np.array(0.2, np.float32), "zy": np.array(120, np.uint8),
        "b": rng.integers(-500, 500, (4,)).astype(np.int32),
    }
    node = helper.make_node("QLinearConv", list(feeds), ["y"], pads=pads, strides=[1, 2])
    assert_close(*run_both(node, feeds, 21))
    integer = helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], pads=pads)
    assert_close(*run_both(integer, {k: feeds[k] for k in ("x", "w", "zx", "zw")}, 21))


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
def test_dynamic_quantize_linear(shape: tuple) -> None:
    x = (np.random.default_rng(len(shape)).standard_normal(shape) * 3 + 1).astype(np.float32)
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    assert_close(*run_both(node, {"x": x}, 21))


def test_blocked_scale_of_the_wrong_shape_is_refused() -> None:
    x = np.zeros((3, 8), np.float32)
    scale = np.ones((2, 3), np.float32)  # 3 blocks of 3 cannot come from 2 rows
    node = helper.make_node("QuantizeLinear", ["x", "s"], ["q"], axis=1, block_size=3)
    model = node_model(node, {"x": x, "s": scale}, ["q"], 25)
    with pytest.raises(Exception, match="does not cover"):
        kiln.backend.prepare(model).run([x, scale])
