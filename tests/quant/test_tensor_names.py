"""Thresholds go to the right tensors: after fusions (Conv+BatchNorm folded, Conv+ReLU
fused) every quantized layer's input scale is the threshold of the tensor it reads, found
through the model's tensor names (what calibration caches are keyed by)."""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.build import BuilderConfig, build_engine
from kiln.onnx import read_onnx
from kiln.ops.interpreter import compile_graph
from kiln.passes import PassContext, run_pipeline
from kiln.quant import Calibrator


def _conv_bn_model() -> bytes:
    """Conv -> BN (no activation: a linear bottleneck) -> Conv -> BN -> ReLU -> Conv."""
    rng = np.random.default_rng(0)
    inits, nodes, current = [], [], "x"
    for i, relu in enumerate((False, True, False)):
        inits += [numpy_helper.from_array(rng.standard_normal((8, 8 if i else 3, 3, 3))
                                          .astype(np.float32) * 0.3, f"w{i}")]
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"conv{i}"], pads=[1] * 4))
        current = f"conv{i}"
        if i < 2:
            stats = [rng.uniform(0.5, 2, 8), rng.uniform(-1, 1, 8), rng.uniform(-1, 1, 8),
                     rng.uniform(0.5, 2, 8)]
            names = [f"bn{i}_{k}" for k in ("scale", "bias", "mean", "var")]
            inits += [numpy_helper.from_array(s.astype(np.float32), n)
                      for s, n in zip(stats, names)]
            nodes.append(helper.make_node("BatchNormalization", [current, *names], [f"bn{i}"]))
            current = f"bn{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [current], [f"relu{i}"]))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes, "conv_bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         ["n", 3, 8, 8])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_each_layer_gets_the_threshold_of_its_own_input():
    model = _conv_bn_model()
    batch = {"x": np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    engine = build_engine(model, BuilderConfig(
        precision="int8", fallback_precision="fp32", device="cpu", optimization_level=0,
        calibrator=Calibrator([batch], method="minmax")))
    scales = {layer["fused"][0]: layer["attrs"]["x_scale"] for layer in engine.layers()
              if layer["op"] == "QConv"}
    assert len(scales) == 3
    # the largest |input| of each convolution in the optimized FP32 graph
    graph = read_onnx(model)
    run_pipeline(graph, PassContext())
    convs = {n.name: n for n in graph.nodes if n.op_type == "FusedConv"}
    inputs = {n.inputs[0].name: name for name, n in convs.items()}
    seen: dict[str, float] = {"x": float(np.abs(batch["x"]).max())}

    def record(_index, step, scope):
        for name in step.outputs:
            if name in inputs:
                seen[name] = float(scope[name].abs().max())

    compile_graph(graph).run({"x": torch.from_numpy(batch["x"])}, on_step=record)
    for value_name, node_name in inputs.items():
        model_node = convs[node_name].meta["fused"][0]
        np.testing.assert_allclose(scales[model_node] * 127, seen[value_name], rtol=1e-5)
