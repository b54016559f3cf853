"""fuse_projection_shortcut on ResNet-like bottlenecks whose first block has a projection
shortcut (stride 2 and stride 1), built INT8 on the CPU with the pass let run there: the
projection becomes part of the tail's layer, and the engine's answers are those of the
build without the pass (the fused operator computes both layers' arithmetic, the
projection's requantization included) and close to ONNX Runtime FP32."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kiln.build import BuilderConfig, build_engine
from kiln.passes import fuse_projection_shortcut
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import calibration_batches, export


class Bottlenecks(nn.Module):
    def __init__(self, stride: int) -> None:
        super().__init__()
        torch.manual_seed(7 + stride)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a1, self.a2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 3, stride, padding=1)
        self.a3, self.proj = nn.Conv2d(8, 32, 1), nn.Conv2d(16, 32, 1, stride)
        self.b1, self.b2, self.b3 = nn.Conv2d(32, 8, 1), nn.Conv2d(8, 8, 3, padding=1), \
            nn.Conv2d(8, 32, 1)  # a block whose residual is its input: nothing to fold
        self.fc = nn.Linear(32, 6)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a = torch.relu(self.a3(torch.relu(self.a2(torch.relu(self.a1(x))))) + self.proj(x))
        b = torch.relu(self.b3(torch.relu(self.b2(torch.relu(self.b1(a))))) + a)
        return self.fc(b.mean((2, 3)))


@pytest.fixture(scope="module", params=[2, 1], ids=["stride 2", "stride 1"])
def model(tmp_path_factory, request):
    path = tmp_path_factory.mktemp("proj") / "m.onnx"
    return export(Bottlenecks(request.param), torch.randn(2, 3, 12, 12), path)


def _build(path, fold: bool):
    config = BuilderConfig(precision="int8", device="cpu",
                           calibrator=Calibrator(calibration_batches((4, 3, 12, 12), 4)),
                           precision_constraints="obey", optimization_level=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fuse_projection_shortcut, "DEVICES", ("cuda", "cpu") if fold else ())
        patch.setattr(fuse_projection_shortcut, "_foldable", lambda c, sc: True)
        return build_engine(str(path), config)


@pytest.fixture(scope="module")
def engines(model):
    return _build(model, True), _build(model, False)


def test_the_projection_folds_into_the_tail(engines):
    folded, plain = engines
    ops = [layer["op"] for layer in folded.layers()]
    assert ops.count("QConvShortcut") == 1
    assert ops.count("QConv") == [layer["op"] for layer in plain.layers()].count("QConv") - 2
    tail = next(layer for layer in folded.layers() if layer["op"] == "QConvShortcut")
    assert len(tail["fused"]) >= 2 and tail["attrs"]["shortcut_out_scale"] > 0
    assert tail["attrs"]["residual_scale"] > 0 and len(tail["inputs"]) == 4


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_answers_are_the_unfolded_engines(model, engines, batch):
    folded, plain = engines
    x = np.random.default_rng(batch).standard_normal((batch, 3, 12, 12)).astype(np.float32)
    got = np.asarray(ExecutionContext(folded).run({"x": x})["y"])
    want = np.asarray(ExecutionContext(plain).run({"x": x})["y"])
    np.testing.assert_array_equal(got, want)
    fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert np.abs(got - fp32).max() < 0.1 * np.abs(fp32).max()


def test_the_folded_engine_saves_and_loads(engines, tmp_path):
    """The fused layer's attributes (the projection's per-channel scales and bias among
    them) go through the plan file."""
    from kiln.engine.engine import Engine

    folded, _ = engines
    folded.save(tmp_path / "m.plan")
    loaded = Engine.load(tmp_path / "m.plan")
    assert [layer["op"] for layer in loaded.layers()].count("QConvShortcut") == 1
    x = np.random.default_rng(11).standard_normal((2, 3, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(ExecutionContext(loaded).run({"x": x})["y"]),
                                  np.asarray(ExecutionContext(folded).run({"x": x})["y"]))


def test_not_on_the_cpu_by_default(model):
    config = BuilderConfig(precision="int8", device="cpu",
                           calibrator=Calibrator(calibration_batches((4, 3, 12, 12), 4)),
                           precision_constraints="obey", optimization_level=0)
    ops = [layer["op"] for layer in build_engine(str(model), config).layers()]
    assert "QConvShortcut" not in ops and ops.count("QConv") >= 8
