"""Random inputs respect the model: types, index ranges, masks; ONNX Runtime (which
refuses out-of-range Gather indices) runs on them and kiln agrees with it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from kiln.bench.inputs import load_input_files, random_inputs, specs_from_engine, specs_from_graph
from kiln.build import BuilderConfig, build_engine
from kiln.errors import KilnError
from kiln.onnx import read_onnx
from kiln.runtime import ExecutionContext
from tests.bench.models import VOCAB, one_hot_by_equal


@pytest.mark.parametrize("shapes, seed", [({"input_ids": [2, 7]}, 1), ({"input_ids": [5, 33],
                                          "attention_mask": [5, 33], "flip": [5, 1]}, 4)])
def test_index_and_mask_inputs(embedding_path, shapes, seed):
    specs = specs_from_graph(read_onnx(str(embedding_path)), shapes)
    kinds = {s.name: s.kind for s in specs}
    assert kinds == {"input_ids": "index", "attention_mask": "mask", "flip": "bool"}
    ids_spec = next(s for s in specs if s.name == "input_ids")
    assert (ids_spec.low, ids_spec.high) == (0, VOCAB - 1)
    assert "Gather indices into table" in ids_spec.reason
    feeds = random_inputs(specs, seed)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and feeds["flip"].dtype == bool
    assert ids.shape == tuple(shapes["input_ids"])
    assert ids.min() >= 0 and ids.max() <= VOCAB - 1 and ids.max() > 1  # spans the table
    assert set(np.unique(mask)) <= {0, 1} and mask[:, 0].all()  # never all zeros in a row
    ones = mask.sum(axis=1)
    assert all((row[:n] == 1).all() and (row[n:] == 0).all() for row, n in zip(mask, ones))
    session = ort.InferenceSession(str(embedding_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    engine = build_engine(str(embedding_path), BuilderConfig(device="cpu"))
    got = ExecutionContext(engine).run(feeds)["pooled"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # the same analysis from the engine's plan when only a .kiln is at hand
    from_plan = specs_from_engine(engine, shapes)
    assert [(s.name, s.kind, s.high) for s in from_plan] == \
        [(s.name, s.kind, s.high) for s in specs]


def test_float_inputs_follow_polygraphy_defaults(classifier_path):
    specs = specs_from_graph(read_onnx(str(classifier_path)), {"x": [64, 16]})
    x = random_inputs(specs, 1)["x"]
    assert x.dtype == np.float32 and x.shape == (64, 16)
    assert x.min() >= 0.0 and x.max() < 1.0 and x.std() > 0.2  # uniform [0, 1)
    assert not np.array_equal(x, random_inputs(specs, 2)["x"])
    np.testing.assert_array_equal(x, random_inputs(specs, 1)["x"])


def test_load_input_files(classifier_path, tmp_path):
    specs = specs_from_graph(read_onnx(str(classifier_path)), {"x": [2, 16]})
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    np.savez(tmp_path / "sample.npz", **{"input.x": x, "output.probs": np.ones(3)})
    x.tofile(tmp_path / "x.bin")
    for spec in (str(tmp_path / "in.npz"), str(tmp_path / "sample.npz"),
                 f"x:{tmp_path / 'x.bin'}"):
        np.testing.assert_array_equal(load_input_files(spec, specs)["x"], x)
    with pytest.raises(KilnError, match="no input called"):
        np.savez(tmp_path / "bad.npz", y=x)
        load_input_files(str(tmp_path / "bad.npz"), specs)
    with pytest.raises(KilnError, match="is not name:file"):
        load_input_files("x.bin", specs)


def test_one_hot_by_equal_keeps_codes_in_the_table(tmp_path):
    path = one_hot_by_equal(tmp_path / "one_hot.onnx", depth=12)
    specs = specs_from_graph(read_onnx(str(path)), {"codes": [40, 6]})
    assert (specs[0].kind, specs[0].low, specs[0].high) == ("index", 0, 11)
    codes = random_inputs(specs)["codes"]
    assert codes.dtype == np.int32 and codes.min() >= 0 and codes.max() == 11
    # every code hits exactly one slot of the table, as real data would
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"codes": codes})[0], np.ones((40, 6)))
