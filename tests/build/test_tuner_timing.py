"""The tuner's clock. On the CPU, a positive time per call. On CUDA (GPU only), a layer is
timed as a CUDA graph replays it, as engines run: a run of tiny kernels is not charged the
host's launch cost, a call that cannot be captured (it syncs with the host) is still
timed eagerly, and a large kernel's replayed time agrees with its eager time."""

from __future__ import annotations

import logging

import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.build.tuner import _time
from kiln.cli.main import main
from kiln.demo import model_path
from kiln.kernels import registry
from kiln.kernels.registry import Tactic
from kiln.runtime.cuda_graphs import replayed_ms

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def test_cpu_time_is_positive_and_grows_with_work():
    small, large = torch.randn(64, 64), torch.randn(512, 512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # parallel test workers oversubscribe cores: OpenMP waits then
    try:
        t_small = _time(lambda: small @ small, torch.device("cpu"))
        t_large = _time(lambda: large @ large, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert 0 < t_small < t_large


@needs_cuda
def test_launch_bound_calls_are_timed_without_the_host():
    x = torch.randn(256, device="cuda")

    def many_tiny():  # 50 launches of ~2 us kernels: host-bound when run eagerly
        y = x
        for _ in range(50):
            y = y + 1.0
        return y

    replayed = replayed_ms(many_tiny, 20)
    assert replayed is not None
    eager = _time(lambda: many_tiny().sum().item(), torch.device("cuda"))  # not capturable
    assert replayed < 0.8 * eager


@needs_cuda
def test_uncapturable_calls_fall_back_to_eager_timing():
    x = torch.randn(1024, device="cuda")
    assert replayed_ms(lambda: float(x.sum()), 4) is None
    assert _time(lambda: float(x.sum()), torch.device("cuda")) > 0
    assert torch.cuda.is_current_stream_capturing() is False
    torch.testing.assert_close((x * 2).cpu(), x.cpu() * 2)  # the device still works
    assert torch.randn(8, device="cuda").std() > 0  # and its random generator


@needs_cuda
def test_large_kernels_time_the_same_replayed_or_eager():
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    replayed = replayed_ms(lambda: a @ a, 10)
    eager = min(_time_eager(lambda: a @ a) for _ in range(3))
    assert replayed is not None and 0.7 * eager < replayed < 1.3 * eager


def _time_eager(call) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    call()
    start.record()
    for _ in range(10):
        call()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 10


class _Refusing(Tactic):  # offered last, so the build's probe run does not pick it
    name = "refusing-for-test"
    ops = (("kiln", "FusedConv"),)
    priority = 99

    def bind(self, layer, tensors, device):
        raise RuntimeError("refused for the test\nsecond line")


def test_no_tactic_fails_on_the_demo_model():
    """Every candidate the tuner offers for the demo's layers runs: one that raised would
    be skipped quietly and never chosen (two cuBLAS tactics once went unseen that way)."""
    engine = build_engine(str(model_path()), BuilderConfig(device="cpu"))
    assert engine.plan["build"]["tuning"]["timed"] > 0
    assert engine.plan["build"]["tuning"]["skipped"] == {}


def test_a_tactic_that_raises_is_skipped_recorded_and_logged(monkeypatch, caplog):
    monkeypatch.setitem(registry._TACTICS, _Refusing.name, _Refusing())
    with caplog.at_level(logging.DEBUG, logger="kiln.build"):
        engine = build_engine(str(model_path()), BuilderConfig(device="cpu"))
    skipped = engine.plan["build"]["tuning"]["skipped"]
    convs = [layer["name"] for layer in engine.layers() if layer["op"] == "FusedConv"]
    assert skipped == {f"refusing-for-test on {name}": "RuntimeError: refused for the test"
                       for name in convs}
    assert "refusing-for-test skipped on conv1_fused: RuntimeError: refused" in caplog.text
    assert "refusing-for-test" not in {layer.get("tactic") for layer in engine.layers()}


def test_build_verbose_names_skipped_tactics(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(registry._TACTICS, _Refusing.name, _Refusing())
    out = tmp_path / "demo.kiln"
    assert main(["build", str(model_path()), "-o", str(out), "--device", "cpu", "--quiet",
                 "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "[V] [kiln.build] tactic refusing-for-test skipped on conv1_fused: RuntimeError: " \
           "refused for the test" in err
    assert main(["build", str(model_path()), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    shown = " ".join(capsys.readouterr().err.split())  # without --verbose: one note
    assert "note: 3 tactic timings raised and were skipped; --verbose" in shown
    assert main(["inspect", str(out)]) == 0  # and the engine says so when inspected
    shown = " ".join(capsys.readouterr().out.split())
    assert "3 tactic timings raised and were skipped (first: refusing-for-test on " \
           "conv0_fused: RuntimeError: refused for the test)" in shown


def test_contenders_are_timed_again_and_keep_their_best(monkeypatch):
    """On CUDA (at optimization level 4 and 5), tactics within the margin of the fastest
    are timed RETIMES more times in turn and keep their best; a far slower one and one
    read from the timing cache are not timed again."""
    from kiln.build import tuner
    from kiln.kernels.registry import Target

    script = {"a": [1.02, 1.01], "b": [0.90, 0.95], "cached": [0.5, 0.5], "slow": [0.1, 0.1]}
    calls = []

    def measure(tactic, spec, target, args):
        calls.append(tactic)
        return script[tactic].pop(0)

    monkeypatch.setattr(tuner, "_measure", measure)
    times = {"a": 1.0, "b": 1.05, "cached": 1.03, "slow": 1.5}
    timed_now = {name: (name, f"key-{name}") for name in ("a", "b", "slow")}
    tuner._retime_contenders(times, timed_now, None, Target(torch.device("cuda")), [])
    assert times == {"a": 1.0, "b": 0.90, "cached": 1.03, "slow": 1.5}
    assert sorted(calls) == ["a", "a", "b", "b"]
    calls.clear()
    tuner._retime_contenders(times, timed_now, None, Target(torch.device("cpu")), [])
    assert calls == []  # the host clock: timed once


def test_quantized_activations_are_random_for_timing():
    """int8 inputs of a layer being timed are spread over the whole range (all zeros would
    let the tensor cores idle and clock up), index inputs stay zeros (always in range)."""
    from types import SimpleNamespace

    from kiln.build.tuner import _random_inputs

    spec = SimpleNamespace(constant_inputs={}, input_dtypes=["int8", "uint8", "int64"])
    q, u, ids = _random_inputs(spec, [[64, 32], [64, 32], [8]], torch.device("cpu"), [])
    assert q.dtype == torch.int8 and q.min() < -100 and q.max() > 100 and q.float().std() > 50
    assert u.dtype == torch.uint8 and u.max() > 200
    assert ids.dtype == torch.int64 and not ids.any()
