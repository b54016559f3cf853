"""The real third-party models in `../shared/models` (beside the repository), for tests.

Each model has sample files `samples/NN_*.npz` with `input.<name>` and `output.<name>`
(ONNX Runtime's outputs). A clone without that folder skips these tests with a reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = ROOT.parent / "shared" / "models"


def model_path(name: str) -> Path:
    """`../shared/models/<name>/model.onnx`, or a skip when the folder is absent."""
    path = SHARED_MODELS / name / "model.onnx"
    if not path.is_file():
        pytest.skip(f"{path} not found: the shared real-model folder is not beside the repo")
    return path


def samples(name: str) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """(inputs, ONNX Runtime outputs) of each sample file of a model."""
    model_path(name)
    found = []
    for file in sorted((SHARED_MODELS / name / "samples").glob("*.npz")):
        with np.load(file) as data:
            inputs = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
            outputs = {k[len("output."):]: data[k] for k in data.files
                       if k.startswith("output.")}
        if inputs:
            found.append((inputs, outputs))
    return found
