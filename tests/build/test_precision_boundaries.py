"""The quantize steps that a choice of pinned layers leaves between INT8 and float layers,
and the search that counts them (kiln.build.precision_boundaries)."""

from __future__ import annotations

import itertools
import random

import pytest

from kiln.build.precision_boundaries import Boundaries, Tensor, boundaries
from kiln.runtime.profile import LayerTime

# input -> a -> b -> c, and a's output is also c's residual
CHAIN = Boundaries(0.001, (Tensor(100, None, ("a",)), Tensor(100, "a", ("b", "c")),
                           Tensor(100, "b", ("c",))))


@pytest.mark.parametrize("pinned, steps", [
    (set(), 1),  # the input's quantize step only
    ({"b"}, 3),  # a writes floats for b, so c's residual and b's output need a step each
    ({"a"}, 1),  # the input stays float, a's output is quantized for b and c
    ({"c"}, 2),  # a's output has a float reader
    ({"a", "b", "c"}, 0),
    ({"b", "c"}, 1),  # only the input's step: a writes floats for b and c
])
def test_cost_counts_a_step_per_tensor_with_int8_readers_and_a_float_side(pinned, steps):
    assert CHAIN.cost(pinned) == pytest.approx(steps * 0.1)


def test_search_keeps_a_layer_in_int8_where_leaving_costs_more_than_it_gains():
    times = {"a": (1.0, 1.2), "b": (1.05, 1.0), "c": (1.0, 2.0)}
    assert CHAIN.search(times, ["b"]) == []  # b gains 0.05 alone but adds two steps (0.2)
    times["b"] = (1.5, 1.0)
    assert CHAIN.search(times, ["b"]) == ["b"]  # gains 0.5: worth the steps


def test_search_never_ends_above_its_start_and_finds_small_optima():
    """Against every subset of a random chain with residuals: the search's total is never
    above the per-layer choice's, and within the best subset's by at most one step."""
    rng = random.Random(3)
    names = [f"l{i}" for i in range(7)]
    for _ in range(20):
        tensors = [Tensor(rng.randint(10, 200), None, (names[0],))]
        for i, name in enumerate(names[:-1]):
            readers = names[i + 1:i + 1 + rng.randint(1, 2)]
            tensors.append(Tensor(rng.randint(10, 200), name, tuple(readers)))
        model = Boundaries(0.001, tuple(tensors))
        times = {n: (rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)) for n in names}
        start = [n for n, (q, f) in times.items() if f < q]
        found = model.total(times, set(model.search(times, start)))
        best = min(model.total(times, set(c)) for r in range(len(names) + 1)
                   for c in itertools.combinations(names, r))
        assert best - 1e-9 <= found <= model.total(times, set(start)) + 1e-9
        assert found <= best + 0.2 + 1e-9


def _layer(name, op, inputs, outputs):
    return {"name": name, "op": op, "inputs": inputs, "outputs": outputs, "fused": [name]}


def test_boundaries_read_from_an_engine_s_layers_and_profile():
    layers = [_layer("xq", "Quantize", ["x"], ["x_q"]),
              _layer("c1", "QConv", ["x_q", "w1"], ["y1"]),
              _layer("pool", "MaxPool", ["y1"], ["p"]),
              _layer("c2", "QConv", ["p", "w2"], ["y2"]),
              _layer("c3", "QConv", ["y2", "w3", "p"], ["y3"]),
              _layer("fq", "Quantize", ["f"], ["f_q"]),
              _layer("fc", "QGemm", ["f_q", "wf"], ["out"])]
    timed = [LayerTime(n, op, "t", "int8", ms, size) for n, op, ms, size in [
        ("xq", "Quantize", 0.03, 1000), ("c1", "QConv", 1, 500), ("pool", "MaxPool", 1, 125),
        ("c2", "QConv", 1, 125), ("c3", "QConv", 1, 125), ("fq", "Quantize", 0.01, 1000),
        ("fc", "QGemm", 1, 10)]]
    model = boundaries(layers, timed, {layer["name"]: layer["name"].upper() for layer in layers})
    assert model.ms_per_element == pytest.approx(0.04 / 2000)
    # the pooled tensor comes from a layer of its own precision: not counted either way
    assert set(model.tensors) == {Tensor(1000, None, ("C1",)), Tensor(125, "C2", ("C3",)),
                                  Tensor(1000, None, ("FC",))}
    assert boundaries(layers[1:5], timed, {n["name"]: n["name"] for n in layers}) is None
