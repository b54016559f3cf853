"""DFT, STFT, windows and MelWeightMatrix against ONNX's reference."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.ops.reference import assert_close, run_both


@pytest.mark.parametrize(("inverse", "onesided"), [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("length", [None, 6, 12])
@pytest.mark.parametrize("complex_in", [False, True])
def test_dft(inverse: int, onesided: int, length: int | None, complex_in: bool) -> None:
    if onesided and not inverse and complex_in:
        pytest.skip("a one-sided forward DFT takes a real signal")
    rng = np.random.default_rng(inverse * 4 + onesided)
    x = rng.standard_normal((2, 8, 3, 2 if complex_in or inverse else 1)).astype(np.float32)
    feeds = {"x": x, "axis": np.array(1, np.int64)}
    names = ["x", "", "axis"]
    if length is not None:
        feeds["n"] = np.array(length, np.int64)
        names[1] = "n"
    node = helper.make_node("DFT", names, ["y"], inverse=inverse, onesided=onesided)
    assert_close(*run_both(node, feeds, 20), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("with_window", [False, True])
@pytest.mark.parametrize("onesided", [0, 1])
def test_stft(with_window: bool, onesided: int) -> None:
    rng = np.random.default_rng(onesided)
    signal = rng.standard_normal((2, 64, 1)).astype(np.float32)
    feeds = {"signal": signal, "step": np.array(8, np.int64)}
    names = ["signal", "step"]
    if with_window:
        feeds["window"] = np.hanning(16).astype(np.float32)
        names.append("window")
    else:
        feeds["length"] = np.array(16, np.int64)
        names += ["", "length"]
    node = helper.make_node("STFT", names, ["y"], onesided=onesided)
    assert_close(*run_both(node, feeds, 17), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow"])
@pytest.mark.parametrize("periodic", [0, 1])
def test_windows(op: str, periodic: int) -> None:
    node = helper.make_node(op, ["size"], ["w"], periodic=periodic,
                            output_datatype=TensorProto.DOUBLE)
    assert_close(*run_both(node, {"size": np.array(13, np.int64)}, 17))


@pytest.mark.parametrize(("bins", "length", "rate", "low", "high"), [
    (8, 64, 8000, 0.0, 4000.0), (12, 128, 16000, 300.0, 7000.0)])
def test_mel_weight_matrix(bins: int, length: int, rate: int, low: float, high: float) -> None:
    feeds = {"bins": np.array(bins, np.int64), "length": np.array(length, np.int64),
             "rate": np.array(rate, np.int64), "low": np.array(low, np.float32),
             "high": np.array(high, np.float32)}
    node = helper.make_node("MelWeightMatrix", list(feeds), ["m"])
    assert_close(*run_both(node, feeds, 17))
