"""Trains the demo model shipped in kiln/demo (run once; its outputs are committed).

A small CNN (three Conv+BatchNorm+ReLU blocks, max-pool, global average pool, Gemm,
Softmax) trained for a few seconds on the CPU on scikit-learn's bundled digits dataset
(1,797 real 8x8 handwritten digits, UCI ML hand-written digits, BSD licence). The ONNX
file is written with onnx.helper from the trained weights, so it does not depend on any
exporter; the test split's images and labels go beside it as real inputs.

    python tools/make_demo_model.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "kiln" / "demo"


def network() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def train(x: np.ndarray, y: np.ndarray) -> nn.Sequential:
    torch.manual_seed(0)
    model = network()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _epoch in range(40):
        order = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def to_onnx(model: nn.Sequential) -> onnx.ModelProto:
    nodes, inits = [], []
    current = "image"
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    norms = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    for i, (conv, bn) in enumerate(zip(convs, norms)):
        w, b = f"conv{i}.weight", f"conv{i}.bias"
        inits += [numpy_helper.from_array(conv.weight.detach().numpy(), w),
                  numpy_helper.from_array(conv.bias.detach().numpy(), b)]
        names = [f"bn{i}.{k}" for k in ("scale", "bias", "mean", "var")]
        for name, t in zip(names, (bn.weight, bn.bias, bn.running_mean, bn.running_var)):
            inits.append(numpy_helper.from_array(t.detach().numpy(), name))
        nodes += [
            helper.make_node("Conv", [current, w, b], [f"conv{i}"], name=f"conv{i}",
                             kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", [f"conv{i}", *names], [f"bn{i}"],
                             name=f"bn{i}", epsilon=bn.eps),
            helper.make_node("Relu", [f"bn{i}"], [f"relu{i}"], name=f"relu{i}"),
        ]
        current = f"relu{i}"
        if i == 1:
            nodes.append(helper.make_node("MaxPool", [current], ["pool"], name="pool",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            current = "pool"
    fc = model[-1]
    inits += [numpy_helper.from_array(fc.weight.detach().numpy(), "fc.weight"),
              numpy_helper.from_array(fc.bias.detach().numpy(), "fc.bias")]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc",
                         transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="kiln tools/make_demo_model.py")
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto


def main() -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0,
                                                        stratify=y)
    model = train(x_train, y_train)
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    print(f"test accuracy {accuracy:.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    onnx.save(to_onnx(model), OUT / "digits_cnn.onnx")
    np.savez_compressed(OUT / "digits_test.npz", image=x_test, label=y_test)


if __name__ == "__main__":
    main()
