"""The real models of `../shared/models`: where they are, their samples, engines built once.

The folder lives beside the repository (a user's clone has none): every test module that
uses it skips, with `SKIP_REASON`, when it is absent.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from kiln.build import BuilderConfig, build_engine
from kiln.runtime import ExecutionContext

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO.parent / "shared" / "models"
SKIP_REASON = ("../shared/models (the real third-party models and their reference outputs) "
               "is not beside this checkout")

# an FP32 engine element passes when within either bound (the README's working bar)
FP32_ATOL, FP32_RTOL = 1e-4, 1e-3


def available() -> bool:
    return (MODELS / "manifest.json").is_file()


@functools.cache
def manifest() -> dict[str, list[dict[str, Any]]]:
    return json.loads((MODELS / "manifest.json").read_text())


def samples(model: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(model, manifest entry) for every one-invocation sample (streams excluded)."""
    if not available():
        return []
    return [(name, entry) for name, entries in manifest().items()
            if model in (None, name) for entry in entries if entry.get("kind") != "stream"]


def sample_id(item: tuple[str, dict[str, Any]]) -> str:
    model, entry = item
    return f"{model}/{Path(entry['file']).stem}"


def load_sample(entry: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The sample's inputs and reference outputs, keyed by ONNX name."""
    with np.load(MODELS / entry["file"]) as data:
        inputs = {k[len("input."):]: data[k] for k in data.files if k.startswith("input.")}
        outputs = {k[len("output."):]: data[k] for k in data.files if k.startswith("output.")}
    return inputs, outputs


@functools.cache
def context(model: str, precision: str) -> ExecutionContext:
    """An engine for `model` (built once per test process) on the CPU."""
    probe, _ = load_sample(samples(model)[0][1])  # real inputs: the probe runs real shapes
    # level 0 picks tactics by heuristics: these tests check numerics, and timing every
    # candidate tactic of ten models on a CPU takes minutes
    config = BuilderConfig(precision=precision, device="cpu", probe_inputs=probe,
                           optimization_level=0)
    return ExecutionContext(build_engine(MODELS / model / "model.onnx", config))


def run(model: str, precision: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return context(model, precision).run(inputs)


def fp32_failures(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Elements outside both atol and rtol."""
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return (err > FP32_ATOL) & (err > FP32_RTOL * np.abs(ref.astype(np.float64)))


def silero_stream(model_run) -> tuple[np.ndarray, np.ndarray]:
    """Replays stream_16k.npz as the README says; returns (kiln probs, reference probs).

    `model_run(inputs) -> outputs` runs one chunk: 64 samples of context then 512 new
    ones, state carried from each chunk's `stateN` to the next one's `state`.
    """
    with np.load(MODELS / "silero-vad" / "samples" / "stream_16k.npz") as data:
        audio, sr, reference = data["audio"], data["sr"], data["chunk_probs"]
    audio = np.concatenate([np.zeros(64, np.float32), audio.astype(np.float32)])
    state = np.zeros((2, 1, 128), np.float32)
    probs = np.empty(len(reference), np.float64)
    for k in range(len(reference)):
        chunk = audio[None, 512 * k: 512 * k + 576]
        out = model_run({"input": chunk, "state": state, "sr": np.asarray(sr, np.int64)})
        state = out["stateN"]
        probs[k] = float(out["output"].reshape(-1)[0])
    return probs, reference.astype(np.float64)
