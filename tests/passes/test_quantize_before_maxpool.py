"""quantize_before_maxpool on a ResNet-like stem (7x7/2 convolution, 3x3/2 max-pool, more
convolutions), built INT8 and FP8 on the CPU: the pool reads the stem's quantized output
and no quantize step follows it; the outputs equal those of the build without the pass
(but where x * (1/s) and x / s round a step apart) and stay close to ONNX Runtime FP32."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kiln.build import BuilderConfig, build_engine
from kiln.passes import quantize_before_maxpool
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import calibration_batches, export


class Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Conv2d(3, 16, 7, stride=2, padding=3)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.side = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        p = self.pool(torch.relu(self.stem(x)))
        b = torch.relu(self.body(p))
        return self.fc(torch.cat([b, self.side(p)], 1).mean((2, 3)))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export(Stem(), torch.randn(2, 3, 20, 20), tmp_path_factory.mktemp("mp") / "m.onnx")


def _build(path, precision: str, swap: bool = True):
    # level 0: both builds take the same tactics (timed choices may differ between builds,
    # and their float rounding can move a quantized value a step)
    config = BuilderConfig(precision=precision, device="cpu",
                           calibrator=Calibrator(calibration_batches((4, 3, 20, 20), 4)),
                           precision_constraints="obey", optimization_level=0)
    with pytest.MonkeyPatch.context() as patch:
        if not swap:
            patch.setattr(quantize_before_maxpool, "move_quantize_before",
                           lambda graph, node, through=(): False)
        return build_engine(str(path), config)


def _pool_reads(engine) -> tuple[str, list[str]]:
    """The op that makes the pool's input, and the ops that read its output."""
    layers = engine.layers()
    pool = next(layer for layer in layers if layer["op"] == "MaxPool")
    made_by = {out: layer["op"] for layer in layers for out in layer["outputs"] or [] if out}
    readers = [layer["op"] for layer in layers if pool["outputs"][0] in layer["inputs"]]
    return made_by[pool["inputs"][0]], readers


@pytest.fixture(scope="module", params=["int8", "fp8"])
def engines(model, request):
    return _build(model, request.param), _build(model, request.param, swap=False)


@pytest.mark.parametrize("shape", [(3, 3, 20, 20), (1, 3, 20, 20), (5, 3, 20, 20)], ids=str)
def test_the_pool_reads_the_quantized_stem(model, engines, shape):
    swapped, plain = engines
    assert _pool_reads(plain) == ("QConv", ["Quantize"])
    maker, readers = _pool_reads(swapped)
    assert maker == "QConv" and set(readers) == {"QConv"}
    stem = next(layer for layer in swapped.layers() if layer["op"] == "QConv")
    assert stem["attrs"].get("out_scale")  # the step became the stem's epilogue
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    got = np.asarray(ExecutionContext(swapped).run({"x": x})["y"])
    want = np.asarray(ExecutionContext(plain).run({"x": x})["y"])
    np.testing.assert_allclose(got, want, rtol=0, atol=0.01 * np.abs(want).max())
    assert np.mean(got == want) > 0.6  # FP8: a step moves several logits
    reference = ort.InferenceSession(str(model)).run(None, {"x": x})[0].ravel()
    got = got.astype(np.float64).ravel()
    assert got @ reference / np.linalg.norm(got) / np.linalg.norm(reference) > 0.99
