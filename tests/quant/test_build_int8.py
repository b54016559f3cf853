"""Implicit INT8 builds end to end, from Python and from the command line: calibration,
the calibration cache (written, reused, refused when it lacks tensors), and the errors a
user sees for missing or bad calibration input (one line, exit 1, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.cli.main import main
from kiln.engine.engine import Engine
from kiln.errors import KilnError
from kiln.quant import CalibrationTable, Calibrator
from kiln.runtime import ExecutionContext
from tests.quant._models import SmallCNN, export


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    path = export(SmallCNN(), torch.randn(2, 3, 16, 16), folder / "cnn.onnx")
    calib = folder / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(calib / f"batch{i}.npz", x=rng.standard_normal((4, 3, 16, 16)).astype(
            np.float32))
    return path, calib


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_python_build_agrees_with_fp32(model):
    path, calib = model
    fp32 = build_engine(str(path), BuilderConfig(device="cpu", optimization_level=0))
    int8 = build_engine(str(path), BuilderConfig(
        precision="int8", device="cpu", optimization_level=0,
        calibrator=Calibrator(str(calib), method="minmax")))
    assert sum(layer["precision"] == "int8" for layer in int8.layers()) == 5
    # layers that only feed quantized layers hand them INT8 directly
    assert any(layer["attrs"].get("out_scale") for layer in int8.layers()
               if layer["op"] == "QConv")
    x = np.random.default_rng(1).standard_normal((5, 3, 16, 16)).astype(np.float32)
    want = ExecutionContext(fp32).run({"x": x})["y"]
    got = ExecutionContext(int8).run({"x": x})["y"]
    cosine = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cosine > 0.99 and np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert int8.weight_bytes() < 0.5 * fp32.weight_bytes()


def test_cli_calibrates_writes_the_cache_and_reuses_it(model, tmp_path, capsys):
    path, calib = model
    cache, engine_file = tmp_path / "cnn.cache", tmp_path / "cnn.kiln"
    code, text = _run(["build", str(path), "--int8", f"--calib={calib}", "--device", "cpu",
                       f"--calibCache={cache}", "-o", str(engine_file), "--quiet",
                       "--builderOptimizationLevel", "0"], capsys)
    assert code == 0, text
    assert "quantized 5 layers" in text and "wrote calibration cache" in text
    table = CalibrationTable.load(cache)
    assert table.algorithm == "EntropyCalibration2" and "x" in table.scales
    assert len(table.scales) > 10  # every float tensor of the model, as TensorRT writes
    first = Engine.load(engine_file)
    # again, from the cache alone: no calibration data needed
    code, text = _run(["build", str(path), "--int8", f"--calibCache={cache}", "--device", "cpu",
                       "-o", str(engine_file), "--quiet", "--builderOptimizationLevel", "0"],
                      capsys)
    assert code == 0, text
    again = Engine.load(engine_file)
    assert again.plan["build"]["quantization"]["cache"] == str(cache)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(ExecutionContext(first).run({"x": x})["y"],
                                  ExecutionContext(again).run({"x": x})["y"])
    code, text = _run(["inspect", str(engine_file)], capsys)
    assert code == 0 and "int8-exact-sim x5" in text and "exact simulation" in text


def test_a_cache_lacking_tensors_is_refused_with_their_names(model, tmp_path, capsys):
    path, _ = model
    cache = tmp_path / "partial.cache"
    cache.write_text("TRT-8601-EntropyCalibration2\nx: 3c010204\nunrelated: 3c010204\n")
    code, text = _run(["build", str(path), "--int8", f"--calibCache={cache}", "--device", "cpu",
                       "-o", str(tmp_path / "m.kiln"), "--quiet"], capsys)
    assert code == 1 and "Traceback" not in text
    assert "lacks the scales of" in text and "/Relu_output_0" in text


@pytest.mark.parametrize("extra,message", [
    ([], "needs calibration"),
    (["--calibCache=absent.cache"], "does not exist"),
    (["--calib=nowhere"], "calibration data not found"),
    (["--calib=BAD", "--calibMethod=minmax"], "no .npz files"),
])
def test_missing_calibration_input(model, tmp_path, capsys, extra, message, monkeypatch):
    path, _ = model
    monkeypatch.chdir(tmp_path)
    (tmp_path / "BAD").mkdir()
    code, text = _run(["build", str(path), "--int8", "--device", "cpu", "--quiet",
                       "-o", "m.kiln", *extra], capsys)
    assert code == 1 and message in text and "Traceback" not in text


def test_bad_cache_file_and_flags_without_int8(model, tmp_path, capsys):
    path, calib = model
    bad = tmp_path / "bad.cache"
    bad.write_text("this is not a cache\n")
    code, text = _run(["build", str(path), "--int8", f"--calibCache={bad}", "--device", "cpu",
                       "--quiet", "-o", str(tmp_path / "m.kiln")], capsys)
    assert code == 1 and "not a calibration cache" in text
    code, text = _run(["build", str(path), f"--calib={calib}", "--device", "cpu", "--quiet",
                       "-o", str(tmp_path / "m.kiln")], capsys)
    assert code == 1 and "without --int8" in text


def test_layer_precisions_keep_layers_out_of_int8(model):
    path, calib = model
    probe = build_engine(str(path), BuilderConfig(
        precision="int8", device="cpu", optimization_level=0,
        calibrator=Calibrator(str(calib), method="minmax")))
    first = next(layer for layer in probe.layers() if layer["op"] == "QConv")
    engine = build_engine(str(path), BuilderConfig(
        precision="int8", device="cpu", optimization_level=0,
        layer_precisions={first["fused"][0]: "fp32"},
        calibrator=Calibrator(str(calib), method="minmax")))
    kept = next(layer for layer in engine.layers() if first["fused"][0] in layer["fused"])
    assert kept["op"] == "FusedConv" and kept["precision"] == "fp32"
    assert sum(layer["precision"] == "int8" for layer in engine.layers()) == 4


def test_fp8_builds_use_the_same_calibration(model, tmp_path):
    path, calib = model
    engine = build_engine(str(path), BuilderConfig(
        precision="fp8", device="cpu", optimization_level=0,
        calibrator=Calibrator(str(calib), method="minmax")))
    quantized = [layer for layer in engine.layers() if layer["precision"] == "fp8"]
    assert len(quantized) == 5
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    fp32 = build_engine(str(path), BuilderConfig(device="cpu", optimization_level=0))
    want = ExecutionContext(fp32).run({"x": x})["y"]
    got = ExecutionContext(engine).run({"x": x})["y"]
    assert np.abs(got - want).max() < 0.15 * np.abs(want).max()
    engine.save(tmp_path / "fp8.kiln")  # float8 weights go through the engine file
    again = ExecutionContext(Engine.load(tmp_path / "fp8.kiln")).run({"x": x})["y"]
    np.testing.assert_array_equal(again, got)


def test_the_builder_refuses_int8_without_calibration(model):
    path, _ = model
    with pytest.raises(KilnError, match="needs calibration"):
        build_engine(str(path), BuilderConfig(precision="int8", device="cpu"))
    report = json.dumps(build_engine(str(path), BuilderConfig(device="cpu")).plan["build"])
    assert "quantization" not in report


@pytest.mark.parametrize("int8_wins", [True, False])
def test_cli_says_what_the_precision_choice_kept(model, tmp_path, capsys, monkeypatch,
                                                 int8_wins):
    """--precisionConstraints=none: the build names the layers kept in the fallback
    precision and the whole-engine times, or says that the engine is the fallback build."""
    from kiln.build import precision_choice

    def quantized(engine) -> bool:
        return any(layer["op"] in precision_choice.QUANTIZED_OPS for layer in engine.layers())

    real = precision_choice.layer_times
    monkeypatch.setattr(precision_choice, "layer_times", lambda e, p: {  # /c4 loses alone
        name: (2.0 if quantized(e) and name == "/c4/Conv" else 1.0) for name in real(e, p)})
    monkeypatch.setattr(precision_choice, "boundary_model", lambda *a: None)
    monkeypatch.setattr(precision_choice, "engine_ms", lambda e: (
        1.0 if int8_wins else 3.0) if quantized(e) else 2.0)
    output = tmp_path / "m.kiln"
    code, text = _run(["build", str(model[0]), "--int8", f"--calib={model[1]}",
                       "--precisionConstraints=none", "--device", "cpu", "--quiet",
                       "-o", str(output)], capsys)
    assert code == 0 and output.exists()
    if int8_wins:
        assert "kept 1 layer in fp32 where that ran faster" in " ".join(text.split())
        assert "mixed 1.000 ms, all 1.000 ms, fp32 2.000 ms" in " ".join(text.split())
        assert "quantized 4 layers (entropy calibration over 3 batches)" in text
    else:
        assert "no quantized layer made the engine faster, so it is the fp32 build" in \
            " ".join(text.split())
        assert "quantized 0 layers" in text
    assert Engine.load(output).plan["build"]["precision_choice"]["kept_in_fp32"]
