"""INT8/FP8 engines on the GPU agree with the same engines on the CPU (exact simulation):
same calibration (one cache), every tactic the tuner picks (Triton INT8 GEMM and
implicit-GEMM convolution, torch._int_mm, torch._scaled_mm, the fused quantize kernels),
and no cuBLAS tactic raised while the tuner timed it (the tuner skips one that does).
Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import SmallCNN, SmallMLP, export

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _engines(path, precision, cache, data):
    calibrator = Calibrator(data, method="entropy", cache=str(cache))
    cpu = build_engine(str(path), BuilderConfig(precision=precision, device="cpu",
                                                fallback_precision="fp32",
                                                optimization_level=0, calibrator=calibrator))
    gpu = build_engine(str(path), BuilderConfig(precision=precision, device="cuda",
                                                fallback_precision="fp32",
                                                optimization_level=2, calibrator=calibrator,
                                                precision_constraints="obey"))
    skipped = [key for key in gpu.plan["build"]["tuning"]["skipped"]
               if key.startswith(("int8-int-mm", "fp8-scaled-mm"))]
    assert not skipped, {key: gpu.plan["build"]["tuning"]["skipped"][key] for key in skipped}
    return cpu, gpu


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_cnn_on_the_gpu_matches_the_cpu_simulation(tmp_path, precision):
    if precision == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9")
    path = export(SmallCNN(), torch.randn(2, 3, 16, 16), tmp_path / "cnn.onnx")
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((8, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    cpu, gpu = _engines(path, precision, tmp_path / "cnn.cache", data)
    tactics = {layer["tactic"] for layer in gpu.layers() if layer["precision"] == precision}
    assert "int8-exact-sim" not in tactics, tactics
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    want = ExecutionContext(cpu).run({"x": x})["y"]
    got = ExecutionContext(gpu).run({"x": x})["y"]
    tolerance = 0.02 if precision == "int8" else 0.05  # a requantization step or two
    np.testing.assert_allclose(got, want, atol=tolerance * np.abs(want).max())


def test_dense_layers_on_the_gpu_match_the_cpu_simulation(tmp_path):
    path = export(SmallMLP(), torch.randn(2, 64, 20), tmp_path / "mlp.onnx")
    rng = np.random.default_rng(1)
    data = [{"x": rng.standard_normal((4, 64, 20)).astype(np.float32)} for _ in range(3)]
    cpu, gpu = _engines(path, "int8", tmp_path / "mlp.cache", data)
    x = rng.standard_normal((8, 64, 20)).astype(np.float32)
    want = ExecutionContext(cpu).run({"x": x})["y"]
    got = ExecutionContext(gpu).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())


def test_int8_attention_on_the_gpu_matches_the_cpu_simulation(tmp_path):
    """A BERT-style encoder layer: the QKV GEMM writes INT8 q/k/v, the Triton INT8
    attention kernel reads them (views of one tensor) with a padding mask and requantizes
    for the output projection."""
    from tests.quant.test_quantize_attention import Encoder, _export, _feeds

    torch.manual_seed(6)
    path = _export(Encoder(features=16, width=128, heads=2, tokens=40),
                   torch.randn(2, 40, 16), tmp_path / "encoder.onnx")
    rng = np.random.default_rng(2)
    data = [_feeds(rng, 8, tokens=40, features=16, pad=p) for p in (0, 5, 11)]
    cpu, gpu = _engines(path, "int8", tmp_path / "encoder.cache", data)
    attention = [layer for layer in gpu.layers() if layer["op"] == "QAttention"]
    assert len(attention) == 1 and attention[0]["tactic"].startswith("int8-triton-attention")
    for batch, pad in ((3, 0), (16, 7)):
        feeds = _feeds(rng, batch, tokens=40, features=16, pad=pad)
        want = ExecutionContext(cpu).run(feeds)["y"]
        got = ExecutionContext(gpu).run(feeds)["y"]
        np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
