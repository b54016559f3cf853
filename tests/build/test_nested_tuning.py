"""Layers inside If bodies are tuned like any other: the probe run records the shapes of
the values inside the branch it takes, the tuner times those layers' candidates, and the
engine still matches ONNX Runtime on both branches."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.build import BuilderConfig, build_engine
from kiln.runtime import ExecutionContext


def _model(rng) -> onnx.ModelProto:
    """y = If(flag, Relu(Conv(-x, w1)), Conv(-x, w2)): 1-D convolutions over 16 channels,
    each reading a value made inside its branch (its shape known only if the branch ran)."""
    w1 = numpy_helper.from_array(rng.standard_normal((24, 16, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((24, 16, 5)).astype(np.float32), "w2")
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    then = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n1"], name="then_neg"),
         helper.make_node("Conv", ["n1", "w1"], ["c1"], name="then_conv", pads=[1, 1]),
         helper.make_node("Relu", ["c1"], ["t"], name="then_relu")], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n2"], name="else_neg"),
         helper.make_node("Conv", ["n2", "w2"], ["e"], name="else_conv", pads=[2, 2])],
        "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then,
                          else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, "t"]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])], [out], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _layers(layers: list[dict]) -> dict[str, dict]:
    found = {}
    for layer in layers:
        found[layer["name"]] = layer
        for attr in layer["attrs"].values():
            if isinstance(attr, dict) and "$graph" in attr:
                found.update(_layers(attr["$graph"]["layers"]))
    return found


@pytest.mark.parametrize("frames", [40, 97])
def test_layers_inside_the_taken_branch_are_tuned(tmp_path, frames):
    rng = np.random.default_rng(frames)
    path = tmp_path / "if.onnx"
    onnx.save(_model(rng), path)
    x = rng.standard_normal((1, 16, frames)).astype(np.float32)
    probe = {"x": x, "flag": np.array(True)}
    engine = build_engine(str(path), BuilderConfig(
        device="cpu", profiles=[{"opt": {"x": [1, 16, frames], "flag": []}}],
        probe_inputs=probe))
    layers = _layers(engine.layers())
    then_conv = next(layer for name, layer in layers.items() if "then_conv" in name)
    else_conv = next(layer for name, layer in layers.items() if "else_conv" in name)
    assert len(then_conv.get("timings", {})) >= 2  # timed: the probe went this way
    assert then_conv["tactic"] == min(then_conv["timings"], key=then_conv["timings"].get)
    assert "timings" not in else_conv  # never run by the probe: the default tactic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    context = ExecutionContext(engine)
    for flag in (True, False):
        feeds = {"x": rng.standard_normal((1, 16, frames)).astype(np.float32),
                 "flag": np.array(flag)}
        np.testing.assert_allclose(context.run(feeds)["y"], session.run(None, feeds)[0],
                                   rtol=1e-4, atol=1e-4)


def _rate_model(rng) -> onnx.ModelProto:
    """y = If(rate == 16000, x @ w, x[rate - 16000]): the generated probe (rate 0) takes the
    branch whose index is out of range, as silero-vad's took the wrong branch for its rate."""
    w = numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w")
    good = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["g"], name="mm")],
                             "good", [], [helper.make_tensor_value_info("g", TensorProto.FLOAT,
                                                                        None)])
    bad = helper.make_graph(
        [helper.make_node("Sub", ["rate", "sixteen"], ["row"], name="sub"),
         helper.make_node("Gather", ["x", "row"], ["b"], name="pick", axis=0)], "bad", [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    sixteen = numpy_helper.from_array(np.array(16000, np.int64), "sixteen")
    graph = helper.make_graph(
        [helper.make_node("Equal", ["rate", "sixteen"], ["is16"], name="eq"),
         helper.make_node("If", ["is16"], ["y"], name="branch", then_branch=good,
                          else_branch=bad)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6]),
         helper.make_tensor_value_info("rate", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, sixteen])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_failed_probe_names_the_fix_and_real_inputs_repair_it(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "rate.onnx"
    onnx.save(_rate_model(rng), path)
    generated = build_engine(str(path), BuilderConfig(device="cpu"))
    note = generated.plan["memory"]["note"]
    assert note.startswith("probe run at the opt shape failed") and "--loadInputs" in note
    real = {"x": rng.standard_normal((3, 6)).astype(np.float32), "rate": np.array(16000)}
    given = build_engine(str(path), BuilderConfig(device="cpu", probe_inputs=real))
    assert "note" not in given.plan["memory"] and "value_shapes" in given.plan
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, real)
    np.testing.assert_allclose(ExecutionContext(given).run(real)["y"], want[0], rtol=1e-5)
