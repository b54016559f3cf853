"""Explicitly quantized models (ONNX Runtime's quantize_static, QDQ and QOperator formats)
lower to kiln's INT8 layers and compute what ONNX Runtime computes.

ONNX Runtime with its graph optimizations off evaluates the Q/DQ graph exactly as ONNX
defines it; kiln's INT8 layers (exact integer accumulation) must agree with it to float
rounding. With optimizations on, ONNX Runtime runs its own fused integer kernels, which
differ from its unoptimized self by up to a few output quantization steps; against that
the test asks for the same top class. The graphs are read with `check_ops=False` so the
test exercises kiln's lowering whether or not the standard Q/DQ operators are registered.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.onnx import read_onnx
from kiln.ops.interpreter import run_graph
from kiln.passes import PassContext, run_pipeline
from kiln.runtime import ExecutionContext
from tests.quant._models import SmallCNN, SmallMLP, calibration_batches, export, quantize_with_ort


def _sessions(path):
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return (ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"]),
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


def _lowered(path, **options):
    graph = read_onnx(str(path), check_ops=False)
    run_pipeline(graph, PassContext(options=options))
    graph.lint()
    return graph


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    return export(SmallCNN(), torch.randn(2, 3, 16, 16),
                  tmp_path_factory.mktemp("cnn") / "cnn.onnx")


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("activation", ["int8", "uint8"])
def test_quantize_static_qdq_cnn(cnn_file, tmp_path, per_channel, activation):
    target = tmp_path / "q.onnx"
    quantize_with_ort(cnn_file, target, calibration_batches((4, 3, 16, 16), 4),
                      per_channel=per_channel, activation=activation)
    graph = _lowered(target)
    ops = Counter(n.op_type for n in graph.nodes)
    assert ops["QConv"] == 4 and ops["QGemm"] == 1 and "FusedConv" not in ops
    # INT8 flows from conv to conv where nothing else reads the activation
    assert any(n.attrs.get("out_scale") for n in graph.nodes if n.op_type == "QConv")
    exact, optimized = _sessions(target)
    rng = np.random.default_rng(5)
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        got = run_graph(graph, {"x": x})["y"]
        want = exact.run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        fused = optimized.run(None, {"x": x})[0]
        assert (got.argmax(1) == fused.argmax(1)).all()


def test_quantize_static_qdq_mlp_matmuls(tmp_path):
    source = export(SmallMLP(), torch.randn(2, 20), tmp_path / "mlp.onnx")
    target = tmp_path / "q.onnx"
    quantize_with_ort(source, target, calibration_batches((8, 20), 4), per_channel=True)
    graph = _lowered(target)
    assert Counter(n.op_type for n in graph.nodes)["QGemm"] == 3
    exact, _ = _sessions(target)
    x = np.random.default_rng(6).standard_normal((5, 20)).astype(np.float32)
    np.testing.assert_allclose(run_graph(graph, {"x": x})["y"], exact.run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_qoperator_format_qlinearconv_and_qlinearmatmul(cnn_file, tmp_path):
    # a 3-D input makes torch export MatMul (+Add) rather than Gemm, which the QOperator
    # format would turn into Microsoft's QGemm contrib operator
    source = export(SmallMLP(), torch.randn(2, 3, 20), tmp_path / "mlp.onnx")
    for model, shape, op_types in ((cnn_file, (2, 3, 16, 16), ["Conv"]),
                                   (source, (4, 3, 20), ["MatMul"])):
        target = tmp_path / f"qop_{model.stem}.onnx"
        proto = quantize_with_ort(model, target, calibration_batches(shape, 3),
                                  per_channel=False, fmt="qoperator", op_types=op_types)
        assert {"QLinearConv", "QLinearMatMul"} & {n.op_type for n in proto.graph.node}
        graph = _lowered(target)
        kinds = {n.op_type for n in graph.nodes}
        assert not kinds & {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear"}
        exact, optimized = _sessions(target)
        x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
        got = run_graph(graph, {"x": x})["y"]
        want = exact.run(None, {"x": x})[0]
        # QLinear ops requantize with ORT's own rounding of (acc + bias) * scale: one step
        step = np.abs(want).max() / 100
        np.testing.assert_allclose(got, want, atol=step)
        assert (got.argmax(-1) == optimized.run(None, {"x": x})[0].argmax(-1)).all()


def test_layer_precisions_keep_a_layer_in_float(cnn_file, tmp_path):
    target = tmp_path / "q.onnx"
    quantize_with_ort(cnn_file, target, calibration_batches((4, 3, 16, 16), 3),
                      per_channel=True)
    first = next(n.name for n in _lowered(target).nodes if n.op_type == "QConv")
    graph = _lowered(target, layer_precisions={first: "fp32"})
    assert first in {n.name for n in graph.nodes if n.op_type == "FusedConv"}
    exact, _ = _sessions(target)
    x = np.random.default_rng(8).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got, want = run_graph(graph, {"x": x})["y"], exact.run(None, {"x": x})[0]
    # the output is requantized: a float sum that lands on a rounding boundary may go to
    # the neighbouring level (oneDNN's summation order varies with its thread count), so
    # values agree to the step, and all but an odd one exactly
    step = _output_step(target)
    np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.01)
    assert np.mean(np.abs(got - want) > 1e-5) <= 0.1


def _output_step(path) -> float:
    """The scale of the last DequantizeLinear: one step of the quantized output."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    scales = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    last = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"][-1]
    return float(np.max(scales[last.input[1]]))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_engines_of_a_qdq_model(cnn_file, tmp_path, precision):
    """The whole builder: lowered layers get INT8 tactics; fp16 elsewhere in int8 builds."""
    target = tmp_path / "q.onnx"
    quantize_with_ort(cnn_file, target, calibration_batches((4, 3, 16, 16), 3),
                      per_channel=True)
    engine = build_engine(read_onnx(str(target), check_ops=False),
                          BuilderConfig(precision=precision, device="cpu",
                                        optimization_level=0))
    layers = [layer for layer in engine.layers() if layer["op"] in ("QConv", "QGemm")]
    assert len(layers) == 5
    assert all(layer["precision"] == "int8" and layer["tactic"] == "int8-exact-sim"
               for layer in layers)
    assert engine.plan["build"]["quantization"]["quantized_layers"] == 5
    exact, _ = _sessions(target)
    x = np.random.default_rng(9).standard_normal((3, 3, 16, 16)).astype(np.float32)
    got = ExecutionContext(engine).run({"x": x})["y"]
    want = exact.run(None, {"x": x})[0]
    tolerance = 1e-5 if precision == "fp32" else 0.05 * np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=1e-4)


def _modelopt_style(qtype: int, path) -> None:
    """Q/DQ as NVIDIA ModelOpt exports them: float weights behind QuantizeLinear/
    DequantizeLinear (per output channel), symmetric activations, int8 or FP8 E4M3."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(21)
    def zero(shape):
        kind = np.float32 if qtype == TensorProto.FLOAT8E4M3FN else np.int8
        return helper.make_tensor("z", qtype, shape, np.zeros(int(np.prod(shape)), kind).tolist())

    qmax = 448.0 if qtype == TensorProto.FLOAT8E4M3FN else 127.0
    inits, nodes, current = [], [], "x"
    for i, (cin, cout) in enumerate(((4, 8), (8, 6))):
        w = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.abs(w).reshape(cout, -1).max(1) / qmax, f"ws{i}"),
                  numpy_helper.from_array(np.array(3.0 / qmax, np.float32), f"xs{i}"),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"b{i}")]
        wz, xz = zero([cout]), zero([])
        wz.name, xz.name = f"wz{i}", f"xz{i}"
        inits += [wz, xz]
        nodes += [
            helper.make_node("QuantizeLinear", [current, f"xs{i}", f"xz{i}"], [f"xq{i}"]),
            helper.make_node("DequantizeLinear", [f"xq{i}", f"xs{i}", f"xz{i}"], [f"xd{i}"]),
            helper.make_node("QuantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"wq{i}"],
                             axis=0),
            helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", f"wz{i}"], [f"wd{i}"],
                             axis=0),
            helper.make_node("Conv", [f"xd{i}", f"wd{i}", f"b{i}"], [f"c{i}"], pads=[1] * 4),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        current = f"r{i}"
    graph = helper.make_graph(
        nodes, "modelopt", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          ["n", 4, 8, 8])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("fp8", [False, True])
def test_modelopt_style_float_weights_behind_qdq(tmp_path, fp8):
    from onnx import TensorProto

    path = tmp_path / "modelopt.onnx"
    _modelopt_style(TensorProto.FLOAT8E4M3FN if fp8 else TensorProto.INT8, path)
    graph = _lowered(path)
    convs = [n for n in graph.nodes if n.op_type == "QConv"]
    assert len(convs) == 2
    assert convs[0].attrs.get("out_scale")  # the first conv hands INT8/FP8 to the second
    plain = ort.SessionOptions()  # (ORT's own Q/DQ fusion refuses float8)
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(22).standard_normal((2, 4, 8, 8)).astype(np.float32)
    want = exact.run(None, {"x": x})[0]
    got = next(iter(run_graph(graph, {"x": x}).values()))
    if fp8:  # float8 products are summed in float32 in a different order than ORT's
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_qdq_model_file_builds_and_runs(cnn_file, tmp_path):
    """From the file, through the reader's operator check (the standard Q/DQ operators are
    registered), to an INT8 engine that agrees with ONNX Runtime's Q/DQ semantics."""
    target = tmp_path / "q.onnx"
    quantize_with_ort(cnn_file, target, calibration_batches((4, 3, 16, 16), 3),
                      per_channel=True)
    engine = build_engine(str(target), BuilderConfig(precision="int8", device="cpu",
                                                     fallback_precision="fp32",
                                                     optimization_level=0))
    assert sum(layer["precision"] == "int8" for layer in engine.layers()) == 5
    exact, _ = _sessions(target)
    x = np.random.default_rng(10).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(ExecutionContext(engine).run({"x": x})["y"],
                               exact.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_dynamically_quantized_models_run(tmp_path):
    """ONNX Runtime's quantize_dynamic: DynamicQuantizeLinear + MatMulInteger (scales
    computed from the data at run time) run through the standard operators, matching
    ONNX's reference evaluator. (ONNX Runtime's own x86 u8s8 kernels saturate pairs of
    products to int16, so it is no reference for MatMulInteger here.)"""
    import logging

    import onnx
    from onnx.reference import ReferenceEvaluator
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = export(SmallMLP(), torch.randn(2, 3, 20), tmp_path / "mlp.onnx")
    target = tmp_path / "dynamic.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    model = onnx.load(str(target))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    x = np.random.default_rng(11).standard_normal((4, 3, 20)).astype(np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    for precision in ("fp32", "int8"):
        engine = build_engine(str(target), BuilderConfig(precision=precision, device="cpu",
                                                         fallback_precision="fp32",
                                                         optimization_level=0))
        got = ExecutionContext(engine).run({"x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
