"""fuse_layernorm_quantize on small transformers (post-norm, where y also feeds the next
residual, and pre-norm, where only quantized layers read it), built INT8 on the CPU: the
quantize steps after LayerNorms are gone, the outputs equal those of the same build without
the pass (but where x * (1/s) and x / s round a step apart), and stay close to ONNX
Runtime's FP32 answer."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kiln.build import BuilderConfig, build_engine
from kiln.passes import fuse_layernorm_quantize
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import calibration_batches, export


class Encoder(nn.Module):
    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.encoder(x))


@pytest.fixture(scope="module", params=[False, True], ids=["post-norm", "pre-norm"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("ln_q") / "encoder.onnx"
    return export(Encoder(request.param), torch.randn(2, 6, 32), path)


def _build(path, precision: str, fuse: bool = True):
    # level 0: both builds take the same tactics (timed choices may differ between builds,
    # and their float rounding can move a quantized value a step)
    config = BuilderConfig(precision=precision, device="cpu",
                           calibrator=Calibrator(calibration_batches((4, 6, 32), 4)),
                           precision_constraints="obey", optimization_level=0)
    with pytest.MonkeyPatch.context() as patch:
        if not fuse:
            patch.setattr(fuse_layernorm_quantize, "_fuse", lambda graph, node: 0)
        return build_engine(str(path), config)


def _quantize_after_layernorm(engine) -> list[str]:
    layers = engine.layers()
    made_by = {out: layer["op"] for layer in layers for out in layer.get("outputs") or [] if out}
    return [layer["name"] for layer in layers if layer["op"] == "Quantize"
            and made_by.get((layer.get("inputs") or [None])[0]) == "LayerNorm"]


@pytest.fixture(scope="module", params=["int8", "fp8"])
def engines(model, request):
    return _build(model, request.param), _build(model, request.param, fuse=False)


@pytest.mark.parametrize("shape", [(3, 6, 32), (1, 6, 32), (7, 6, 32)], ids=str)
def test_layernorms_quantize_their_result(model, engines, shape):
    fused, plain = engines
    assert _quantize_after_layernorm(plain), "the model has no step for the pass to take"
    assert not _quantize_after_layernorm(fused)
    three = [layer for layer in fused.layers()
             if layer["op"] == "LayerNorm" and len(layer.get("outputs") or []) == 3]
    assert len(three) >= 2
    assert any(not layer["outputs"][0] for layer in three)  # y unread: not written at all
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    got = ExecutionContext(fused).run({"x": x})["y"]
    want = ExecutionContext(plain).run({"x": x})["y"]
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * np.abs(want).max())
    assert np.mean(got == want) > 0.99
    reference = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    got = np.asarray(got, dtype=np.float64).ravel()
    cosine = got @ reference.ravel() / np.linalg.norm(got) / np.linalg.norm(reference)
    assert cosine > 0.99


def test_a_saved_engine_keeps_the_layernorms_outputs(model, engines, tmp_path):
    """A LayerNorm with no first output (y unread) survives the plan file."""
    from kiln.engine.engine import Engine

    fused, _ = engines
    fused.save(tmp_path / "e.kiln")
    loaded = Engine.load(tmp_path / "e.kiln")
    outputs = [layer["outputs"] for layer in loaded.layers() if layer["op"] == "LayerNorm"]
    assert outputs == [layer["outputs"] for layer in fused.layers() if layer["op"] == "LayerNorm"]
    x = np.random.default_rng(9).standard_normal((2, 6, 32)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(ExecutionContext(loaded).run({"x": x})["y"]),
                                  np.asarray(ExecutionContext(fused).run({"x": x})["y"]))
