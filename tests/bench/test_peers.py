"""Peers side by side, the batch sweep and the report, on the CPU with short runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kiln.bench import Benchmark, InferenceOptions, TorchPeer, write_report
from kiln.bench.tables import peers_table, sweep_table
from kiln.build import BuilderConfig, build_engine
from kiln.errors import KilnError
from tests.bench.models import classifier_weights

FAST = InferenceOptions(iterations=5, warmup_ms=0, duration_s=0)
PNG = b"\x89PNG\r\n\x1a\n"


class TorchClassifier(torch.nn.Module):
    """The classifier model, written in PyTorch from the same weights."""

    def __init__(self) -> None:
        super().__init__()
        w0, w1, b = classifier_weights()
        self.linear = torch.nn.Linear(w0.shape[0], w0.shape[1])
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy((w0 + w1).T))
            self.linear.bias.copy_(torch.from_numpy(b))

    def forward(self, x):
        logits = self.linear(x)
        return logits, torch.softmax(logits, dim=-1)


@pytest.fixture(scope="module")
def peer_result(classifier_path):
    bench = Benchmark(classifier_path, config=BuilderConfig(device="cpu"), options=FAST,
                      peers="ort,kiln-unoptimized,kiln", batches=[1, 4, 16])
    bench.add_peer(TorchPeer(TorchClassifier(), "eager"))
    bench.add_peer(TorchPeer(TorchClassifier(), "cuda-graph"))
    return bench.run()


def test_every_peer_runs_at_every_batch(peer_result):
    statuses = {(r.peer, r.batch): r.status for r in peer_result.runs}
    for peer in ("ort", "kiln-unoptimized", "kiln", "torch-eager"):
        for batch in (1, 4, 16):
            assert statuses[(peer, batch)] == "ok", (peer, batch)
    graph_runs = [r for r in peer_result.runs if r.peer == "torch-cuda-graph"]
    assert {r.status for r in graph_runs} == {"skipped"}
    assert "CUDA graphs need a CUDA device" in graph_runs[0].note
    assert peer_result.baseline == "ort"


def test_accuracy_against_the_first_peer(peer_result):
    for run in peer_result.runs:
        if run.status != "ok":
            continue
        acc = run.accuracy
        assert acc["reference"] == "ort" and acc["outputs"] == 2
        assert acc["max_abs_diff"] < 1e-4, run.peer  # all FP32: the same answers
        assert acc["top1_agreement"] == 1.0
        assert acc["cosine_min"] > 0.99999


def test_throughput_scales_with_batch_and_ratios(peer_result):
    for run in (r for r in peer_result.runs if r.status == "ok"):
        assert run.summary.queries >= 5
        assert run.items_per_second == pytest.approx(run.summary.throughput_qps * run.batch)
        assert run.memory["host_peak_bytes"] > 0
        assert run.memory["device_peak_bytes"] is None  # the CPU has no device memory
        assert run.memory["gpu_utilization_percent"] is None
    table = peers_table(peer_result)
    assert table.splitlines()[0].startswith("| peer ")
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()[2:]]
    speedup = {(row[0], row[2]): row[6] for row in rows}
    assert speedup[("ort", "4")] == "1x"  # the baseline against itself
    kiln = next(r for r in peer_result.runs if r.peer == "kiln" and r.batch == 4)
    ort_run = next(r for r in peer_result.runs if r.peer == "ort" and r.batch == 4)
    ratio = ort_run.summary.latency.median / kiln.summary.latency.median
    assert speedup[("kiln", "4")] == f"{ratio:.3g}x"
    assert "baseline" in table and "skipped: CUDA graphs" in table
    sweep = sweep_table(peer_result)
    assert [line.split("|")[1].strip() for line in sweep.splitlines()[2:]] == ["1", "4", "16"]


def test_unoptimized_engine_runs_the_model_as_written(classifier_path):
    optimized = build_engine(str(classifier_path), BuilderConfig(device="cpu"))
    plain = build_engine(str(classifier_path), BuilderConfig(device="cpu", optimize=False))
    assert "add_weights" in [layer["name"] for layer in plain.layers()]
    assert "add_weights" not in [layer["name"] for layer in optimized.layers()]
    assert plain.plan["build"]["optimize"] is False and not plain.plan["build"]["passes"]


def test_sweep_builds_one_engine_with_a_profile_per_batch(peer_result, classifier_path):
    from kiln.bench.peers import PeerContext, parse_peers

    bench = Benchmark(classifier_path, config=BuilderConfig(device="cpu"), options=FAST,
                      batches=[2, 8])
    bench.prepare()
    profiles = bench.context.config.profiles
    assert [p["opt"]["x"] for p in profiles] == [[2, 16], [8, 16]]
    runner = parse_peers("kiln")[0].create(bench.context)
    assert [p.opt_shape("x") for p in runner.engine.profiles] == [[2, 16], [8, 16]]
    assert isinstance(bench.context, PeerContext)


def test_report_files(peer_result, tmp_path):
    target = write_report(peer_result, tmp_path / "report", "kiln bench classifier.onnx")
    md = (target / "report.md").read_text()
    for chart in ("latency.png", "throughput.png", "memory.png", "accuracy_speed.png"):
        data = (target / chart).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, chart
        assert f"({chart})" in md
        from matplotlib.image import imread

        pixels = imread(target / chart)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 400 and pixels.std() > 0.01
    assert "| peer " in md and "## Batch size" in md and "kiln bench classifier.onnx" in md
    data = json.loads((target / "report.json").read_text())  # strict JSON: no NaN/inf
    assert data["baseline"] == "ort" and data["batches"] == [1, 4, 16]
    ok = [r for r in data["runs"] if r["status"] == "ok"]
    assert len(ok) == 12
    for run in ok:
        summary = run["summary"]
        assert {"Throughput", "Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time",
                "D2H Latency", "Total Host Walltime", "Total GPU Compute Time"} <= set(summary)
        assert summary["GPU Compute Time"] is None  # CPU
        assert summary["Latency"]["median"] == pytest.approx(run["p50_ms"])


def test_torch_peer_maps_outputs_by_position(classifier_path):
    x = np.random.default_rng(0).uniform(size=(3, 16)).astype(np.float32)
    bench = Benchmark(classifier_path, config=BuilderConfig(device="cpu"), options=FAST,
                      peers=[TorchPeer(TorchClassifier(), "eager", name="mine")],
                      inputs={"x": x})
    run = bench.run().runs[0]
    assert run.peer == "mine" and run.status == "ok" and run.batch is None
    with pytest.raises(KilnError, match="already in this benchmark"):
        bench.add_peer(TorchPeer(TorchClassifier(), "eager", name="mine"))


def test_a_failing_peer_is_reported_not_fatal(classifier_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    bench = Benchmark(classifier_path, config=BuilderConfig(device="cpu"), options=FAST,
                      peers=["kiln", TorchPeer(Broken(), "eager")])
    result = bench.run()
    assert result.runs[0].status == "ok"
    assert result.runs[1].status == "failed" and "boom" in result.runs[1].note
    assert result.failed
