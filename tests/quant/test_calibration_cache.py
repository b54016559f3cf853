"""TensorRT-format calibration caches: reading, writing, names with colons, bad files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from kiln.errors import KilnError
from kiln.quant.calibration_cache import CalibrationTable, method_of

# Written from the format's definition: header, then `name: hex(float32 scale)` with
# scale = amax / 127, for amax = 1.0, 12.3286 (0x3dc6cf6e), 5.0 and 1e-6.
TENSORRT_SAMPLE = """TRT-8601-EntropyCalibration2
images: 3c010204
onnx::Conv_168: 3dc6cf6e
/model.0/conv/Conv_output_0: 3d214285
/model.22/dfl/Softmax_output_0:0: 3207464a
"""


def _scale(hex_digits: str) -> float:
    return struct.unpack(">f", bytes.fromhex(hex_digits))[0]


def test_reads_a_tensorrt_cache():
    table = CalibrationTable.from_text(TENSORRT_SAMPLE)
    assert table.version == "8601" and table.algorithm == "EntropyCalibration2"
    assert method_of(table.algorithm) == "entropy"
    assert list(table.scales) == ["images", "onnx::Conv_168", "/model.0/conv/Conv_output_0",
                                  "/model.22/dfl/Softmax_output_0:0"]
    assert table.amax("images") == pytest.approx(1.0, rel=1e-6)
    assert table.scales["onnx::Conv_168"] == _scale("3dc6cf6e")
    assert table.amax("/model.0/conv/Conv_output_0") == pytest.approx(5.0, rel=1e-6)
    assert table.amax("/model.22/dfl/Softmax_output_0:0") == pytest.approx(1e-6, rel=1e-6)
    assert table.amax("onnx::Conv_168") == pytest.approx(12.3286, rel=1e-5)


def test_round_trip_keeps_names_with_colons_and_exact_scales():
    rng = np.random.default_rng(0)
    names = ["input", "onnx::Conv_193", "a:b:c", "/encoder/layer.0/Add_output_0", "x: y"]
    amax = {n: float(a) for n, a in zip(names, rng.uniform(0.01, 50, len(names)))}
    table = CalibrationTable.from_amax(amax, "minmax")
    text = table.to_text()
    assert text.splitlines()[0] == "TRT-8601-MinMaxCalibration"
    for line in text.splitlines()[1:]:
        assert len(line.rpartition(": ")[2]) == 8
    again = CalibrationTable.from_text(text)
    assert again.scales == table.scales
    for name in names:
        assert again.amax(name) == pytest.approx(amax[name], rel=1e-6)


def test_save_and_load(tmp_path):
    path = tmp_path / "model.cache"
    CalibrationTable.from_text(TENSORRT_SAMPLE).save(path)
    assert path.read_text() == TENSORRT_SAMPLE


def test_a_table_lists_the_tensors_it_lacks():
    table = CalibrationTable.from_text(TENSORRT_SAMPLE)
    assert table.missing(["images", "conv9", "onnx::Conv_168", "relu3"]) == ["conv9", "relu3"]


@pytest.mark.parametrize("text,message", [
    ("", "not a calibration cache"),
    ("images: 3c010204\n", "not a calibration cache"),
    ("TRT-8601-EntropyCalibration2\nimages 3c010204\n", "line 2"),
    ("TRT-8601-EntropyCalibration2\nimages: 3c0102\n", "8 hex"),
    ("TRT-8601-EntropyCalibration2\nimages: 3c010204\nimages: 3c010204\n", "twice"),
    ("TRT-8601-EntropyCalibration2\nimages: 00000000\n", "positive"),
    ("TRT-8601-EntropyCalibration2\nimages: 7f800000\n", "positive"),
])
def test_bad_caches_are_refused_with_the_reason(text, message):
    with pytest.raises(KilnError, match=message):
        CalibrationTable.from_text(text, "bad.cache")


def test_a_binary_or_missing_file_is_refused(tmp_path):
    binary = tmp_path / "engine.cache"
    binary.write_bytes(b"\x00\xff\xfe\x80garbage")
    with pytest.raises(KilnError, match="binary"):
        CalibrationTable.load(binary)
    with pytest.raises(KilnError, match="cannot read calibration cache"):
        CalibrationTable.load(tmp_path / "nothing.cache")
