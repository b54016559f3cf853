"""Random operators and training-mode Dropout: shapes, dtypes, seeds and distributions.

No two runtimes share a random stream, so values are checked statistically (moments and
frequencies of large samples against the distribution's, with bounds several standard
errors wide) rather than element by element.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.ops._kiln_vs_ort import model, run_kiln, run_ort, tensor

F = TensorProto.FLOAT
D = TensorProto.DOUBLE
N = 20000


@pytest.mark.parametrize(("elem", "dtype"), [(F, np.float32), (D, np.float64),
                                             (TensorProto.FLOAT16, np.float16)])
def test_random_normal_and_uniform(elem: int, dtype: type) -> None:
    nodes = [helper.make_node("RandomNormal", [], ["n"], shape=[N, 2], dtype=elem, mean=1.5,
                              scale=0.5),
             helper.make_node("RandomUniform", [], ["u"], shape=[N], dtype=elem, low=-2.0,
                              high=3.0)]
    normal, uniform = run_kiln(model(nodes, [], [tensor("n", elem), tensor("u", elem)]), {})
    assert normal.shape == (N, 2) and normal.dtype == dtype
    assert uniform.shape == (N,) and uniform.dtype == dtype
    normal, uniform = normal.astype(np.float64), uniform.astype(np.float64)
    assert abs(normal.mean() - 1.5) < 5 * 0.5 / np.sqrt(normal.size)
    assert abs(normal.std() - 0.5) < 0.02
    assert uniform.min() >= -2.0 and uniform.max() <= 3.0
    assert abs(uniform.mean() - 0.5) < 5 * (5 / np.sqrt(12)) / np.sqrt(N)
    counts, _ = np.histogram(uniform, bins=10, range=(-2, 3))
    assert np.all(np.abs(counts - N / 10) < 5 * np.sqrt(N / 10))


@pytest.mark.parametrize("shape", [(3, 4), (N,)])
def test_like_ops_follow_the_input(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float64)
    nodes = [helper.make_node("RandomNormalLike", ["x"], ["n"]),
             helper.make_node("RandomUniformLike", ["x"], ["u"], dtype=F, low=10.0, high=11.0)]
    normal, uniform = run_kiln(model(nodes, [tensor("x", D, shape)],
                                     [tensor("n", D), tensor("u", F)]), {"x": x})
    assert normal.shape == shape and normal.dtype == np.float64
    assert uniform.shape == shape and uniform.dtype == np.float32
    assert uniform.min() >= 10.0 and uniform.max() <= 11.0
    # the same shapes and dtypes as ONNX Runtime gives
    want = run_ort(model(nodes, [tensor("x", D, shape)], [tensor("n", D), tensor("u", F)]),
                   {"x": x})
    assert [(w.shape, w.dtype) for w in want] == [(normal.shape, normal.dtype),
                                                  (uniform.shape, uniform.dtype)]


def test_a_seed_makes_runs_repeat_and_no_seed_does_not() -> None:
    seeded = model([helper.make_node("RandomNormal", [], ["y"], shape=[64], seed=3.0)], [],
                   [tensor("y", F)])
    fresh = model([helper.make_node("RandomNormal", [], ["y"], shape=[64])], [],
                  [tensor("y", F)])
    np.testing.assert_array_equal(run_kiln(seeded, {})[0], run_kiln(seeded, {})[0])
    assert not np.array_equal(run_kiln(fresh, {})[0], run_kiln(fresh, {})[0])


@pytest.mark.parametrize("dtype_attr", [None, D])
def test_bernoulli_frequencies(dtype_attr: int | None) -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 8).astype(np.float32)
    x = np.tile(p, (N // 8, 1))
    x[0, :2] = (0.0, 1.0)  # certain outcomes
    attrs = {} if dtype_attr is None else {"dtype": dtype_attr}
    proto = model([helper.make_node("Bernoulli", ["x"], ["y"], **attrs)],
                  [tensor("x", F, x.shape)], [tensor("y", dtype_attr or F)])
    y = run_kiln(proto, {"x": x})[0]
    assert y.dtype == (np.float64 if dtype_attr else np.float32)
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert y[0, 0] == 0.0 and y[0, 1] == 1.0
    rows = len(x)
    assert np.all(np.abs(y.mean(axis=0) - p) < 5 * np.sqrt(p * (1 - p) / rows) + 1e-3)


def test_bernoulli_outside_zero_one_saturates() -> None:
    """Not valid probabilities, but a build probes with random inputs: no device assert."""
    x = np.array([-2.0, -1e-3, 1.0 + 1e-3, 5.0], np.float32)
    proto = model([helper.make_node("Bernoulli", ["x"], ["y"])], [tensor("x", F, x.shape)],
                  [tensor("y", F)])
    np.testing.assert_array_equal(run_kiln(proto, {"x": x})[0], [0.0, 0.0, 1.0, 1.0])


def test_multinomial_frequencies_follow_softmax() -> None:
    logits = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]], np.float32))
    proto = model([helper.make_node("Multinomial", ["x"], ["y"], sample_size=N, dtype=7)],
                  [tensor("x", F, (2, 3))], [tensor("y", TensorProto.INT64)])
    y = run_kiln(proto, {"x": logits})[0]
    assert y.shape == (2, N) and y.dtype == np.int64
    for row, probabilities in zip(y, np.exp(logits)):
        frequencies = np.bincount(row, minlength=3) / N
        bound = 5 * np.sqrt(probabilities * (1 - probabilities) / N)
        assert np.all(np.abs(frequencies - probabilities) < bound)


def test_multinomial_rejects_a_float_output_type() -> None:
    proto = model([helper.make_node("Multinomial", ["x"], ["y"], dtype=F, name="draw")],
                  [tensor("x", F, (1, 3))], [tensor("y", F)])
    with pytest.raises(RuntimeError, match=r"draw.*int32 or int64"):
        run_kiln(proto, {"x": np.zeros((1, 3), np.float32)})


@pytest.mark.parametrize("ratio", [0.2, 0.75])
def test_training_dropout_scales_kept_values(ratio: float) -> None:
    x = np.random.default_rng(2).standard_normal((N // 10, 10)).astype(np.float32)
    proto = model([helper.make_node("Dropout", ["x", "r", "t"], ["y", "mask"])],
                  [tensor("x", F, x.shape), tensor("r", F, []),
                   tensor("t", TensorProto.BOOL, [])],
                  [tensor("y", F), tensor("mask", TensorProto.BOOL)])
    feeds = {"x": x, "r": np.array(ratio, np.float32)}
    y, mask = run_kiln(proto, {**feeds, "t": np.array(True)})
    assert mask.dtype == np.bool_ and mask.shape == x.shape
    np.testing.assert_allclose(y, np.where(mask, x / (1 - ratio), 0), rtol=1e-6)
    assert abs(1 - mask.mean() - ratio) < 5 * np.sqrt(ratio * (1 - ratio) / x.size)
    y, mask = run_kiln(proto, {**feeds, "t": np.array(False)})  # inference: the identity
    np.testing.assert_array_equal(y, x)
    assert mask.all()


def test_dropout_with_training_mode_input_is_not_removed_as_identity() -> None:
    """The identity-removal pass may only drop Dropout when training_mode is absent/false."""
    x = np.ones((50, 50), np.float32)
    proto = model([helper.make_node("Dropout", ["x", "r", "t"], ["y"])],
                  [tensor("x", F, x.shape), tensor("t", TensorProto.BOOL, [])], [tensor("y", F)])
    proto.graph.initializer.append(helper.make_tensor("r", F, [], [0.5]))
    y = run_kiln(proto, {"x": x, "t": np.array(True)})[0]
    assert set(np.unique(y)) == {0.0, 2.0}
