"""The built-in demo: a small CNN trained on real handwritten digits, with its test set.

`kiln demo` builds engines for it, runs them on the 360 test images, checks the outputs
against ONNX Runtime and the labels, and times both. See tools/make_demo_model.py.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np


def model_path() -> Path:
    return Path(str(resources.files(__name__).joinpath("digits_cnn.onnx")))


def samples() -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 1, 8, 8] float32 in 0..1, labels [N] int64)."""
    with np.load(str(resources.files(__name__).joinpath("digits_test.npz"))) as data:
        return data["image"], data["label"]
