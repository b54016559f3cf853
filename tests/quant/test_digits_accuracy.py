"""INT8 accuracy on a real trained model with real data: a small CNN trained during the test
on scikit-learn's bundled digits dataset (1,797 real handwritten digits), exported to ONNX,
calibrated on the training split with each method; INT8 test accuracy must be within one
point of FP32."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from kiln.build import BuilderConfig, build_engine
from kiln.quant import METHODS, Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import digits_split, train_classifier


def _network() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    x_train, x_test, y_train, y_test = digits_split()
    x_train, x_test = x_train[:, None], x_test[:, None]  # one channel
    torch.manual_seed(0)
    model = train_classifier(_network(), x_train, y_train, epochs=15)
    xt = torch.from_numpy(x_train)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (xt[:2],), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "n"}})
    path = tmp_path_factory.mktemp("digits") / "digits.onnx"
    path.write_bytes(buffer.getvalue())
    fp32 = _accuracy(build_engine(str(path), BuilderConfig(device="cpu",
                                                           optimization_level=0)),
                     x_test, y_test)
    assert fp32 > 0.9  # the network learned the task
    return path, x_train, x_test, y_test, fp32


def _accuracy(engine, x, y) -> float:
    logits = ExecutionContext(engine).run({"image": x})["logits"]
    return float((logits.argmax(1) == y).mean())


@pytest.mark.parametrize("method", METHODS)
def test_int8_accuracy_is_within_one_point_of_fp32(digits, method, tmp_path):
    path, x_train, x_test, y_test, fp32 = digits
    if method == "entropy":  # the training split as one .npz of stacked samples
        np.savez(tmp_path / "train.npz", image=x_train)
        data = str(tmp_path / "train.npz")
    else:  # or as a Python iterable of batches
        data = [{"image": x_train[i:i + 128]} for i in range(0, len(x_train), 128)]
    engine = build_engine(str(path), BuilderConfig(
        precision="int8", device="cpu", optimization_level=0,
        calibrator=Calibrator(data, method=method, batch_size=128)))
    quantized = [layer for layer in engine.layers() if layer["precision"] == "int8"]
    assert [layer["op"] for layer in quantized] == ["QConv"] * 3 + ["QGemm"]
    assert all(layer["tactic"] == "int8-exact-sim" for layer in quantized)
    int8 = _accuracy(engine, x_test, y_test)
    assert int8 >= fp32 - 0.01, f"{method}: INT8 {int8:.4f} vs FP32 {fp32:.4f}"
