"""Per-layer profiles (kiln/runtime/profile.py): one time per engine layer, named as the
plan names them; the outputs of the profiled runs are the engine's own. On CUDA (GPU only)
the replayed times leave out the host's launch cost, so a chain of tiny layers sums to
less than its eager profile, while a large layer's time agrees with its eager one."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.runtime import ExecutionContext
from kiln.runtime.profile import profile_layers

MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,{k}] x, float[{k},{k}] w) => (float[N,{k}] y) {{
  a = MatMul(x, w)
  b = Relu(a)
  c = Softmax <axis = -1> (b)
  d = MatMul(c, w)
  y = Sigmoid(d)
}}"""


def _engine(device: str, k: int, rows: int):
    model = onnx.parser.parse_model(MODEL.format(k=k))
    w = np.random.default_rng(k).standard_normal((k, k)).astype(np.float32) / k ** 0.5
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    del model.graph.input[1]
    return build_engine(model.SerializeToString(), BuilderConfig(
        device=device, profiles=[{"opt": {"x": [rows, k]}}]))


@pytest.mark.parametrize("k,rows", [(32, 4), (64, 16)])
def test_one_time_per_layer_named_as_the_plan(k, rows):
    engine = _engine("cpu", k, rows)
    x = np.random.default_rng(rows).standard_normal((rows, k)).astype(np.float32)
    times = profile_layers(ExecutionContext(engine), {"x": x}, runs=3, warmup=1)
    names = [layer["name"] for layer in engine.plan["graph"]["layers"]]
    assert [t.name for t in times] == [n for n in names if n in {t.name for t in times}]
    assert len(times) >= 2 and all(t.ms > 0 for t in times)
    assert all(t.tactic != "?" and t.op != "?" for t in times)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replayed_profile_leaves_out_the_host():
    small = _engine("cuda", 32, 4)
    context = ExecutionContext(small)
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    eager = profile_layers(context, {"x": x}, runs=5, warmup=2)
    replayed = profile_layers(context, {"x": x}, runs=5, warmup=2, replayed=True)
    assert [t.name for t in eager] == [t.name for t in replayed]
    assert 0 < sum(t.ms for t in replayed) < sum(t.ms for t in eager)
    out = context.run({"x": x})["y"]  # the profiled runs left the engine intact
    np.testing.assert_allclose(out, ExecutionContext(small, cuda_graph=False).run(
        {"x": x})["y"], rtol=1e-5, atol=1e-6)
    large = _engine("cuda", 2048, 4096)
    context = ExecutionContext(large)
    x = np.random.default_rng(1).standard_normal((4096, 2048)).astype(np.float32)
    eager = {t.name: t.ms for t in profile_layers(context, {"x": x}, runs=5, warmup=2)}
    replayed = profile_layers(context, {"x": x}, runs=5, warmup=2, replayed=True)
    matmul = max(replayed, key=lambda t: t.ms)
    assert 0.7 * eager[matmul.name] < matmul.ms < 1.3 * eager[matmul.name]
