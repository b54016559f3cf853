"""kiln's quantized operators against independent references: Quantize/Dequantize against
ONNX Runtime's QuantizeLinear/DequantizeLinear, and QConv/QGemm/QMatMul against integer
arithmetic in numpy (int64 sliding windows), with the float32 epilogue spelled out."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

from kiln.ops.quantized import dequantize, qconv, qgemm, qmatmul, quantize


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int):
    zp_type = TensorProto.INT8 if zp.dtype == np.int8 else TensorProto.UINT8
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("q", zp_type, list(x.shape)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_and_dequantize_match_onnx_runtime(dtype, per_channel):
    rng = np.random.default_rng(int(per_channel) + 2 * (dtype == np.uint8))
    x = (rng.standard_normal((2, 4, 5, 3)) * 3).astype(np.float32)
    scale = rng.uniform(0.01, 0.05, 4 if per_channel else 1).astype(np.float32)
    x[0, :, 0, 0] = 2.5 * scale if per_channel else 2.5 * scale[0]  # ties round to even
    x[1, 0, 0, :] = 1e4  # saturates
    zp = (rng.integers(-10, 10, scale.shape) + (128 if dtype == np.uint8 else 0)).astype(dtype)
    if not per_channel:
        scale, zp = scale.reshape(()), zp.reshape(())
    want_q, want_y = _ort_qdq(x, scale, zp, axis=1)
    q = quantize(torch.from_numpy(x), scale=scale.tolist(), zero_point=zp.tolist(), axis=1,
                 to=np.dtype(dtype).name)
    np.testing.assert_array_equal(q.numpy(), want_q)
    y = dequantize(q, scale=scale.tolist(), zero_point=zp.tolist(), axis=1)
    np.testing.assert_array_equal(y.numpy(), want_y)


def _int_conv(x, w, stride, pads, dilation):
    """Integer NCHW convolution (one group) with int64 sliding windows."""
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = w.shape[2:]
    span = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    windows = sliding_window_view(x, span, axis=(2, 3))[:, :, ::stride[0], ::stride[1]]
    windows = windows[..., ::dilation[0], ::dilation[1]]
    return np.einsum("nchwij,ocij->nohw", windows.astype(np.int64), w.astype(np.int64))


def _epilogue(acc, x_scale, w_scale, bias, channel_shape):
    scales = (np.float32(x_scale) * w_scale.astype(np.float32)).reshape(channel_shape)
    y = acc.astype(np.float32) * scales
    return y + bias.reshape(channel_shape) if bias is not None else y


def _requantize(y, out_scale, zp, lo, hi):
    inv = np.float32(1.0) / np.float32(out_scale)
    return np.clip(np.rint(y * inv) + zp, lo, hi)


@pytest.mark.parametrize("case", range(4))
def test_qconv_is_exact_integer_arithmetic(case):
    rng = np.random.default_rng(case)
    stride, pads, dilation = [((1, 1), (1, 1, 1, 1), (1, 1)), ((2, 2), (1, 0, 1, 1), (1, 1)),
                              ((1, 2), (0, 0, 0, 0), (2, 1)), ((1, 1), (2, 2, 2, 2), (1, 1))][case]
    x_uint8 = case % 2 == 1
    x = rng.integers(0, 256, (2, 5, 9, 8)) if x_uint8 else rng.integers(-128, 128, (2, 5, 9, 8))
    x = x.astype(np.uint8 if x_uint8 else np.int8)
    w = rng.integers(-127, 128, (6, 5, 3, 3)).astype(np.int8)
    zp = int(rng.integers(100, 150)) if x_uint8 else int(rng.integers(-5, 5))
    x_scale, w_scale = 0.02, rng.uniform(0.001, 0.01, 6).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    acc = _int_conv(x.astype(np.int64) - zp, w, stride, pads, dilation)
    want = _epilogue(acc, x_scale, w_scale, bias, (1, -1, 1, 1))
    got = qconv(torch.from_numpy(x), torch.from_numpy(w), x_scale=x_scale, x_zero_point=zp,
                w_scale=w_scale, bias=bias, strides=list(stride), pads=list(pads),
                dilations=list(dilation))
    np.testing.assert_array_equal(got.numpy(), want)
    # int8 residual, ReLU and requantization to int8 in the epilogue
    residual = rng.integers(-128, 128, want.shape).astype(np.int8)
    y = np.maximum(want + (residual.astype(np.int64) - 3).astype(np.float32) * np.float32(0.05),
                   0)
    got = qconv(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(residual),
                x_scale=x_scale, x_zero_point=zp, w_scale=w_scale, bias=bias,
                residual_scale=0.05, residual_zero_point=3, activation="Relu", out_scale=0.07,
                out_zero_point=-4, out_type="int8", strides=list(stride), pads=list(pads),
                dilations=list(dilation))
    assert got.dtype == torch.int8
    np.testing.assert_array_equal(got.numpy(), _requantize(y, 0.07, -4, -128, 127))


def test_grouped_qconv():
    rng = np.random.default_rng(9)
    x = rng.integers(-128, 128, (1, 6, 7, 7)).astype(np.int8)
    w = rng.integers(-127, 128, (6, 1, 3, 3)).astype(np.int8)  # depthwise
    got = qconv(torch.from_numpy(x), torch.from_numpy(w), x_scale=0.5, w_scale=[0.25] * 6,
                group=6, pads=[1, 1, 1, 1])
    acc = np.concatenate([_int_conv(x[:, c:c + 1], w[c:c + 1], (1, 1), (1, 1, 1, 1), (1, 1))
                          for c in range(6)], axis=1)
    np.testing.assert_array_equal(got.numpy(), acc.astype(np.float32) * np.float32(0.125))


def test_qgemm_and_qmatmul_are_exact_integer_arithmetic():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (3, 5, 40)).astype(np.uint8)
    w = rng.integers(-127, 128, (24, 40)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, 24).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    acc = (a.astype(np.int64) - 131) @ w.astype(np.int64).T
    want = _epilogue(acc, 0.03, w_scale, bias, (-1,))
    got = qgemm(torch.from_numpy(a), torch.from_numpy(w), a_scale=0.03, a_zero_point=131,
                w_scale=w_scale, bias=bias)
    np.testing.assert_array_equal(got.numpy(), want)
    got = qgemm(torch.from_numpy(a), torch.from_numpy(w), a_scale=0.03, a_zero_point=131,
                w_scale=w_scale, bias=bias, out_scale=0.2, out_zero_point=128,
                out_type="uint8")
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), _requantize(want, 0.2, 128, 0, 255))
    b = rng.integers(-128, 128, (3, 40, 7)).astype(np.int8)
    acc = (a.astype(np.int64) - 131) @ (b.astype(np.int64) + 2)
    got = qmatmul(torch.from_numpy(a), torch.from_numpy(b), a_scale=0.03, a_zero_point=131,
                  b_scale=0.5, b_zero_point=-2, out_dtype="fp16")
    assert got.dtype == torch.float16
    want = (acc.astype(np.float32) * (np.float32(0.03) * np.float32(0.5))).astype(np.float16)
    np.testing.assert_array_equal(got.numpy(), want)


def test_fp8_layers_accumulate_the_float8_values():
    rng = np.random.default_rng(5)
    a = torch.from_numpy(rng.standard_normal((4, 32)).astype(np.float32) * 20).to(
        torch.float8_e4m3fn)
    w = torch.from_numpy(rng.standard_normal((8, 32)).astype(np.float32) * 20).to(
        torch.float8_e4m3fn)
    got = qgemm(a, w, a_scale=0.1, w_scale=[0.01] * 8, out_scale=0.05, out_type="fp8e4m3")
    assert got.dtype == torch.float8_e4m3fn
    exact = a.double() @ w.double().T * (0.1 * 0.01)
    np.testing.assert_allclose(got.double().numpy(), (exact / 0.05).clamp(-448, 448).numpy(),
                               rtol=0.07, atol=0.02)


@pytest.mark.parametrize("k,bound", [(2048, 127), (64, 127), (3000, 3)])
def test_accumulation_is_exact_whichever_float_type_holds_it(k, bound):
    """Large sums go through float64, small ones through float32: both exact."""
    rng = np.random.default_rng(k)
    a = rng.integers(-bound, bound + 1, (6, k)).astype(np.int8)
    w = rng.integers(-127, 128, (5, k)).astype(np.int8)
    got = qgemm(torch.from_numpy(a), torch.from_numpy(w), a_scale=1.0, w_scale=[1.0] * 5)
    want = a.astype(np.int64) @ w.astype(np.int64).T
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))


def test_long_convolutions_stay_exact():
    """K = 256*3*3 with full-range values: summed in exact float32 channel chunks."""
    rng = np.random.default_rng(13)
    x = rng.integers(-128, 128, (1, 256, 5, 5)).astype(np.int8)
    w = rng.integers(-127, 128, (4, 256, 3, 3)).astype(np.int8)
    got = qconv(torch.from_numpy(x), torch.from_numpy(w), x_scale=1.0, x_zero_point=-3,
                w_scale=[1.0] * 4, pads=[1, 1, 1, 1])
    want = _int_conv(x.astype(np.int64) + 3, w, (1, 1), (1, 1, 1, 1), (1, 1))
    np.testing.assert_array_equal(got.numpy(), want.astype(np.float32))
