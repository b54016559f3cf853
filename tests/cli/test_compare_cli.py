"""`kiln compare`: Polygraphy's output and exit codes, against ONNX Runtime, against saved
outputs perturbed beyond and within tolerance, and on bad flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kiln.cli.main import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "models"


def test_fp32_engine_matches_onnx_runtime(classifier_path, tmp_path, capsys):
    results = tmp_path / "results.json"
    code = main(["compare", str(classifier_path), "--shapes=x:4x16", "--iterations=2",
                 "--atol", "1e-4", "--rtol", "1e-3", f"--save-results={results}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Accuracy Comparison | kiln-fp32 vs. onnxrt-runner | Iteration: 1" in out
    assert "PASSED | Output: 'probs' | Difference is within tolerance (rel=0.001, abs=0.0001)" \
        in out
    assert "Passed: 2/2 iterations | Pass Rate: 100.0%" in out
    assert re.search(r"^\[I\] PASSED \| Runtime: [\d.]+s \| Command: kiln compare", out, re.M)
    assert "Top-1 Agreement: 100.00% (4/4)" in out
    data = json.loads(results.read_text())
    assert data["passed"] and len(data["iterations"]) == 2
    assert data["iterations"][0]["logits"]["required_atol"] < 1e-4


@pytest.fixture
def saved(classifier_path, tmp_path, capsys):
    """Inputs and kiln's outputs saved by `--save-outputs`, checked against ORT."""
    sample = tmp_path / "sample.npz"
    assert main(["compare", str(classifier_path), "--shapes=x:8x16", "--atol=1e-4",
                 "--rtol=1e-3", f"--save-outputs={sample}"]) == 0
    capsys.readouterr()
    data = dict(np.load(sample))
    session = ort.InferenceSession(str(classifier_path), providers=["CPUExecutionProvider"])
    expected = session.run(["probs"], {"x": data["input.x"]})[0]
    np.testing.assert_allclose(data["output.probs"], expected, rtol=1e-3, atol=1e-4)
    return data


def _compare_with(classifier_path, tmp_path, data, *flags) -> int:
    path = tmp_path / "reference.npz"
    np.savez(path, **data)
    code = main(["compare", str(classifier_path), f"--inputs={path}",
                 f"--load-outputs={path}", *flags])
    return code


def test_perturbed_beyond_tolerance_fails(classifier_path, tmp_path, saved, capsys):
    data = dict(saved)
    data["output.probs"] = data["output.probs"].copy()
    data["output.probs"][3, 2] += 0.05  # one element far outside atol and rtol
    code = _compare_with(classifier_path, tmp_path, data, "--atol=1e-3", "--rtol=1e-3")
    out = capsys.readouterr().out
    assert code == 1
    assert "[E]         FAILED | Output: 'probs' | Difference exceeds tolerance" in out
    assert "PASSED | Output: 'logits'" in out
    assert "FAILED | Mismatched outputs: ['probs']" in out
    assert "Mismatched elements: 1 / 80" in out
    assert "---- Histogram ----" in out  # shown on failure, as Polygraphy does
    assert "max=0.05" in out.split("Absolute Difference | Stats:")[-1].splitlines()[0][:200]
    assert re.search(r"^\[E\] FAILED \| Runtime", out, re.M)


def test_perturbed_within_tolerance_passes(classifier_path, tmp_path, saved, capsys):
    data = dict(saved)
    noise = np.random.default_rng(0).uniform(-5e-4, 5e-4, data["output.probs"].shape)
    data["output.probs"] = (data["output.probs"] + noise).astype(np.float32)
    code = _compare_with(classifier_path, tmp_path, data, "--atol=1e-3", "--rtol=1e-3")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "PASSED | All outputs matched | Outputs: ['logits', 'probs']" in out
    # the same outputs fail Polygraphy's default 1e-5 tolerances
    assert _compare_with(classifier_path, tmp_path, data) == 1
    capsys.readouterr()
    # ... and pass when only the mean error is checked at 1e-3
    assert _compare_with(classifier_path, tmp_path, data, "--check-error-stat=mean",
                         "--atol=1e-3") == 0


def test_per_output_tolerance(classifier_path, tmp_path, saved, capsys):
    data = dict(saved)
    data["output.probs"] = data["output.probs"] + np.float32(2e-3)
    code = _compare_with(classifier_path, tmp_path, data, "--atol", "1e-4", "probs:1e-2",
                         "--rtol", "1e-3", "probs:1e-2")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Tolerance: [abs=0.01, rel=0.01] | Checking elemwise error" in out


def test_reference_kiln_fp32_and_fp16_engine(classifier_path, capsys):
    assert main(["compare", str(classifier_path), "--fp16", "--reference=kiln-fp32",
                 "--atol=5e-2", "--rtol=5e-2"]) == 0
    out = capsys.readouterr().out
    assert "kiln-fp16 vs. kiln-fp32-reference" in out


def test_embedding_model_gets_indices_in_range(embedding_path, capsys):
    assert main(["compare", str(embedding_path), "--shapes=input_ids:3x9", "--atol=1e-5"]) == 0
    out = capsys.readouterr().out
    assert "input_ids [dtype=int64, shape=3x9] [0, 49] (Gather indices into table)" in out
    assert "attention_mask [dtype=int64, shape=3x9] a prefix mask of ones" in out


@pytest.mark.parametrize("flags, message", [
    (["--check-error-stat=maximum"], "'maximum' is not an error statistic"),
    (["--atol=abc"], "--atol: 'abc' in 'abc' is not a float"),
    (["--rtol=-1"], "--rtol cannot be negative"),
    (["--error-quantile=2"], "--error-quantile must be in [0, 1]"),
    (["--iterations=0"], "--iterations must be at least 1"),
    (["--load-outputs=nope.npz"], "--load-outputs: file not found: nope.npz"),
    (["--inputs=nope.npz"], "file not found: nope.npz"),
    (["--loadEngine=nope.kiln"], "--loadEngine: file not found"),
])
def test_bad_flags(classifier_path, capsys, flags, message):
    assert main(["compare", str(classifier_path), *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_engine_instead_of_model_and_missing_model(classifier_path, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "model.kiln")]) == 1
    assert "--loadEngine=" in capsys.readouterr().err
    assert main(["compare", "missing.onnx"]) == 1
    assert "model file not found: missing.onnx" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "attacut-c").is_dir(), reason="../shared/models is absent")
def test_real_model_against_its_reference_outputs(capsys):
    # attacut-c: int64 embedding lookups; its sample holds real inputs and ORT's outputs
    model = SHARED / "attacut-c" / "model.onnx"
    sample = sorted((SHARED / "attacut-c" / "samples").glob("*.npz"))[0]
    code = main(["compare", str(model), f"--inputs={sample}", f"--load-outputs={sample}",
                 "--atol=1e-4", "--rtol=1e-3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "vs. saved-outputs" in out
