"""save -> load -> run computes bit for bit what the engine computed before it was saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.demo import model_path as demo_model_path
from kiln.demo import samples as demo_samples
from kiln.engine.engine import ALIGNMENT, Engine
from kiln.runtime import ExecutionContext
from tests import shared_models

# the demo, and real models with NHWC convs, int64 and bool inputs, external data, If bodies
# (khmersm in fp16 only adds seconds: fp16 matmuls are slow on the CPU)
CASES = [(m, p) for m in ("demo", "mtcnn-rnet", "attacut-c", "khmersm", "silero-vad")
         for p in ("fp32", "fp16") if (m, p) != ("khmersm", "fp16")]


def _model_and_feeds(name: str) -> tuple[object, list[dict], list[dict]]:
    """(model path, input sets, ONNX Runtime outputs per set or {} where none are known)."""
    if name == "demo":
        images, _ = demo_samples()
        rng = np.random.default_rng(7)
        feeds = [{"image": images[:16]}, {"image": images[100:103]},
                 {"image": rng.random((5, 1, 8, 8), dtype=np.float32)}]
        return demo_model_path(), feeds, [{} for _ in feeds]
    pairs = shared_models.samples(name)
    return (shared_models.model_path(name), [p[0] for p in pairs], [p[1] for p in pairs])


@pytest.fixture(scope="module", params=CASES, ids=lambda mp: f"{mp[0]}-{mp[1]}")
def built(request, tmp_path_factory):
    name, precision = request.param
    path, feeds, references = _model_and_feeds(name)
    engine = build_engine(path, BuilderConfig(precision=precision, device="cpu"))
    file = tmp_path_factory.mktemp("roundtrip") / f"{name}-{precision}.kiln"
    engine.save(file)
    return engine, file, feeds, references, precision


def _assert_identical(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    for name in before:
        a, b = np.asarray(before[name]), np.asarray(after[name])
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b, equal_nan=True), (
            f"{name}: max |diff| {np.abs(a.astype(np.float64) - b).max()}")


def test_loaded_engine_runs_bit_identical(built):
    engine, file, feeds, references, precision = built
    loaded = Engine.load(file)
    original, reloaded = ExecutionContext(engine), ExecutionContext(loaded)
    for inputs, reference in zip(feeds, references):
        before = original.run(inputs)
        _assert_identical(before, reloaded.run(inputs))
        if precision == "fp32":  # and the engine is right to begin with
            for name, expected in reference.items():
                np.testing.assert_allclose(before[name], expected, atol=1e-4, rtol=1e-3)


def test_loaded_engine_has_the_same_plan_and_tensors(built):
    engine, file, *_ = built
    loaded = Engine.load(file)
    plan = json.loads(json.dumps(engine.plan))
    assert {k: v for k, v in loaded.plan.items() if k != "checksums"} == plan
    assert set(loaded.tensors) == set(engine.tensors)
    for key, tensor in engine.tensors.items():
        same = loaded.tensors[key]
        assert same.dtype == tensor.dtype and same.shape == tensor.shape, key
        assert torch.equal(_bytes(same), _bytes(tensor)), key


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("name", ["demo", "attacut-c"])
def test_torch_inputs_give_the_numpy_results(name, tmp_path):
    path, feeds, _ = _model_and_feeds(name)
    build_engine(path, BuilderConfig(device="cpu")).save(tmp_path / "m.kiln")
    context = ExecutionContext(Engine.load(tmp_path / "m.kiln"))
    as_numpy = context.run(feeds[0])
    as_torch = context.run({k: torch.from_numpy(np.array(v)) for k, v in feeds[0].items()})
    assert all(isinstance(v, torch.Tensor) for v in as_torch.values())
    _assert_identical(as_numpy, {k: v.numpy() for k, v in as_torch.items()})


def test_load_aligns_tensors_whatever_the_header_length(tmp_path):
    """safetensors leaves tensors where the header length puts them; CPU kernels round
    differently at other alignments, so load must copy misaligned tensors."""
    engine = build_engine(demo_model_path(), BuilderConfig(device="cpu"))
    images = demo_samples()[0][:9]
    expected = ExecutionContext(engine).run({"image": images})
    for pad in range(9):  # the header grows in steps of 8 bytes: every offset mod 64
        engine.plan["build"]["note"] = "x" * pad
        file = tmp_path / f"pad{pad}.kiln"
        engine.save(file)
        loaded = Engine.load(file)
        assert all(t.data_ptr() % ALIGNMENT == 0 for t in loaded.tensors.values() if t.numel())
        _assert_identical(expected, ExecutionContext(loaded).run({"image": images}))


def test_save_stores_a_tensor_shared_by_two_keys(tmp_path):
    engine = build_engine(demo_model_path(), BuilderConfig(device="cpu"))
    key = next(iter(engine.tensors))
    engine.tensors["extra/alias"] = engine.tensors[key]  # safetensors refuses shared memory
    engine.save(tmp_path / "shared.kiln")
    loaded = Engine.load(tmp_path / "shared.kiln")
    assert torch.equal(loaded.tensors["extra/alias"], engine.tensors[key])


@pytest.mark.parametrize("shape", [(8, 3, 5, 5), (16, 16, 3, 1)])
def test_aligned_keeps_prepared_layouts_and_copies_the_rest(shape):
    """A tactic's prepared layouts stay in an engine (channels-last weights, column-major
    operands: its bind would otherwise run what the tuner did not time); strided,
    broadcast or misaligned tensors become contiguous copies, the values unchanged."""
    from kiln.engine.engine import aligned

    weight = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    assert aligned(weight) is weight
    column_major = torch.randn(shape[0], shape[1] * shape[2]).t()  # an int_mm operand
    assert aligned(column_major) is column_major
    broadcast = torch.randn(1, *shape[1:]).expand(shape)
    assert aligned(broadcast).is_contiguous() and torch.equal(aligned(broadcast), broadcast)
    strided = torch.randn(shape[0] * 2, *shape[1:])[::2]
    copied = aligned(strided)
    assert copied.is_contiguous() and torch.equal(copied, strided)
    offset = torch.randn(weight.numel() + 1)[1:].view(shape)  # 4 bytes past a boundary
    moved = aligned(offset)
    assert moved.data_ptr() % ALIGNMENT == 0 and torch.equal(moved, offset)


def test_channels_last_conv_binds_channels_last_weights(tmp_path):
    """conv-nhwc (the level-0 choice) runs with channels-last weights whether the engine was
    built here or loaded from a plan that stores tensors contiguous, and both agree."""
    from kiln.kernels import get_tactic

    tactic = get_tactic("conv-nhwc")
    weight, _ = tactic.weights({"weight": torch.randn(6, 4, 3, 3)})
    assert weight.is_contiguous(memory_format=torch.channels_last)
    engine = build_engine(demo_model_path(), BuilderConfig(device="cpu", optimization_level=0))
    assert any(layer["tactic"] == "conv-nhwc" for layer in engine.layers())
    images = demo_samples()[0][:5]
    engine.save(tmp_path / "cl.kiln")
    _assert_identical(ExecutionContext(engine).run({"image": images}),
                      ExecutionContext(Engine.load(tmp_path / "cl.kiln")).run({"image": images}))
