"""Paths and samples of `../shared/models` for the engine, runtime, build and CLI tests:
a thin layer over tests/models/zoo.py that skips, with its reason, where the folder is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.models import zoo

ROOT = zoo.REPO


def model_path(name: str) -> Path:
    """`../shared/models/<name>/model.onnx`, or a skip when the folder is absent."""
    if not zoo.available():
        pytest.skip(zoo.SKIP_REASON)
    return zoo.MODELS / name / "model.onnx"


def samples(name: str) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(inputs, ONNX Runtime outputs) of each one-invocation sample of a model."""
    model_path(name)
    return [zoo.load_sample(entry) for _, entry in zoo.samples(name)]
