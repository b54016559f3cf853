"""Optimizer steps (ai.onnx.preview.training) against onnx's reference evaluator, on
seeded random tensors, several at once, and at the first step (T = 0) and later ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.ops._kiln_vs_ort import TRAINING, assert_same, model, run_kiln, run_reference, tensor

F = TensorProto.FLOAT
SHAPES = [(3,), (2, 4)]


def _optimizer_model(op: str, states: int, **attrs: Any):
    n = len(SHAPES)
    names = [f"x{i}" for i in range(n)] + [f"g{i}" for i in range(n)]
    names += [f"s{k}_{i}" for k in range(states) for i in range(n)]
    outputs = [f"x{i}_new" for i in range(n)]
    outputs += [f"s{k}_{i}_new" for k in range(states) for i in range(n)]
    node = helper.make_node(op, ["r", "t", *names], outputs, domain=TRAINING[0], **attrs)
    shapes = list(SHAPES) * (2 + states)
    inputs = [tensor("r", F, []), tensor("t", TensorProto.INT64, [])]
    inputs += [tensor(name, F, shape) for name, shape in zip(names, shapes)]
    return model([node], inputs, [tensor(o, F) for o in outputs], domains=[TRAINING]), names


def _feeds(names: list[str], step: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = list(SHAPES) * (len(names) // len(SHAPES))
    feeds = {name: rng.standard_normal(shape).astype(np.float32)
             for name, shape in zip(names, shapes)}
    for name in names:
        if name.startswith("s"):  # squared-gradient accumulators are never negative
            feeds[name] = np.abs(feeds[name])
    return {"r": np.array(0.1, np.float32), "t": np.array(step, np.int64), **feeds}


@pytest.mark.parametrize("step", [0, 1, 5])
def test_adagrad(step: int) -> None:
    proto, names = _optimizer_model("Adagrad", 1, decay_factor=0.1, epsilon=1e-6,
                                    norm_coefficient=0.01)
    feeds = _feeds(names, step, step)
    for got, want in zip(run_kiln(proto, feeds), run_reference(proto, feeds)):
        assert_same(got, want.astype(np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step", [0, 1, 5])
def test_adam(step: int) -> None:
    proto, names = _optimizer_model("Adam", 2, alpha=0.85, beta=0.95, epsilon=1e-6,
                                    norm_coefficient=0.01, norm_coefficient_post=0.02)
    feeds = _feeds(names, step, 10 + step)
    for got, want in zip(run_kiln(proto, feeds), run_reference(proto, feeds)):
        assert_same(got, want.astype(np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["standard", "nesterov"])
@pytest.mark.parametrize("step", [0, 3])
def test_momentum(mode: str, step: int) -> None:
    proto, names = _optimizer_model("Momentum", 1, alpha=0.9, beta=0.5, mode=mode,
                                    norm_coefficient=0.01)
    feeds = _feeds(names, step, 20 + step)
    for got, want in zip(run_kiln(proto, feeds), run_reference(proto, feeds)):
        assert_same(got, want.astype(np.float32), rtol=1e-5, atol=1e-6)


def test_momentum_rejects_an_unknown_mode() -> None:
    proto, names = _optimizer_model("Momentum", 1, alpha=0.9, beta=0.5, mode="heavy",
                                    norm_coefficient=0.0)
    with pytest.raises(RuntimeError, match="'standard' or 'nesterov', got 'heavy'"):
        run_kiln(proto, _feeds(names, 1, 0))
