"""CUDA-graph capture of whole engines (GPU only): what a capture must tolerate, and that a
replay gives the eager run's answers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.errors import InputError
from kiln.runtime import ExecutionContext
from tests.graph_support import ort_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Element-wise chains with literals (fused into one kiln.Elementwise program) and a scale
# computed from a dynamic dim (shape arithmetic on the host, the result used on the device).
MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[B,8,16] x) => (float[B,8,16] y) {
  half = Constant <value = float {0.5}> ()
  one = Constant <value = float {1.0}> ()
  a = Mul(x, half)
  b = Add(a, one)
  c = Abs(b)
  d = Sqrt(c)
  e = Max(d, half)
  s = Shape(x)
  i0 = Constant <value = int64 {0}> ()
  n = Gather <axis = 0> (s, i0)
  nf = Cast <to = 1> (n)
  scale = Div(one, nf)
  y = Mul(e, scale)
}"""


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.parser.parse_model(MODEL)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_capture_with_literals_and_host_shape_values(model, precision):
    engine = build_engine(model.SerializeToString(), BuilderConfig(
        precision=precision, device="cuda",
        profiles=[{"min": {"x": [1, 8, 16]}, "opt": {"x": [4, 8, 16]}, "max": {"x": [8, 8, 16]}}]))
    graphed = ExecutionContext(engine)
    eager = ExecutionContext(engine, cuda_graph=False)
    tolerance = 1e-6 if precision == "fp32" else 2e-3
    for batch in (4, 2, 4, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 8, 16)).astype(np.float32)
        got = graphed.run({"x": x})["y"]
        np.testing.assert_allclose(got, eager.run({"x": x})["y"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got, ort_run(model, {"x": x})["y"],
                                   rtol=tolerance, atol=tolerance)
    assert graphed.graphs is not None and not graphed.graphs.failures
    assert len(graphed.graphs.graphs) == 3  # one graph per batch size seen


def test_replays_of_known_shapes_stay_checked_and_fresh(model):
    """A run whose CUDA tensors match a captured graph skips the checks it passed for
    that capture: answers still follow the inputs, outputs are new tensors each run, and
    inputs of another type, rank, range or kind still get the full checks."""
    engine = build_engine(model.SerializeToString(), BuilderConfig(
        precision="fp32", device="cuda",
        profiles=[{"min": {"x": [1, 8, 16]}, "opt": {"x": [4, 8, 16]}, "max": {"x": [8, 8, 16]}}]))
    graphed = ExecutionContext(engine)
    rng = np.random.default_rng(0)
    first = None
    for _ in range(3):
        x = rng.standard_normal((4, 8, 16)).astype(np.float32)
        got = graphed.run({"x": torch.from_numpy(x).cuda()})["y"]
        assert isinstance(got, torch.Tensor) and got.is_cuda
        np.testing.assert_allclose(got.cpu().numpy(), ort_run(model, {"x": x})["y"],
                                   rtol=1e-6, atol=1e-6)
        if first is None:
            first, first_values = got, got.clone()
        else:
            assert got.data_ptr() != first.data_ptr()
    torch.testing.assert_close(first, first_values)  # later runs left it alone
    bad = {"x": torch.zeros(4, 8, 16, dtype=torch.float16, device="cuda")}, \
        {"x": torch.rand(9, 8, 16, device="cuda")}, {"x": torch.rand(4, 8, device="cuda")}, \
        {"x": torch.rand(4, 8, 16, device="cuda"), "extra": torch.rand(1, device="cuda")}
    for inputs in bad:
        with pytest.raises(InputError):
            graphed.run(inputs)
    x = rng.standard_normal((4, 8, 16)).astype(np.float32)
    out = graphed.run({"x": x})["y"]  # numpy in, numpy out, on the captured graph
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, ort_run(model, {"x": x})["y"], rtol=1e-6, atol=1e-6)
    assert len(graphed.graphs.graphs) == 1
