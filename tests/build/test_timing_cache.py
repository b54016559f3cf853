"""The timing cache (`kiln build --timingCacheFile`): a warm rebuild times nothing and picks
the same tactics; a cache from another device gives no false hits; a damaged cache is one
clear error that names the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.build.timing_cache import TimingCache
from kiln.cli.main import main
from kiln.demo import model_path, samples
from kiln.engine.engine import Engine
from kiln.errors import KilnError
from kiln.runtime import ExecutionContext

DEMO = str(model_path())


def _build(cache, **extra) -> Engine:
    return build_engine(DEMO, BuilderConfig(device="cpu", timing_cache=str(cache), **extra))


def _tactics(engine: Engine) -> dict[str, str]:
    return {layer["name"]: layer.get("tactic") for layer in engine.layers()}


def test_warm_rebuild_times_nothing_and_chooses_the_same(tmp_path):
    cache = tmp_path / "timing.json"
    cold = _build(cache)
    tuning = cold.plan["build"]["tuning"]
    assert tuning["timed"] > 0 and tuning["cached"] == 0
    saved = json.loads(cache.read_text())["entries"]
    assert len(saved) == tuning["timed"]
    warm = _build(cache)
    assert warm.plan["build"]["tuning"]["timed"] == 0
    assert warm.plan["build"]["tuning"]["cached"] == tuning["timed"]
    assert _tactics(warm) == _tactics(cold)
    images = samples()[0][:5]
    want = ExecutionContext(cold).run({"image": images})
    got = ExecutionContext(warm).run({"image": images})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_entries_of_another_device_are_not_hits(tmp_path):
    cache = tmp_path / "timing.json"
    timed = _build(cache).plan["build"]["tuning"]["timed"]
    data = json.loads(cache.read_text())
    data["entries"] = {"cuda:Other GPU:sm90:torch0|" + k.split("|", 1)[1]: v
                       for k, v in data["entries"].items()}
    cache.write_text(json.dumps(data))
    again = _build(cache).plan["build"]["tuning"]
    assert again["timed"] == timed and again["cached"] == 0
    assert len(TimingCache(cache).entries) == 2 * timed  # both devices kept


@pytest.mark.parametrize("text, problem", [
    ("{not json", "Expecting property name"),
    (json.dumps({"format": "something else"}), "not a kiln timing cache"),
    (json.dumps({"format": "kiln-timing-cache", "version": 99}), "version 99"),
    (json.dumps({"format": "kiln-timing-cache", "version": 1, "entries": {"k": -1}}),
     "non-negative numbers"),
])
def test_damaged_cache_is_a_clear_error(tmp_path, text, problem):
    cache = tmp_path / "timing.json"
    cache.write_text(text)
    with pytest.raises(KilnError, match=problem) as info:
        _build(cache)
    assert "delete the file" in info.value.hint
    assert cache.read_text() == text  # left as it was


def test_cli_flag(tmp_path, capsys):
    cache = tmp_path / "timing.json"
    for name in ("a.kiln", "b.kiln"):
        assert main(["build", DEMO, "-o", str(tmp_path / name), "--device=cpu", "--quiet",
                     f"--timingCacheFile={cache}"]) == 0
    assert Engine.load(tmp_path / "b.kiln").plan["build"]["tuning"]["timed"] == 0
    cache.write_text("[]")
    assert main(["build", DEMO, "-o", str(tmp_path / "c.kiln"), "--device=cpu",
                 f"--timingCacheFile={cache}"]) == 1
    err = capsys.readouterr().err
    assert "cannot use timing cache" in err and "Traceback" not in err


def test_tuner_times_on_inputs_laid_out_as_the_engine_hands_them():
    from kiln.build.tuner import _random_inputs
    from kiln.kernels.registry import LayerSpec

    spec = LayerSpec(name="ln", op="LayerNorm", domain="kiln", opset=1, inputs=["a", "b"],
                     outputs=["y"], attrs={}, precision="fp32", placement="device",
                     tactic="", params={}, input_dtypes=["fp32", "fp32"])
    a, b = _random_inputs(spec, [[4, 6, 8], [4, 6, 8]], torch.device("cpu"), [[1, 0, 2], None])
    assert a.shape == b.shape == (4, 6, 8)
    assert not a.is_contiguous() and a.permute(1, 0, 2).is_contiguous() and b.is_contiguous()
