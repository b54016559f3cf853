"""lstm-torch (torch's fused LSTM) and lstm-steps (a GEMM per step), the weights reordered
from ONNX's gate order, against ONNX Runtime (kiln's reference for the batch-major layout
ONNX Runtime lacks), on fresh random weights and inputs: forward and bidirectional, both
layouts, with and without initial states and biases, one to three outputs; layers they
cannot run (clipping, coupled gates) keep the reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kiln.build import BuilderConfig, build_engine
from kiln.kernels import get_tactic
from kiln.ops.rnn import lstm
from kiln.runtime import ExecutionContext


def _lstm_model(rng, seq, batch, inputs, hidden, direction, layout, states, bias, outputs,
                extra=None):
    dirs = 2 if direction == "bidirectional" else 1
    inits = [numpy_helper.from_array(
        (rng.standard_normal((dirs, 4 * hidden, inputs)) * 0.3).astype(np.float32), "W"),
        numpy_helper.from_array(
            (rng.standard_normal((dirs, 4 * hidden, hidden)) * 0.3).astype(np.float32), "R")]
    names = ["x", "W", "R", "", "", "", ""]
    if bias:
        inits.append(numpy_helper.from_array(
            rng.standard_normal((dirs, 8 * hidden)).astype(np.float32), "B"))
        names[3] = "B"
    x_shape = [batch, seq, inputs] if layout else [seq, batch, inputs]
    state_shape = [batch, dirs, hidden] if layout else [dirs, batch, hidden]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)]
    if states:
        names[5:7] = ["h0", "c0"]
        graph_inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, state_shape)
                         for n in ("h0", "c0")]
    out_names = ["y", "h", "c"][:outputs]
    node = helper.make_node("LSTM", names, out_names, name="lstm", hidden_size=hidden,
                            direction=direction, layout=layout, **(extra or {}))
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                               for n in out_names], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    if states:
        feeds.update({n: rng.standard_normal(state_shape).astype(np.float32)
                      for n in ("h0", "c0")})
    return model, feeds


CASES = [  # (seq, batch, inputs, hidden, direction, layout, states, bias, outputs)
    (1, 1, 128, 128, "forward", 0, True, True, 3),   # silero-vad's shape
    (7, 3, 10, 16, "forward", 0, False, True, 1),
    (5, 2, 12, 8, "bidirectional", 0, True, False, 3),
    (6, 4, 9, 12, "bidirectional", 1, True, True, 2),
    (3, 2, 5, 6, "forward", 1, False, False, 3),
]


@pytest.mark.parametrize("tactic", ["lstm-torch", "lstm-steps"])
@pytest.mark.parametrize("case", CASES)
def test_lstm_tactics_match_onnxruntime(tmp_path, case, tactic, monkeypatch):
    rng = np.random.default_rng(sum(c for c in case if isinstance(c, int)))
    model, feeds = _lstm_model(rng, *case)
    path = tmp_path / "lstm.onnx"
    onnx.save(model, path)
    # level 0: no timing, the first candidate by priority is taken: this one, made first
    monkeypatch.setattr(type(get_tactic(tactic)), "priority", 0)
    engine = build_engine(str(path), BuilderConfig(device="cpu", optimization_level=0))
    layer = next(layer for layer in engine.layers() if layer["op"] == "LSTM")
    assert layer["tactic"] == tactic
    got = ExecutionContext(engine).run(feeds)
    want = _reference(path, feeds, case)
    assert len(got) == len(want)
    for name, expected in zip(["y", "h", "c"], want):
        assert got[name].shape == expected.shape
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5)


def _reference(path, feeds: dict, case: tuple) -> list[np.ndarray]:
    """ONNX Runtime, or kiln's reference LSTM (checked by the ONNX node tests) for the
    batch-major layout, which ONNX Runtime does not run."""
    if not case[5]:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, feeds)
    model = onnx.load(path)
    consts = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
              for i in model.graph.initializer}
    node = model.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs["direction"] = attrs["direction"].decode()
    attrs.pop("hidden_size")
    args = [torch.from_numpy(feeds[n]) if n in feeds else consts.get(n) for n in node.input]
    out = lstm(*args, num_outputs=len(node.output), **attrs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def test_the_tuner_times_both(tmp_path):
    rng = np.random.default_rng(1)
    model, feeds = _lstm_model(rng, *CASES[0])
    path = tmp_path / "lstm.onnx"
    onnx.save(model, path)
    engine = build_engine(str(path), BuilderConfig(device="cpu", probe_inputs=feeds))
    layer = next(layer for layer in engine.layers() if layer["op"] == "LSTM")
    assert set(layer["timings"]) == {"lstm-torch", "lstm-steps"}
    assert layer["tactic"] == min(layer["timings"], key=layer["timings"].get)


@pytest.mark.parametrize("extra", [{"clip": 2.0}, {"input_forget": 1}])
def test_layers_torch_cannot_run_keep_the_reference(tmp_path, extra):
    rng = np.random.default_rng(3)
    model, _ = _lstm_model(rng, 4, 2, 6, 8, "forward", 0, False, True, 1, extra)
    path = tmp_path / "lstm.onnx"
    onnx.save(model, path)
    engine = build_engine(str(path), BuilderConfig(device="cpu"))
    layer = next(layer for layer in engine.layers() if layer["op"] == "LSTM")
    assert layer["tactic"] == "reference"
