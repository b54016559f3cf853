"""`kiln build / run / inspect / demo`: what they write and print, and one-message user errors
(exit code not 0, no traceback). In-process through kiln.cli.main.main, and a few through
`python -m kiln`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kiln.cli.common import human_bytes
from kiln.cli.main import main
from kiln.demo import model_path as demo_model_path
from kiln.demo import samples as demo_samples
from kiln.engine.engine import Engine
from kiln.runtime import ExecutionContext
from tests import shared_models
from tests.runtime.test_validate import feeds as two_input_feeds
from tests.runtime.test_validate import reference as two_input_reference
from tests.runtime.test_validate import two_input_model
from tests.shared_models import ROOT

DEMO = str(demo_model_path())


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `kiln args...` run in this process."""
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def demo_engine(workdir) -> str:
    """The demo built through the CLI (once for the module)."""
    path = workdir / "digits.kiln"
    assert main(["build", DEMO, "-o", str(path), "--quiet"]) == 0
    return str(path)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no truncated layer names


# ----------------------------------------------------------------- success paths
def test_build_writes_an_engine_that_runs_like_onnxruntime(demo_engine):
    import onnxruntime as ort

    images = demo_samples()[0][:12]
    got = ExecutionContext(Engine.load(demo_engine)).run({"image": images})
    session = ort.InferenceSession(DEMO, providers=["CPUExecutionProvider"])
    for name, expected in zip(("logits", "probabilities"), session.run(None, {"image": images})):
        np.testing.assert_allclose(got[name], expected, atol=1e-4, rtol=1e-3, err_msg=name)


def test_build_default_output_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "build", DEMO, "--quiet")
    assert code == 0 and (tmp_path / "digits_cnn.kiln").is_file()
    assert "built digits_cnn.kiln" in err


def test_run_with_an_npz_writes_the_context_outputs(capsys, demo_engine, tmp_path):
    images = np.random.default_rng(11).random((5, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "in.npz", image=images)
    code, out, _ = cli(capsys, "run", demo_engine, "--inputs", str(tmp_path / "in.npz"),
                       "--output", str(tmp_path / "out.npz"))
    assert code == 0
    assert "logits: float32 [5, 10]" in out and "probabilities: float32 [5, 10]" in out
    expected = ExecutionContext(Engine.load(demo_engine)).run({"image": images})
    with np.load(tmp_path / "out.npz") as saved:
        assert sorted(saved.files) == sorted(expected)
        for name, value in expected.items():
            assert np.array_equal(saved[name], value), name


def test_run_with_name_file_pairs(capsys, tmp_path):
    model = tmp_path / "two.onnx"
    onnx.save(two_input_model(), model)
    engine = tmp_path / "two.kiln"
    assert cli(capsys, "build", str(model), "-o", str(engine), "--quiet")[0] == 0
    inputs = two_input_feeds(3, seed=4)
    for name, value in inputs.items():
        np.save(tmp_path / f"{name}.npy", value)
    pairs = f"x:{tmp_path / 'x.npy'},ids:{tmp_path / 'ids.npy'}"
    code, _, _ = cli(capsys, "run", str(engine), "--loadInputs", pairs,
                     "--output", str(tmp_path / "out.npz"))
    assert code == 0
    with np.load(tmp_path / "out.npz") as saved:
        np.testing.assert_allclose(saved["y"], two_input_reference(inputs), rtol=1e-6, atol=1e-7)


def test_run_quoted_input_name_with_a_colon(capsys, tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["in:0"], ["out:0"])], "colon",
        [helper.make_tensor_value_info("in:0", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("out:0", TensorProto.FLOAT, None)])
    model = tmp_path / "colon.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    x = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code, _, err = cli(capsys, "run", str(model), "--inputs", f"'in:0':{tmp_path / 'x.npy'}",
                       "--shapes", "'in:0':4x3", "--output", str(tmp_path / "out.npz"))
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as saved:
        assert np.array_equal(saved["out:0"], np.maximum(x, 0))


def test_run_an_onnx_model_on_a_sample_file(capsys, tmp_path):
    """An .onnx is built first; the npz uses the `input.<name>` keys of the samples."""
    path = shared_models.model_path("mtcnn-rnet")
    sample = sorted((path.parent / "samples").glob("*.npz"))[0]
    code, _, _ = cli(capsys, "run", str(path), "--inputs", str(sample),
                     "--output", str(tmp_path / "out.npz"))
    assert code == 0
    with np.load(sample) as expected, np.load(tmp_path / "out.npz") as got:
        names = [k[len("output."):] for k in expected.files if k.startswith("output.")]
        assert sorted(got.files) == sorted(names)
        for name in names:
            np.testing.assert_allclose(got[name], expected[f"output.{name}"], atol=1e-4,
                                       rtol=1e-3)


def test_run_without_inputs_uses_random_ones_at_the_opt_shape(capsys, demo_engine):
    code, out, err = cli(capsys, "run", demo_engine)
    assert code == 0 and "random inputs" in err and "logits: float32 [1, 10]" in out


def test_inspect_prints_every_layer(capsys, demo_engine):
    code, out, _ = cli(capsys, "inspect", demo_engine)
    assert code == 0
    engine = Engine.load(demo_engine)
    for layer in engine.layers():
        assert layer["name"] in out and layer["tactic"] in out
    assert f"{len(engine.layers())} layers" in out
    assert f"weights {human_bytes(engine.weight_bytes())}" in out
    assert "skipped" not in out  # every tactic the tuner timed ran


def test_inspect_json(capsys, demo_engine):
    code, out, _ = cli(capsys, "inspect", demo_engine, "--json")
    assert code == 0
    info = json.loads(out)
    engine = Engine.load(demo_engine)
    assert [layer["name"] for layer in info["layers"]] == [
        layer["name"] for layer in engine.layers()]
    assert info["memory"]["weights_bytes"] == engine.weight_bytes()
    assert info["inputs"][0]["name"] == "image"
    first = engine.layers()[0]
    assert info["layers"][0]["output_shapes"] == [
        engine.plan["value_shapes"][o] for o in first["outputs"]]


def test_inspect_an_onnx_model_and_the_passes(capsys):
    code, out, _ = cli(capsys, "inspect", DEMO, "--json", "--shapes", "image:4x1x8x8")
    assert code == 0 and json.loads(out)["profiles"] == [
        {"image": [[4, 4, 4], [1, 1, 1], [8, 8, 8], [8, 8, 8]]}]
    code, out, _ = cli(capsys, "inspect", "--passes")
    assert code == 0 and "remove_identity" in out


def test_demo(capsys):
    import onnxruntime as ort

    images, labels = demo_samples()
    session = ort.InferenceSession(DEMO, providers=["CPUExecutionProvider"])
    accuracy = np.mean(session.run(["probabilities"], {"image": images})[0].argmax(1) == labels)
    code, out, _ = cli(capsys, "demo", "--device", "cpu", "--seconds", "0.01")
    assert code == 0
    row = next(line for line in out.splitlines() if "kiln fp32" in line)
    assert f"{100 * accuracy:.1f}%" in row and "100.0%" in row  # ORT's accuracy, all agree


# ----------------------------------------------------------------- user errors
@pytest.fixture(scope="module")
def bad_files(workdir, demo_engine) -> dict[str, str]:
    files = {}
    data = Path(demo_engine).read_bytes()
    files["cut"] = str(workdir / "cut.kiln")
    Path(files["cut"]).write_bytes(data[: len(data) // 2])
    files["fp64"] = str(workdir / "image64.npy")
    np.save(files["fp64"], np.zeros((2, 1, 8, 8)))
    files["image"] = str(workdir / "image.npy")
    np.save(files["image"], np.zeros((2, 1, 8, 8), np.float32))
    files["wrong_names"] = str(workdir / "wrong.npz")
    np.savez(files["wrong_names"], picture=np.zeros((2, 1, 8, 8), np.float32))
    unsupported = helper.make_graph(
        [helper.make_node("Grille", ["x"], ["y"], name="g1", domain="com.acme")], "u",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    files["unsupported"] = str(workdir / "unsupported.onnx")
    onnx.save(helper.make_model(unsupported, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)]), files["unsupported"])
    return files


ERRORS = [
    ("build", ["build", "missing.onnx"], 1, "model file not found: missing.onnx"),
    ("build", ["build", DEMO, "--fp17"], 2, "unrecognized arguments: --fp17"),
    ("build", ["build"], 2, "the following arguments are required: model"),
    ("build", ["build", DEMO, "--builderOptimizationLevel", "abc"], 2, "invalid int value"),
    ("build", ["build", DEMO, "--builderOptimizationLevel", "9"], 1, "must be 0..5"),
    ("build", ["build", DEMO, "--shapes", "image:axbxc"], 1, "not integers joined by 'x'"),
    ("build", ["build", DEMO, "--shapes", "image:1x1x8"], 1, "gives 'image' 3 dims"),
    ("build", ["build", DEMO, "--minShapes", "image:1x1x8x8"], 1, "but not in --optShapes"),
    ("build", ["build", DEMO, "--optShapes", "picture:1x1x8x8"], 1, "no input called"),
    ("build", ["build", DEMO, "--device", "tpu"], 1, "unknown device 'tpu'"),
    ("build", ["build", DEMO, "-o", "no/such/folder/x.kiln"], 1, "does not exist"),
    ("build", ["build", "{unsupported}"], 1, "com.acme::Grille (opset 1): used by g1"),
    ("run", ["run", "missing.kiln"], 1, "engine file not found"),
    ("run", ["run", "{cut}"], 1, "truncated or corrupt"),
    ("run", ["run", "{engine}", "--inputs", "missing.npz"], 1, "input file not found"),
    ("run", ["run", "{engine}", "--inputs", "image:{fp64}"], 1, "has dtype fp64"),
    ("run", ["run", "{engine}", "--inputs", "{wrong_names}"], 1, "unknown input(s) 'picture'"),
    ("run", ["run", "{engine}", "--inputs", "{image}"], 1, "holds one array"),
    ("inspect", ["inspect"], 1, "give a model or engine to inspect"),
    ("inspect", ["inspect", "{cut}"], 1, "truncated or corrupt"),
    ("", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize(("command", "args", "code", "message"), ERRORS,
                         ids=[f"{e[0] or 'kiln'}-{e[3][:30]}" for e in ERRORS])
def test_user_errors(capsys, bad_files, demo_engine, command, args, code, message):
    names = {**bad_files, "engine": demo_engine}
    got_code, out, err = cli(capsys, *(a.format(**names) for a in args))
    assert got_code == code
    prefix = f"kiln {command}: error: " if command else "kiln: error: "
    assert err.startswith(prefix), err
    assert message in err, err
    assert "Traceback" not in err and out == ""
    # one message: its first line, then only indented lines (the fix, a list of operators)
    assert all(line.startswith("  ") for line in err.splitlines()[1:]), err


# ----------------------------------------------------------------- as a program
def _kiln(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "kiln", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_python_m_kiln_build_and_run(tmp_path):
    built = _kiln("build", DEMO, "-o", "d.kiln", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    images = demo_samples()[0][:6]
    np.savez(tmp_path / "in.npz", image=images)
    ran = _kiln("run", "d.kiln", "--inputs", "in.npz", "--output", "out.npz", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    expected = ExecutionContext(Engine.load(tmp_path / "d.kiln")).run({"image": images})
    with np.load(tmp_path / "out.npz") as saved:
        assert set(saved.files) == set(expected)
        for name, value in expected.items():  # on a GPU, another process may get other
            np.testing.assert_allclose(saved[name], value, rtol=1e-5, atol=1e-6)  # kernels


def test_python_m_kiln_user_error(tmp_path):
    result = _kiln("build", DEMO, "--shapes", "image", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("kiln build: error: --shapes: 'image' is not name:dims")
    assert "Traceback" not in result.stderr and result.stdout == ""
