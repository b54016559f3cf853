"""ExecutionContext.run checks every input (name, type, rank, dims, profiles) before any work,
names what was wrong and what the engine takes, and keeps working after a refusal."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from kiln.build import BuilderConfig, build_engine
from kiln.errors import InputError
from kiln.runtime import ExecutionContext

# two profiles over the batch: 1..4 and 8..16 (5..7 and 17+ fit neither)
PROFILES = [
    {"min": {"x": [1, 4], "ids": [1, 4]}, "opt": {"x": [2, 4], "ids": [2, 4]},
     "max": {"x": [4, 4], "ids": [4, 4]}},
    {"min": {"x": [8, 4], "ids": [8, 4]}, "opt": {"x": [12, 4], "ids": [12, 4]},
     "max": {"x": [16, 4], "ids": [16, 4]}},
]


def two_input_model() -> onnx.ModelProto:
    """y = x * float(ids) + 0.5: a float input and an int64 input, batch dynamic, width 4."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "ids_f"], ["xm"]),
        helper.make_node("Add", ["xm", "half"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "two_inputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32),
            "ids": rng.integers(-3, 4, (batch, 4)).astype(np.int64)}


def reference(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """numpy, in the model's float32 steps."""
    return inputs["x"] * inputs["ids"].astype(np.float32) + np.float32(0.5)


@pytest.fixture(scope="module")
def context() -> ExecutionContext:
    engine = build_engine(two_input_model(), BuilderConfig(device="cpu", profiles=PROFILES))
    return ExecutionContext(engine)


@pytest.mark.parametrize("batch", [1, 3, 4, 8, 11, 16])
def test_shapes_inside_a_profile_run(context, batch):
    inputs = feeds(batch, seed=batch)
    np.testing.assert_allclose(context.run(inputs)["y"], reference(inputs), rtol=1e-6, atol=1e-7)


def test_numpy_and_torch_inputs_both_work(context):
    inputs = feeds(3, seed=1)
    as_numpy = context.run(inputs)["y"]
    as_torch = context.run({k: torch.from_numpy(v) for k, v in inputs.items()})["y"]
    assert isinstance(as_numpy, np.ndarray) and isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_numpy, reference(inputs), rtol=1e-6, atol=1e-7)
    assert np.array_equal(as_torch.numpy(), as_numpy)
    non_contiguous = {"x": torch.from_numpy(np.ascontiguousarray(inputs["x"].T)).T,
                      "ids": torch.from_numpy(inputs["ids"])}
    assert np.array_equal(context.run(non_contiguous)["y"].numpy(), as_numpy)


def _with(name: str, value: object, batch: int = 2) -> dict:
    inputs: dict = feeds(batch, seed=5)
    inputs[name] = value
    return inputs


# (case, inputs, substrings the message must hold: the input, what was given, what is taken)
BAD = [
    ("unknown name", lambda: {**feeds(2), "mask": np.ones((2, 4), np.float32)},
     ["unknown input", "'mask'", "'x' (fp32, ?x4)", "'ids' (int64, ?x4)"]),
    ("missing input", lambda: {"x": feeds(2)["x"]}, ["missing input", "'ids'", "int64, ?x4"]),
    ("nothing", lambda: {}, ["missing input", "'x'", "'ids'"]),
    ("float64", lambda: _with("x", feeds(2)["x"].astype(np.float64)),
     ["'x'", "fp64", "takes fp32", "astype(np.float32)"]),
    ("int32 ids", lambda: _with("ids", feeds(2)["ids"].astype(np.int32)),
     ["'ids'", "int32", "takes int64"]),
    ("torch float16", lambda: _with("x", torch.from_numpy(feeds(2)["x"]).half()),
     ["'x'", "fp16", "takes fp32", "x.to(torch.float32)"]),
    ("bool", lambda: _with("ids", np.ones((2, 4), bool)), ["'ids'", "bool", "int64"]),
    ("strings", lambda: _with("x", np.array([["a"] * 4] * 2)), ["'x'", "string", "fp32"]),
    ("rank 1", lambda: _with("x", np.zeros(4, np.float32)),
     ["'x'", "rank 1", "shape 4", "rank 2", "?x4"]),
    ("rank 3", lambda: _with("x", np.zeros((2, 4, 1), np.float32)),
     ["'x'", "rank 3", "2x4x1", "?x4"]),
    ("scalar", lambda: _with("x", np.float32(1.0)), ["'x'", "rank 0", "?x4"]),
    ("static dim", lambda: _with("x", np.zeros((2, 5), np.float32)),
     ["'x'", "2x5", "axis 1 must be 4", "?x4"]),
    ("between profiles", lambda: feeds(6), [
        "x 6x4", "ids 6x4", "outside every optimization profile",
        "profile 0 takes x 1..4 x 4", "profile 1 takes x 8..16 x 4", "--minShapes"]),
    ("above every profile", lambda: feeds(17), ["x 17x4", "8..16", "axis 0 is 17"]),
    ("empty batch", lambda: feeds(0), ["x 0x4", "1..4"]),
    ("python list", lambda: _with("x", [[0.0] * 4] * 2),
     ["'x'", "is a list", "numpy array or torch tensor", "fp32, ?x4"]),
    ("None", lambda: _with("ids", None), ["'ids'", "NoneType", "int64, ?x4"]),
    ("string", lambda: _with("x", "0.5"), ["'x'", "is a str"]),
    ("not a mapping", lambda: list(feeds(2).values()), ["mapping", "got a list", "'x'", "'ids'"]),
]


@pytest.mark.parametrize(("case", "make", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_and_the_context_still_runs(context, case, make, expected):
    with pytest.raises(InputError) as info:
        context.run(make())
    for part in expected:
        assert part in str(info.value), f"{part!r} not in: {info.value}"
    good = feeds(3, seed=9)  # the same context, right after the refusal
    np.testing.assert_allclose(context.run(good)["y"], reference(good), rtol=1e-6, atol=1e-7)


def test_inputs_are_checked_before_any_work(context, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the program ran on refused inputs")

    monkeypatch.setattr(context.program, "run", never)
    for _, make, _ in BAD:
        with pytest.raises(InputError):
            context.run(make())


def test_engine_without_profiles_flags_takes_any_batch():
    """No shape flags: the dynamic batch accepts any size, the static width only 4."""
    context = ExecutionContext(build_engine(two_input_model(), BuilderConfig(device="cpu")))
    for batch in (1, 2, 5, 33, 130):
        inputs = feeds(batch, seed=batch)
        got = context.run(inputs)["y"]
        np.testing.assert_allclose(got, reference(inputs), rtol=1e-6, atol=1e-7)
    with pytest.raises(InputError, match="axis 1 must be 4"):
        context.run(_with("x", np.zeros((2, 3), np.float32)))


def test_remembered_shapes_never_let_a_shape_outside_every_profile_through():
    """Shape sets once found inside a profile are remembered (the check is cheaper on the
    runs after); a shape outside every profile is refused before and after, every time,
    and a read-only or Fortran-ordered numpy input is copied, not aliased."""
    engine = build_engine(two_input_model(), BuilderConfig(device="cpu", profiles=PROFILES))
    context = ExecutionContext(engine)
    for batch in (2, 6, 2, 6, 12, 17, 12):
        inputs = feeds(batch, seed=batch)
        if batch in (6, 17):
            with pytest.raises(InputError, match="outside every optimization profile"):
                context.run(inputs)
        else:
            np.testing.assert_allclose(context.run(inputs)["y"], reference(inputs),
                                       rtol=1e-6, atol=1e-7)
    inputs = feeds(3, seed=9)
    frozen = {"x": np.asfortranarray(inputs["x"]), "ids": inputs["ids"].copy()}
    frozen["ids"].flags.writeable = False
    np.testing.assert_allclose(context.run(frozen)["y"], reference(inputs), rtol=1e-6,
                               atol=1e-7)
