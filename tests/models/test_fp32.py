"""FP32 engines of the ten real models match ONNX Runtime's outputs element by element.

The bar is the README's: atol 1e-4, rtol 1e-3, an element failing only when outside both.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.models import zoo

if not zoo.available():
    pytest.skip(zoo.SKIP_REASON, allow_module_level=True)


@pytest.mark.parametrize("item", zoo.samples(), ids=zoo.sample_id)
def test_fp32_matches_reference(item: tuple[str, dict]) -> None:
    model, entry = item
    inputs, expected = zoo.load_sample(entry)
    got = zoo.run(model, "fp32", inputs)
    assert set(got) == set(expected)
    for name, ref in expected.items():
        out = got[name]
        assert out.dtype == np.float32 and out.shape == ref.shape, (name, out.dtype, out.shape)
        bad = zoo.fp32_failures(out, ref)
        err = np.abs(out.astype(np.float64) - ref)
        assert not bad.any(), (f"{model} {name}: {bad.sum()} of {bad.size} elements outside "
                               f"atol {zoo.FP32_ATOL} and rtol {zoo.FP32_RTOL}; "
                               f"max |err| {err.max():.3g}")


def test_every_manifest_model_has_samples() -> None:
    assert len(zoo.manifest()) == 10
    for model in zoo.manifest():
        assert (zoo.MODELS / model / "model.onnx").is_file()
        assert zoo.samples(model), model


def test_silero_stream_replay_fp32() -> None:
    """406 chunks with the LSTM state carried: every chunk's probability matches."""
    probs, reference = zoo.silero_stream(lambda feeds: zoo.run("silero-vad", "fp32", feeds))
    bad = zoo.fp32_failures(probs, reference)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} chunks differ; max |err| "
                           f"{np.abs(probs - reference).max():.3g}")
