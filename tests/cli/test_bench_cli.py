"""`kiln bench` end to end on the CPU: the printed summary parses as a trtexec log and
agrees with the exported times; the JSON exports have trtexec's fields; bad flags and
files give one clear line and exit 1."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import pytest

from kiln.build import BuilderConfig, build_engine
from kiln.cli.main import main
from tests.bench.trtexec_log import parse_lines, parse_profile, parse_summary

FAST = ["--duration=0", "--iterations=12", "--warmUp=0", "--avgRuns=4", "--quiet",
        "--device=cpu"]
TIMES_KEYS = {"startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs",
              "endComputeMs", "startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs",
              "latencyMs", "endToEndMs"}


@pytest.fixture(scope="module")
def bench_run(classifier_path, tmp_path_factory):
    """One run with every export: (stdout, folder of the exports)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", str(classifier_path), *FAST, "--shapes=x:3x16", "--dumpProfile",
            "--percentile=50,90,99.9", f"--exportTimes={out / 'times.json'}",
            f"--exportProfile={out / 'profile.json'}",
            f"--exportLayerInfo={out / 'layers.json'}"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return stdout.getvalue(), out


def test_summary_parses_and_matches_exported_times(bench_run):
    text, out = bench_run
    summary = parse_summary(text)
    times = json.loads((out / "times.json").read_text())
    assert len(times) >= 12
    assert all(set(t) == TIMES_KEYS for t in times)
    latencies = np.array([t["latencyMs"] for t in times])
    for t in times:  # trtexec: latency = H2D + compute + D2H, and phases are ordered
        assert t["latencyMs"] == pytest.approx(t["h2dMs"] + t["computeMs"] + t["d2hMs"])
        assert t["startH2dMs"] <= t["endH2dMs"] <= t["startComputeMs"] <= t["endComputeMs"]
        assert t["endComputeMs"] <= t["startD2hMs"] <= t["endD2hMs"]
    latency = summary["Latency"]
    # printed with 6 significant digits, as C++ streams print floats
    assert latency["min"] == pytest.approx(latencies.min(), rel=1e-5)
    assert latency["max"] == pytest.approx(latencies.max(), rel=1e-5)
    assert latency["mean"] == pytest.approx(latencies.mean(), rel=1e-5)
    assert latency["median"] == pytest.approx(np.median(latencies), rel=1e-5)
    for p in (50.0, 90.0, 99.9):
        expected = np.percentile(latencies, p, method="inverted_cdf")
        assert latency["percentiles"][p] == pytest.approx(expected, rel=1e-5)
    walltime = (times[-1]["endD2hMs"] - times[0]["startH2dMs"]) / 1000
    assert summary["Total Host Walltime"] == pytest.approx(walltime, rel=1e-5)
    assert summary["Throughput"] == pytest.approx(len(times) / walltime, rel=1e-4)
    # the CPU has no device: the GPU-only lines say n/a
    for label in ("H2D Latency", "GPU Compute Time", "D2H Latency", "Total GPU Compute Time"):
        assert summary[label] is None
    _, frames = parse_lines(text)
    assert [f[0] for f in frames] == ["RUNNING", "PASSED"]
    trace_averages = [m for _, m in parse_lines(text)[0] if m.startswith("Average on 4 runs")]
    assert len(trace_averages) == len(times) // 4


def test_profile_table_and_json_agree(bench_run):
    text, out = bench_run
    table = parse_profile(text)
    data = json.loads((out / "profile.json").read_text())
    assert data[0] == {"count": table["iterations"]}
    rows = data[1:]
    assert all(set(r) == {"name", "timeMs", "averageMs", "medianMs", "percentage"}
               for r in rows)
    assert [r["name"] for r in rows] == [layer[0] for layer in table["layers"]]
    assert sum(r["percentage"] for r in rows) == pytest.approx(100.0)
    for r in rows:
        assert r["averageMs"] == pytest.approx(r["timeMs"] / data[0]["count"])
    # every layer of the engine, in order (as the layer info export of the run lists them)
    layers = json.loads((out / "layers.json").read_text())["Layers"]
    assert [r["name"] for r in rows] == [layer["Name"] for layer in layers]
    assert "add_weights" not in {r["name"] for r in rows}  # folded: the weights are constant


def test_layer_info_has_engine_inspector_fields(bench_run):
    _, out = bench_run
    info = json.loads((out / "layers.json").read_text())
    assert info["Bindings"] == ["x", "logits", "probs"]
    for layer in info["Layers"]:
        assert {"Name", "LayerType", "Inputs", "Outputs", "Metadata"} <= set(layer)
        for region in layer["Inputs"] + layer["Outputs"]:
            assert {"Name", "Location", "Dimensions", "Format/Datatype"} <= set(region)
    # shapes as the benchmark's run at --shapes=x:3x16 saw them
    regions = [r for layer in info["Layers"] for r in layer["Inputs"] + layer["Outputs"]]
    assert {"Name": "x", "Location": "Device", "Dimensions": [3, 16],
            "Format/Datatype": "Row major linear FP32"} in regions
    assert {"Name": "probs", "Location": "Device", "Dimensions": [3, 10],
            "Format/Datatype": "Row major linear FP32"} in regions
    weights = [layer["Weights"] for layer in info["Layers"] if "Weights" in layer]
    assert weights and weights[0]["Type"] == "Float" and weights[0]["Count"] >= 16 * 10


def test_load_inputs_raw_and_npy(classifier_path, tmp_path, capsys):
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    np.save(tmp_path / "x.npy", x)
    for spec in (f"x:{tmp_path / 'x.bin'}", f"x:{tmp_path / 'x.npy'}"):
        assert main(["bench", str(classifier_path), *FAST, "--shapes=x:2x16",
                     f"--loadInputs={spec}"]) == 0
        out = capsys.readouterr().out
        assert "Using values loaded from file for input x" in out
    # without --shapes, the loaded array sets the inference shape
    np.save(tmp_path / "x5.npy", np.zeros((5, 16), dtype=np.float32))
    assert main(["bench", str(classifier_path), *FAST, f"--loadInputs=x:{tmp_path}/x5.npy"]) == 0
    assert "Input inference shape : x=5x16" in capsys.readouterr().out


def test_use_cuda_graph_on_cpu_is_not_applicable(classifier_path, capsys):
    assert main(["bench", str(classifier_path), *FAST, "--useCudaGraph"]) == 0
    out = capsys.readouterr().out
    assert "--useCudaGraph does not apply on the CPU" in out
    parse_summary(out)


@pytest.mark.parametrize("flags, message", [
    (["--percentile=90,abc"], "--percentile: 'abc' is not a number"),
    (["--percentile=120"], "--percentile values must be in 0..100"),
    (["--iterations=0"], "--iterations must be at least 1"),
    (["--warmUp=-5"], "--warmUp is in milliseconds"),
    (["--duration=-3"], "--duration is in seconds"),
    (["--batch=0"], "--batch sizes must be 1 or more"),
    (["--batch=1,x"], "--batch: 'x' is not an integer"),
    (["--peers=ort,tensorrt"], "unknown peer(s) 'tensorrt'"),
    (["--peers=ort,ort"], "--peers lists ort more than once"),
    (["--shapes=y:1x16"], "--shapes names y, which the model has no input called"),
    (["--loadInputs=x:missing.npy"], "input file not found: missing.npy"),
    (["--loadInputs=z:missing.npy"], "input file not found"),
])
def test_bad_flags_give_one_clear_line(classifier_path, capsys, flags, message):
    assert main(["bench", str(classifier_path), *FAST, *flags]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_missing_model_and_static_batch(static_classifier_path, capsys):
    assert main(["bench", "no/such/model.onnx", *FAST]) == 1
    assert "model file not found: no/such/model.onnx" in capsys.readouterr().err
    assert main(["bench", str(static_classifier_path), *FAST, "--batch=1,8"]) == 1
    err = capsys.readouterr().err
    assert "needs a dynamic first (batch) axis" in err and "fixed at 4" in err


def test_raw_input_of_the_wrong_size(classifier_path, tmp_path, capsys):
    np.zeros(5, dtype=np.float32).tofile(tmp_path / "x.bin")
    assert main(["bench", str(classifier_path), *FAST, f"--loadInputs=x:{tmp_path}/x.bin"]) == 1
    err = capsys.readouterr().err
    assert "holds 5 float32 values" in err and "needs 16" in err


def test_engine_file_is_benched(classifier_path, tmp_path, capsys):
    engine = tmp_path / "c.kiln"
    assert main(["build", str(classifier_path), "-o", str(engine), "--quiet",
                 "--minShapes=x:1x16", "--optShapes=x:2x16", "--maxShapes=x:4x16"]) == 0
    assert main(["bench", str(engine), *FAST]) == 0
    out = capsys.readouterr().out
    assert "Format: kiln engine" in out and "Input inference shape : x=2x16" in out
    parse_summary(out)
    onnx.load(str(classifier_path))  # the model file is untouched


def test_peers_sweep_and_report_from_the_command_line(classifier_path, tmp_path, capsys):
    report = tmp_path / "report"
    code = main(["bench", str(classifier_path), "--duration=0", "--iterations=4", "--warmUp=0",
                 "--peers=ort,kiln", "--batch=2,1", f"--report={report}", "--verbose"])
    captured = capsys.readouterr()
    assert code == 0, captured.err + captured.out
    # progress goes to stderr, one line per phase when it is not a terminal
    assert "kiln bench: [1/4] ort batch 1: timing" in captured.err
    assert "kiln bench: [4/4] kiln batch 2: timing" in captured.err
    out = captured.out
    lines = out.splitlines()
    peer_rows = [line for line in lines if line.startswith(("| ort ", "| kiln "))]
    assert len(peer_rows) == 4  # 2 peers x 2 batches, sorted by batch
    assert [row.split("|")[3].strip() for row in peer_rows] == ["1", "2", "1", "2"]
    sweep_rows = [line for line in lines if line.startswith(("| 1 ", "| 2 "))]
    assert len(sweep_rows) == 2
    # --verbose: every run's trtexec block, each parseable, and the metric explanations
    blocks = out.split("=== Peer: ")[1:]
    assert [b.split(" ===")[0] for b in blocks] == [
        "ort (batch 1)", "ort (batch 2)", "kiln (batch 1)", "kiln (batch 2)"]
    for block in blocks:
        assert parse_summary(block)["Latency"]["min"] > 0
    assert "=== Explanations of the performance metrics ===" in out
    assert {p.name for p in report.iterdir()} == {
        "report.md", "report.json", "latency.png", "throughput.png", "memory.png",
        "accuracy_speed.png"}
    assert parse_lines(out)[1][-1][0] == "PASSED"


def test_separate_profile_run(classifier_path, tmp_path, capsys):
    times, profile = tmp_path / "t.json", tmp_path / "p.json"
    assert main(["bench", str(classifier_path), *FAST, "--separateProfileRun",
                 f"--exportTimes={times}", f"--exportProfile={profile}"]) == 0
    out = capsys.readouterr().out
    assert "Separate profiling: Enabled" in out
    assert "=== Profile (" not in out  # the table is printed for --dumpProfile only
    timed, profiled = json.loads(times.read_text()), json.loads(profile.read_text())
    # the profile comes from its own run, of at least --iterations queries
    assert profiled[0]["count"] >= 12 and len(timed) >= 12
    engine = build_engine(str(classifier_path), BuilderConfig(device="cpu"))
    assert [r["name"] for r in profiled[1:]] == [layer["name"] for layer in engine.layers()]
