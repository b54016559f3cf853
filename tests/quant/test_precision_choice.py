"""INT8 allowed, not forced (`precision_constraints`): quantized layers slower than their
fallback-precision twins leave INT8, the rest stay, the calibration runs once, and the
engine still computes what the model does. Layer times are stood in for (a CPU's timings
would make the choice a coin toss); the timing itself is kiln.runtime.profile's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kiln.build import BuilderConfig, build_engine, precision_choice
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import SmallCNN, calibration_batches, export


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return export(SmallCNN(), torch.randn(2, 3, 12, 12),
                  tmp_path_factory.mktemp("choice") / "cnn.onnx")


class Batches(list):
    """Calibration batches that count how often they are read."""

    reads = 0

    def __iter__(self):
        Batches.reads += 1
        return super().__iter__()


def _config(**extra) -> BuilderConfig:
    return BuilderConfig(precision="int8", device="cpu", fallback_precision="fp32",
                         calibrator=Calibrator(Batches(calibration_batches((4, 3, 12, 12), 3))),
                         profiles=[{"opt": {"x": [4, 3, 12, 12]}}], **extra)


def _input_scale(layer: dict) -> float:
    return layer["attrs"].get("x_scale", layer["attrs"].get("a_scale"))  # QConv, QGemm


def _quantized(engine) -> set[str]:
    return {precision_choice.model_layer_name(layer) for layer in engine.layers()
            if layer["op"] in precision_choice.QUANTIZED_OPS}


def test_layers_slower_in_int8_leave_it(model, monkeypatch):
    real = precision_choice.layer_times
    calls = []

    def stand_in(engine, profile):
        times = real(engine, profile)  # the real profile runs; the numbers are then set
        quantized = bool(_quantized(engine))
        calls.append(quantized)
        # /c2 and /c4 lose in INT8, the others win
        return {name: (2.0 if quantized and name in ("/c2/Conv", "/c4/Conv") else
                       0.5 if quantized else 1.0) for name in times}

    monkeypatch.setattr(precision_choice, "layer_times", stand_in)
    monkeypatch.setattr(precision_choice, "boundary_model", lambda *a: None)  # see below
    whole = []
    monkeypatch.setattr(precision_choice, "engine_ms", lambda e: whole.append(e) or (
        1.0 if _quantized(e) else 1.5))  # the mixed engine wins whole too
    forced = build_engine(str(model), _config(precision_constraints="obey"))
    assert calls == []  # obey: no timing
    reads = Batches.reads
    chosen = build_engine(str(model), _config(precision_constraints="none"))
    assert calls == [True, False]
    assert Batches.reads - reads == reads  # one calibration, as for the forced build
    assert {"/c2/Conv", "/c4/Conv"} <= _quantized(forced)
    assert _quantized(chosen) == _quantized(forced) - {"/c2/Conv", "/c4/Conv"}
    choice = chosen.plan["build"]["precision_choice"]
    tuning = chosen.plan["build"]["tuning"]  # the rebuild reads the earlier builds' timings
    assert tuning["cached"] > 0
    assert choice["kept_in_fp32"] == ["/c2/Conv", "/c4/Conv"]
    # the rebuild read the first build's temporary cache; it reports that calibration
    quant = chosen.plan["build"]["quantization"]
    assert quant["method"] == "entropy" and quant["batches"] == 3
    assert "cache" not in quant and "cache_written" not in quant
    assert quant["quantized_layers"] == len(_quantized(chosen))
    assert choice["layer_ms"]["/c2/Conv"] == {"int8": 2.0, "fp32": 1.0}
    assert choice["engine_ms"] == {"mixed": 1.0, "all": 1.0, "fp32": 1.5} and len(whole) == 3
    # the layers still in INT8 read the same thresholds as in the forced build
    for name in _quantized(chosen):
        scales = [_input_scale(layer) for e in (forced, chosen) for layer in e.layers()
                  if layer["op"] in precision_choice.QUANTIZED_OPS
                  and precision_choice.model_layer_name(layer) == name]
        assert len(scales) == 2 and scales[0] == pytest.approx(scales[1])
    x = np.random.default_rng(5).standard_normal((4, 3, 12, 12)).astype(np.float32)
    reference = ExecutionContext(build_engine(str(model), BuilderConfig(device="cpu"))).run(
        {"x": x})["y"]
    got = ExecutionContext(chosen).run({"x": x})["y"]
    cos = float(np.dot(got.ravel(), reference.ravel()) /
                (np.linalg.norm(got) * np.linalg.norm(reference)))
    assert cos > 0.99


def test_the_quantized_build_whole_can_beat_the_pinned_choices(model, monkeypatch):
    """/c2 and /c4 lose alone, yet the engine with every layer quantized runs fastest whole
    (fewer precision boundaries than the models count): it is the engine, with no rebuild."""
    real = precision_choice.layer_times
    monkeypatch.setattr(precision_choice, "layer_times", lambda e, p: {
        name: (2.0 if name in ("/c2/Conv", "/c4/Conv") else 0.5) if _quantized(e) else 1.0
        for name in real(e, p)})
    monkeypatch.setattr(precision_choice, "boundary_model", lambda *a: None)
    forced = build_engine(str(model), _config(precision_constraints="obey"))
    every = _quantized(forced)
    monkeypatch.setattr(precision_choice, "engine_ms", lambda e: (
        0.8 if _quantized(e) == every else 1.0) if _quantized(e) else 1.5)
    chosen = build_engine(str(model), _config(precision_constraints="none"))
    choice = chosen.plan["build"]["precision_choice"]
    assert choice["engine_ms"] == {"mixed": 1.0, "all": 0.8, "fp32": 1.5}
    assert choice["kept_in_fp32"] == [] and _quantized(chosen) == every


def test_auto_obeys_on_the_cpu_and_a_bad_value_is_named(model):
    assert not precision_choice.applies(_config(), str(model))
    assert precision_choice.applies(_config(precision_constraints="none"), str(model))
    assert not precision_choice.applies(_config(precision_constraints="none",
                                                optimization_level=0), str(model))
    with pytest.raises(Exception, match="--precisionConstraints must be none or obey"):
        _config(precision_constraints="sometimes")


@pytest.mark.parametrize("fallback_ms, pinned", [(0.9, True), (0.99, False)])
def test_a_mixed_engine_slower_as_a_whole_goes_to_the_fallback(model, monkeypatch,
                                                                 fallback_ms, pinned):
    """Every layer wins alone, but the engine with them loses: all leave INT8 (unless the
    whole-run difference is inside the 2% margin)."""
    real = precision_choice.layer_times
    monkeypatch.setattr(precision_choice, "layer_times", lambda e, p: {
        name: (0.5 if _quantized(e) else 1.0) for name in real(e, p)})
    monkeypatch.setattr(precision_choice, "boundary_model", lambda *a: None)
    monkeypatch.setattr(precision_choice, "engine_ms",
                        lambda e: 1.0 if _quantized(e) else fallback_ms)
    forced = build_engine(str(model), _config(precision_constraints="obey"))
    chosen = build_engine(str(model), _config(precision_constraints="none"))
    choice = chosen.plan["build"]["precision_choice"]
    assert choice["engine_ms"] == {"mixed": 1.0, "fp32": fallback_ms}
    if pinned:
        assert _quantized(chosen) == set()
        assert choice["kept_in_fp32"] == sorted(_quantized(forced))
    else:
        assert _quantized(chosen) == _quantized(forced) and choice["kept_in_fp32"] == []


def test_every_layer_slower_gives_the_fallback_build_itself(model, monkeypatch):
    """No third build when every quantized layer loses: the fallback build is that engine
    (a rebuild with every layer pinned had timed 10% slower whole, one tactic apart)."""
    real = precision_choice.layer_times
    monkeypatch.setattr(precision_choice, "layer_times", lambda e, p: {
        name: (2.0 if _quantized(e) else 1.0) for name in real(e, p)})
    builds = []
    monkeypatch.setattr(precision_choice, "_pinned", lambda *a: builds.append(a))
    chosen = build_engine(str(model), _config(precision_constraints="none"))
    choice = chosen.plan["build"]["precision_choice"]
    assert builds == [] and _quantized(chosen) == set()
    assert chosen.plan["build"]["precision"] == "fp32"
    assert choice["kept_in_fp32"] == sorted(choice["layer_ms"]) and len(choice["layer_ms"]) == 5
    assert set(choice["engine_ms"]) == {"mixed", "fp32"}
    quant = chosen.plan["build"]["quantization"]  # calibrated, then nothing kept
    assert quant["quantized_layers"] == 0 and quant["method"] == "entropy"


def test_a_named_calibration_cache_is_reported_written(model, monkeypatch, tmp_path):
    real = precision_choice.layer_times
    monkeypatch.setattr(precision_choice, "layer_times", lambda e, p: {
        name: (2.0 if _quantized(e) and name == "/c4/Conv" else 1.0) for name in real(e, p)})
    monkeypatch.setattr(precision_choice, "boundary_model", lambda *a: None)
    monkeypatch.setattr(precision_choice, "engine_ms", lambda e: 1.0 if _quantized(e) else 2.0)
    config = _config(precision_constraints="none")
    cache = tmp_path / "model.cache"
    config.calibrator = dataclasses.replace(config.calibrator, cache=str(cache))
    chosen = build_engine(str(model), config)
    assert "/c4/Conv" not in _quantized(chosen) and cache.exists()
    assert chosen.plan["build"]["quantization"]["cache_written"] == str(cache)


def test_quantize_steps_counted_give_a_second_candidate(model, monkeypatch):
    """/c2 loses a little in INT8 alone, but leaving INT8 would add two quantize steps
    (its input is also /c3's residual, its output /c3's input): the search with the steps
    counted keeps it, that engine is built beside the per-layer one, and the faster whole
    engine wins."""
    real_times, real_model = precision_choice.layer_times, precision_choice.boundary_model
    monkeypatch.setattr(precision_choice, "layer_times", lambda e, p: {
        name: (1.1 if name == "/c2/Conv" else 0.5) if _quantized(e) else 1.0
        for name in real_times(e, p)})
    models = []

    def priced(engine, profile):  # the real tensors, a quantize step priced at 0.1 ms
        found = real_model(engine, profile)
        models.append(found)
        return dataclasses.replace(found, ms_per_element=0.1 / 9216)

    monkeypatch.setattr(precision_choice, "boundary_model", priced)
    monkeypatch.setattr(precision_choice, "engine_ms", lambda e: (
        0.9 if "/c2/Conv" in _quantized(e) else 1.0) if _quantized(e) else 2.0)
    chosen = build_engine(str(model), _config(precision_constraints="none"))
    tensors = {(t.producer, t.readers) for t in models[0].tensors}
    assert {("/c1/Conv", ("/c2/Conv", "/c3/Conv")), (None, ("/c1/Conv",))} <= tensors
    choice = chosen.plan["build"]["precision_choice"]
    assert choice["engine_ms"] == {"mixed": 1.0, "mixed_boundaries": 0.9, "fp32": 2.0}
    assert choice["kept_in_fp32"] == [] and "/c2/Conv" in _quantized(chosen)


def test_engine_time_is_a_positive_median(model):
    engine = build_engine(str(model), BuilderConfig(device="cpu",
                                                    profiles=[{"opt": {"x": [2, 3, 12, 12]}}]))
    assert 0 < precision_choice.engine_ms(engine, runs=5) < 1000
