"""quantize_before_views on a pre-norm encoder block built the way torchvision's ViT is
(nn.MultiheadAttention, batch first, whose export hands the LayerNorm's result to the
in-projection through a Transpose and the attention's output to the out-projection
through a Transpose and a Reshape), in INT8 on the CPU: no quantize step reads a view,
the LayerNorm and the attention quantize their own outputs, and the engine computes what
the build without the moves computes, close to ONNX Runtime FP32."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from kiln.build import BuilderConfig, build_engine
from kiln.passes import quantize_before_views
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import calibration_batches, export

VIEWS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
TOKENS, WIDTH = 10, 64  # two heads of 32: a head size the INT8 attention takes


class PreNormBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed = nn.Linear(12, WIDTH)
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.attention = nn.MultiheadAttention(WIDTH, 2, batch_first=True)
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 64), nn.GELU(), nn.Linear(64, WIDTH))
        self.head = nn.Linear(WIDTH, 5)

    def forward(self, x):
        h = self.embed(x)
        n = self.ln_1(h)
        h = h + self.attention(n, n, n, need_weights=False)[0]
        h = h + self.mlp(self.ln_2(h))
        return self.head(h.mean(1))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export(PreNormBlock(), torch.randn(2, TOKENS, 12),
                  tmp_path_factory.mktemp("qv") / "block.onnx")


def _build(path, batch: int, through: bool = True):
    config = BuilderConfig(precision="int8", device="cpu", precision_constraints="obey",
                           optimization_level=0,
                           profiles=[{"opt": {"x": [batch, TOKENS, 12]}}],
                           calibrator=Calibrator(calibration_batches((batch, TOKENS, 12), 4)))
    with pytest.MonkeyPatch.context() as patch:
        if not through:  # views moved only where a quantized layer feeds them directly
            move = quantize_before_views.move_quantize_before_ops
            patch.setattr(quantize_before_views, "move_quantize_before_ops",
                          lambda graph, ctx, ops, counter, through=(): move(
                              graph, ctx, ops, counter))
        return build_engine(str(path), config)


def _quantize_steps_reading_views(engine) -> list[str]:
    layers = engine.layers()
    made_by = {out: layer["op"] for layer in layers for out in layer["outputs"] or [] if out}
    return [made_by.get(layer["inputs"][0]) for layer in layers if layer["op"] == "Quantize"
            and made_by.get(layer["inputs"][0]) in VIEWS]


@pytest.mark.parametrize("batch", [2, 3])
def test_no_quantize_step_reads_a_view(model, batch):
    moved, plain = _build(model, batch), _build(model, batch, through=False)
    assert _quantize_steps_reading_views(plain)  # what the moves take away
    assert _quantize_steps_reading_views(moved) == []
    layers = moved.layers()
    attention = next(layer for layer in layers if layer["op"] == "QAttention")
    assert attention["attrs"].get("out_scale")  # requantizes for the out-projection
    first_norm = next(layer for layer in layers if layer["op"] == "LayerNorm")
    assert first_norm["attrs"].get("quantize_scale")  # quantizes for the in-projection
    x = np.random.default_rng(batch).standard_normal((batch, TOKENS, 12)).astype(np.float32)
    got = np.asarray(ExecutionContext(moved).run({"x": x})["y"], np.float64)
    same = np.asarray(ExecutionContext(plain).run({"x": x})["y"], np.float64)
    want = ort.InferenceSession(str(model)).run(None, {"x": x})[0].astype(np.float64)
    np.testing.assert_allclose(got, same, rtol=0, atol=0.02 * np.abs(same).max())
    assert got.ravel() @ want.ravel() / np.linalg.norm(got) / np.linalg.norm(want) > 0.99
