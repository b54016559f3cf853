"""Optimization profiles: trtexec shape strings, min/opt/max resolution, and the shapes an
engine then accepts or refuses."""

from __future__ import annotations

import re

import numpy as np
import pytest

from kiln.build import BuilderConfig, build_engine
from kiln.build.profiles import (
    DEFAULT_OPT_DIM,
    DEFAULT_OPT_OTHER,
    DimRange,
    Profile,
    parse_shapes,
    resolve_profile,
)
from kiln.demo import model_path as demo_model_path
from kiln.demo import samples as demo_samples
from kiln.errors import InputError, KilnError
from kiln.ir import DType, Value
from kiln.runtime import ExecutionContext
from tests import shared_models

ort = pytest.importorskip("onnxruntime")


# ----------------------------------------------------------------- parsing
@pytest.mark.parametrize(("text", "expected"), [
    ("input:1x3x224x224,mask:1x128", {"input": [1, 3, 224, 224], "mask": [1, 128]}),
    ("'in:0':1x3", {"in:0": [1, 3]}),
    ('"a,b":2x3,c:4', {"a,b": [2, 3], "c": [4]}),
    ("'x:y:z':7", {"x:y:z": [7]}),
    (" x : 1X2 , y:3 ", {"x": [1, 2], "y": [3]}),
    ("x:1x2,", {"x": [1, 2]}),
    ("scalar:", {"scalar": []}),
    ("x:0x4", {"x": [0, 4]}),
    ("", {}),
    (None, {}),
])
def test_parse_shapes(text, expected):
    assert parse_shapes(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("x1x2", "is not name:dims"),
    (":1x2", "is not name:dims"),
    ("x:1xx2", "not integers joined by 'x'"),
    ("x:a", "not integers joined by 'x'"),
    ("x:1.5", "not integers joined by 'x'"),
    ("x:1x-2", "negative dimension"),
    ("x:1,y:2,x:3", "'x' is given twice"),
    ("'x:1", "unclosed ' quote"),
    ('"in:0:1x3', 'unclosed " quote'),
])
def test_parse_shapes_errors(text, message):
    with pytest.raises(KilnError, match=message) as info:
        parse_shapes(text, "--minShapes")
    assert "--minShapes" in str(info.value)


# ----------------------------------------------------------------- resolution
X = Value("x", DType.FLOAT, ("N", 3, "H", None))


def _ranges(profile: Profile, name: str = "x") -> list[tuple]:
    return [(d.min, d.opt, d.max) for d in profile.dims[name]]


def test_no_flags_take_any_size_of_dynamic_dims():
    profile = resolve_profile([X])
    assert _ranges(profile) == [(1, DEFAULT_OPT_DIM, None), (3, 3, 3),
                                (1, DEFAULT_OPT_OTHER, None), (1, DEFAULT_OPT_OTHER, None)]
    assert profile.accepts({"x": (1000, 3, 1, 4097)}) is None
    assert "axis 1 is 4" in profile.accepts({"x": (1, 4, 8, 8)})


def test_only_opt_is_one_fixed_shape():
    profile = resolve_profile([X], opt_shapes={"x": [2, 3, 8, 16]})
    assert _ranges(profile) == [(2, 2, 2), (3, 3, 3), (8, 8, 8), (16, 16, 16)]
    assert profile.accepts({"x": (2, 3, 8, 16)}) is None
    assert "axis 0 is 3" in profile.accepts({"x": (3, 3, 8, 16)})


def test_min_opt_max_give_ranges():
    profile = resolve_profile([X], {"x": [1, 3, 4, 4]}, {"x": [2, 3, 8, 8]},
                              {"x": [4, 3, 16, 32]})
    assert _ranges(profile) == [(1, 2, 4), (3, 3, 3), (4, 8, 16), (4, 8, 32)]
    assert profile.opt_shape("x") == [2, 3, 8, 8]
    assert profile.min_shape("x") == [1, 3, 4, 4]
    assert profile.max_shape("x") == [4, 3, 16, 32]
    for shape in [(1, 3, 4, 4), (4, 3, 16, 32), (3, 3, 5, 31)]:
        assert profile.accepts({"x": shape}) is None
    assert "axis 2 is 17, the profile allows 4..16" in profile.accepts({"x": (1, 3, 17, 4)})
    assert "rank 3" in profile.accepts({"x": (1, 3, 4)})


def test_profile_round_trips_through_json():
    profile = resolve_profile([X], {"x": [1, 3, 4, 4]}, {"x": [2, 3, 8, 8]},
                              {"x": [4, 3, 16, 32]})
    assert Profile.from_json(profile.to_json()) == profile
    assert Profile.from_json(resolve_profile([X]).to_json()).dims["x"][0] == DimRange(1, 1, None)


@pytest.mark.parametrize(("flags", "message"), [
    ({"min": {"x": [1, 3, 4, 4]}, "max": {"x": [4, 3, 8, 8]}},
     "'x' is in --minShapes and --maxShapes but not in --optShapes"),
    ({"min": {"x": [1, 3, 4, 4]}, "opt": {"x": [2, 3, 8, 8]}}, "but not in --maxShapes"),
    ({"opt": {"x": [2, 3, 8, 8]}, "max": {"x": [4, 3, 8, 8]}}, "but not in --minShapes"),
    ({"min": {"x": [2, 3, 4, 4]}, "opt": {"x": [1, 3, 8, 8]}, "max": {"x": [4, 3, 8, 8]}},
     "axis 0: need min <= opt <= max, got 2 / 1 / 4"),
    ({"min": {"x": [1, 3, 4, 4]}, "opt": {"x": [2, 3, 8, 8]}, "max": {"x": [4, 3, 6, 8]}},
     "axis 2: need min <= opt <= max, got 4 / 8 / 6"),
    ({"opt": {"x": [2, 3, 8]}}, "--optShapes gives 'x' 3 dims"),
    ({"min": {"x": [1, 3, 4]}, "opt": {"x": [2, 3, 8, 8]}, "max": {"x": [4, 3, 8, 8]}},
     "--minShapes gives 'x' 3 dims"),
    ({"opt": {"x": [2, 4, 8, 8]}}, "set axis 1 to 4/4/4, but the model fixes it at 3"),
    ({"opt": {"y": [1]}}, "--optShapes names y, which the model has no input called"),
    ({"min": {"x": [-1, 3, 4, 4]}, "opt": {"x": [2, 3, 8, 8]}, "max": {"x": [4, 3, 8, 8]}},
     "need min <= opt <= max"),
])
def test_resolution_errors(flags, message):
    with pytest.raises(KilnError, match=re.escape(message)):
        resolve_profile([X], flags.get("min"), flags.get("opt"), flags.get("max"))


# ----------------------------------------------------------------- engines and their shapes
def _ort_run(path, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def test_engine_without_shape_flags_accepts_any_batch_and_image_size():
    """mtcnn-pnet is dynamic in batch, height and width."""
    path = shared_models.model_path("mtcnn-pnet")
    context = ExecutionContext(build_engine(path, BuilderConfig(device="cpu")))
    rng = np.random.default_rng(3)
    for shape in [(1, 12, 12, 3), (2, 31, 17, 3), (3, 64, 40, 3)]:
        x = rng.random(shape, dtype=np.float32)
        got = context.run({"input_1": x})
        for (name, value), expected in zip(got.items(), _ort_run(path, {"input_1": x})):
            np.testing.assert_allclose(value, expected, atol=1e-4, rtol=1e-3, err_msg=name)


@pytest.fixture(scope="module")
def ranged_demo() -> ExecutionContext:
    """The demo built like `--minShapes=image:2x1x8x8 --optShapes=image:4x1x8x8
    --maxShapes=image:8x1x8x8`."""
    config = BuilderConfig(device="cpu", profiles=[{
        "min": {"image": [2, 1, 8, 8]}, "opt": {"image": [4, 1, 8, 8]},
        "max": {"image": [8, 1, 8, 8]}}])
    return ExecutionContext(build_engine(demo_model_path(), config))


@pytest.mark.parametrize("batch", [2, 5, 8])
def test_ranged_engine_runs_inside_its_profile(ranged_demo, batch):
    images = demo_samples()[0][10:10 + batch]
    expected = _ort_run(demo_model_path(), {"image": images})
    got = ranged_demo.run({"image": images})
    np.testing.assert_allclose(got["probabilities"], expected[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 9, 64])
def test_ranged_engine_refuses_shapes_outside(ranged_demo, batch):
    images = demo_samples()[0][:batch]
    with pytest.raises(InputError) as info:
        ranged_demo.run({"image": images})
    text = str(info.value)
    assert f"image {batch}x1x8x8" in text and "2..8 x 1 x 8 x 8" in text
    assert f"axis 0 is {batch}" in text


def test_several_profiles_are_kept_and_any_one_accepts():
    small = {"min": {"image": [1, 1, 8, 8]}, "opt": {"image": [1, 1, 8, 8]},
             "max": {"image": [2, 1, 8, 8]}}
    large = {"min": {"image": [16, 1, 8, 8]}, "opt": {"image": [32, 1, 8, 8]},
             "max": {"image": [64, 1, 8, 8]}}
    engine = build_engine(demo_model_path(), BuilderConfig(device="cpu", profiles=[small, large]))
    assert [p.to_json()["image"][0] for p in engine.profiles] == [[1, 1, 2], [16, 32, 64]]
    assert engine.memory["probe_shapes"] == {"image": [1, 1, 8, 8]}  # the first profile's opt
    context = ExecutionContext(engine)
    images = demo_samples()[0]
    for batch in (1, 2, 16, 40, 64):
        expected = _ort_run(demo_model_path(), {"image": images[:batch]})[1]
        got = context.run({"image": images[:batch]})["probabilities"]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    for batch in (3, 15, 65):
        with pytest.raises(InputError, match=r"profile 0 takes image 1\.\.2 .*profile 1 takes "
                                             r"image 16\.\.64"):
            context.run({"image": images[:batch]})
