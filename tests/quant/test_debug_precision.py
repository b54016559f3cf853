"""`kiln debug precision`: the accuracy metrics, the bisection and pruning that find a
minimal set of layers to keep out of INT8, and the command end to end (its overrides,
written to a file, make a build meet the target)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.cli.main import main
from kiln.errors import KilnError
from kiln.quant import Calibrator
from kiln.quant.debug_precision import Metric, Trial, _Search, find_precision_overrides
from kiln.runtime import ExecutionContext
from tests.quant._models import SmallCNN, export


def test_metrics():
    want = {"y": np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]])}
    got = {"y": np.array([[1.0, 2.5, 3.0], [0.0, 1.0, 3.5]])}
    assert Metric.parse("max_abs<=0.1").score(got, want) == pytest.approx(3.5)
    assert Metric.parse("mean_abs<=0.1").score(got, want) == pytest.approx(7.0 / 6)
    assert Metric.parse("top1>=1").score(got, want) == 0.5
    cosine = (1 + 5 + 9 + 0 + 1 + 0) / np.sqrt(1 + 6.25 + 9 + 1 + 12.25) / np.sqrt(24)
    assert Metric.parse("cosine>=0.9").score(got, want) == pytest.approx(cosine)
    assert Metric.parse("cosine >= 0.999").met(0.9995)
    assert not Metric.parse("max_abs<=1e-3").met(0.002)
    for bad in ("cos>0.9", "cosine<=0.9", "max_abs>=1", "top1"):
        with pytest.raises(KilnError):
            Metric.parse(bad)


def test_bisection_and_pruning_find_exactly_the_needed_layers():
    """A synthetic target met only when layers b and e are in higher precision."""
    search = _Search(None, BuilderConfig(), [], [], Metric("top1", 1.0), "fp32", print)
    names = list("abcdefgh")
    search.candidates = names

    def trial(chosen, engine=None):
        met = {"b", "e"} <= set(chosen)
        result = Trial(sorted(chosen), float(met), met)
        search.trials.append(result)
        return result

    search.trial = trial
    forward, backward = search.bisect(names), search.bisect(names[::-1])
    assert forward == list("abcde") and backward == list("hgfedcb")
    assert sorted(search.prune(forward)) == ["b", "e"]
    assert len(search.trials) < 16


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("debug")
    path = export(SmallCNN(), torch.randn(2, 3, 16, 16), folder / "cnn.onnx")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((16, 3, 16, 16)).astype(np.float32))
    np.savez(folder / "eval.npz", x=rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    return path, folder


def _config(folder, **extra):
    calibrator = Calibrator(str(folder / "calib.npz"), method="percentile", percentile=99.0)
    return BuilderConfig(precision="int8", device="cpu", optimization_level=0,
                         fallback_precision="fp32", calibrator=calibrator, **extra)


def test_the_overrides_meet_the_target_and_are_minimal(cnn):
    path, folder = cnn
    inputs = [{"x": np.load(folder / "eval.npz")["x"]}]
    reference = ExecutionContext(build_engine(str(path), BuilderConfig(device="cpu"))).run(
        inputs[0])
    plain = ExecutionContext(build_engine(str(path), _config(folder))).run(inputs[0])
    metric = Metric.parse("cosine>=0.99999")
    before = metric.score(plain, reference)
    assert not metric.met(before)  # the target needs some layers out of INT8
    result = find_precision_overrides(str(path), _config(folder), inputs, metric)
    assert result.overrides and set(result.overrides.values()) == {"fp32"}
    assert set(result.overrides) < set(result.candidates)
    engine = build_engine(str(path), _config(folder, layer_precisions=result.overrides))
    assert metric.met(metric.score(ExecutionContext(engine).run(inputs[0]), reference))
    tried = {frozenset(t.higher): t.met for t in result.trials}
    for name in result.overrides:  # no single layer can go back to INT8
        assert tried[frozenset(set(result.overrides) - {name})] is False


def test_cli_writes_overrides_that_a_build_reads(cnn, tmp_path, capsys):
    path, folder = cnn
    out = tmp_path / "overrides.txt"
    code = main(["debug", "precision", str(path), "--int8", f"--calib={folder / 'calib.npz'}",
                 "--calibMethod=percentile", "--calibPercentile=99", "--device", "cpu",
                 f"--inputs={folder / 'eval.npz'}", "--metric", "cosine>=0.99999",
                 "-o", str(out)])
    text = capsys.readouterr().err
    assert code == 0, text
    assert "need higher precision" in text and out.exists()
    names = [item.rpartition(":")[0] for item in out.read_text().strip().split(",")]
    engine_file = tmp_path / "m.kiln"
    code = main(["build", str(path), "--int8", f"--calib={folder / 'calib.npz'}",
                 "--calibMethod=percentile", "--calibPercentile=99", "--device", "cpu",
                 f"--layerPrecisions=@{out}", "-o", str(engine_file), "--quiet"])
    assert code == 0
    from kiln.engine.engine import Engine

    layers = Engine.load(engine_file).layers()
    kept = [layer for layer in layers if set(layer["fused"]) & set(names)]
    assert len(kept) == len(names) and all(layer["precision"] == "fp32" for layer in kept)


def test_debug_precision_errors(cnn, tmp_path, capsys):
    path, folder = cnn
    assert main(["debug", "precision", str(path), "--device", "cpu",
                 f"--inputs={folder / 'eval.npz'}"]) == 1
    assert "low-precision build" in capsys.readouterr().err
    assert main(["debug", "precision", str(path), "--int8", "--device", "cpu",
                 "--calibCache=none.cache"]) == 1
    assert "needs inputs" in capsys.readouterr().err
    assert main(["build", str(path), "--layerPrecisions=@missing.txt", "--device", "cpu"]) == 1
    assert "not found" in capsys.readouterr().err
