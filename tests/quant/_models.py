"""Small networks for the quantization tests: exported from torch, and quantized with ONNX
Runtime's quantize_static where a test needs a Q/DQ (or QOperator) model."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv+ReLU, a residual block, a strided conv, pooling and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.c4 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c3(torch.relu(self.c2(a))) + a)
        c = torch.relu(self.c4(b))
        return self.fc(nn.functional.adaptive_avg_pool2d(c, 1).flatten(1))


class SmallMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(20, 32)
        self.l2 = nn.Linear(32, 32)
        self.l3 = nn.Linear(32, 5)

    def forward(self, x):
        return self.l3(torch.relu(self.l2(nn.functional.gelu(self.l1(x)))))


def export(module: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> Path:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}})
    path.write_bytes(buffer.getvalue())
    return path


def calibration_batches(shape: tuple[int, ...], count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def quantize_with_ort(source: Path, target: Path, batches: list[dict], *, per_channel: bool,
                      activation: str = "int8", fmt: str = "qdq",
                      op_types: list[str] | None = None) -> onnx.ModelProto:
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    quantize_static(str(source), str(target), Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8 if activation == "int8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    return onnx.load(str(target))


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real handwritten digits as [N, 8, 8] float32 in [0, 1]: (x_train,
    x_test, y_train, y_test), a stratified 3:1 split. Skips the test without scikit-learn."""
    import pytest

    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    data = datasets.load_digits()
    x = (data.images / 16.0).astype(np.float32)
    return train_test_split(x, data.target.astype(np.int64), test_size=0.25, random_state=0,
                            stratify=data.target)


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int,
                     logits=lambda model, batch: model(batch)) -> nn.Module:
    """Adam at 3e-3, batches of 64, seeded; `logits(model, batch)` calls the model."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: threads only contend (badly on a busy machine)
    try:
        for _epoch in range(epochs):
            order = torch.randperm(len(xt))
            for i in range(0, len(xt), 64):
                index = order[i:i + 64]
                loss = nn.functional.cross_entropy(logits(model, xt[index]), yt[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
