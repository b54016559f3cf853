"""Calibration caches in TensorRT's text format, read and written.

    TRT-8601-EntropyCalibration2
    images: 3c010a14
    onnx::Conv_193: 3d2ad10c

A header `TRT-<version>-<algorithm>`, then one line per tensor: its name, a colon, and
the big-endian hex of the float32 scale = amax / 127. Names may contain colons
(`onnx::Conv_193`), so a line splits at its last colon. TensorRT (<= 10) and ONNX
Runtime's TensorRT provider read and write this format, so a cache moves between them
and kiln. kiln writes version 8601 (TensorRT 8.6.1) unless told otherwise.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import KilnError

DEFAULT_VERSION = "8601"
# kiln's calibration methods and the algorithm names TensorRT writes in the header
ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration",
              "percentile": "LegacyCalibration"}
_HEADER = re.compile(r"^TRT-(\d+)-([A-Za-z0-9_]+)$")
_HEX = re.compile(r"^[0-9a-fA-F]{8}$")


@dataclass
class CalibrationTable:
    """Per-tensor INT8 scales (amax / 127), keyed by the model's tensor names."""

    scales: dict[str, float] = field(default_factory=dict)
    algorithm: str = ALGORITHMS["entropy"]
    version: str = DEFAULT_VERSION

    def amax(self, name: str) -> float:
        return self.scales[name] * 127.0

    @classmethod
    def from_amax(cls, amax: dict[str, float], method: str,
                  version: str = DEFAULT_VERSION) -> CalibrationTable:
        scales = {name: _as_float32(max(a, 0.0) / 127.0 if a > 0 else 1.0 / 127.0)
                  for name, a in amax.items()}
        return cls(scales, ALGORITHMS[method], version)

    def missing(self, names: list[str]) -> list[str]:
        return [n for n in names if n not in self.scales]

    # ------------------------------------------------------------------ text
    def to_text(self) -> str:
        lines = [f"TRT-{self.version}-{self.algorithm}"]
        lines += [f"{name}: {_hex(scale)}" for name, scale in self.scales.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> CalibrationTable:
        lines = text.splitlines()
        header = lines[0].strip() if lines else ""
        match = _HEADER.match(header)
        if not match:
            raise KilnError(
                f"{source} is not a calibration cache: its first line is {header[:60]!r}, "
                "expected a header like 'TRT-8601-EntropyCalibration2'",
                hint="pass a cache written by kiln, TensorRT or ONNX Runtime's TensorRT "
                     "provider, or delete the file to calibrate again")
        version, algorithm = match.groups()
        scales: dict[str, float] = {}
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            name, sep, value = line.rpartition(":")
            name, value = name.strip(), value.strip()
            if not sep or not name or not _HEX.match(value):
                raise KilnError(
                    f"{source} line {number}: {line[:80]!r} is not 'tensor name: <8 hex "
                    "digits>'", hint="the cache is damaged; delete it to calibrate again")
            if name in scales:
                raise KilnError(f"{source} line {number}: tensor {name!r} appears twice",
                                hint="the cache is damaged; delete it to calibrate again")
            scale = struct.unpack(">f", bytes.fromhex(value))[0]
            if not (scale > 0 and scale != float("inf")):
                raise KilnError(f"{source} line {number}: tensor {name!r} has scale {scale}, "
                                "expected a positive finite number",
                                hint="the cache is damaged; delete it to calibrate again")
            scales[name] = scale
        return cls(scales, algorithm, version)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_text())

    @classmethod
    def load(cls, path: str | os.PathLike) -> CalibrationTable:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KilnError(f"cannot read calibration cache {path}: {exc.strerror}",
                            hint="check the --calibCache path") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise KilnError(f"{path} is not a text calibration cache (it is binary)",
                            hint="pass a TensorRT text cache, or delete the file to "
                                 "calibrate again") from None
        return cls.from_text(text, str(path))


def _hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def _as_float32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


def method_of(algorithm: str) -> str | None:
    """kiln's method name for a TensorRT algorithm name (None when kiln has no equivalent)."""
    return next((m for m, a in ALGORITHMS.items() if a == algorithm), None)
