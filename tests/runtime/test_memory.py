"""The activation arena: no two buffers alive at once overlap, and it is never smaller than
the bytes alive at the busiest step; the engine reports weights and planned activations."""

from __future__ import annotations

import math
import random

import pytest
import torch

from kiln.build import BuilderConfig, build_engine
from kiln.demo import model_path as demo_model_path
from kiln.ops.program import Program, Step
from kiln.runtime.memory import Buffer, peak_live, plan_arena, trace
from tests import shared_models


def _rounded(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


def _random_buffers(rng: random.Random, count: int, steps: int) -> list[Buffer]:
    buffers = []
    for i in range(count):
        first = rng.randint(0, steps)
        last = rng.randint(first, steps)
        size = rng.choice([0, 1, 255, 256, 257, 4096, rng.randint(1, 1 << 20)])
        buffers.append(Buffer(f"v{i}", size, first, last))
    return buffers


def _brute_force_peak(buffers: list[Buffer]) -> int:
    steps = {i for b in buffers for i in range(b.first, b.last + 1)}
    return max((sum(b.size for b in buffers if b.first <= i <= b.last) for i in steps),
               default=0)


def _assert_valid_plan(buffers: list[Buffer], arena: int, alignment: int) -> None:
    for i, a in enumerate(buffers):
        assert a.offset % alignment == 0
        assert a.offset + _rounded(a.size, alignment) <= arena
        for b in buffers[i + 1:]:
            alive_together = a.first <= b.last and b.first <= a.last
            if alive_together and a.size and b.size:
                apart = (a.offset + _rounded(a.size, alignment) <= b.offset
                         or b.offset + _rounded(b.size, alignment) <= a.offset)
                assert apart, f"{a} and {b} overlap while both are alive"


@pytest.mark.parametrize("alignment", [1, 64, 256])
@pytest.mark.parametrize("seed", range(8))
def test_arena_never_overlaps_live_buffers(seed, alignment):
    rng = random.Random(seed * 31 + alignment)
    for _ in range(60):
        buffers = _random_buffers(rng, rng.randint(0, 40), rng.randint(0, 50))
        arena = plan_arena(buffers, alignment)
        _assert_valid_plan(buffers, arena, alignment)
        peak = _brute_force_peak(buffers)
        assert peak_live(buffers) == peak
        assert peak <= arena <= sum(_rounded(b.size, alignment) for b in buffers)


def test_buffers_with_disjoint_lifetimes_share_memory():
    chain = [Buffer(f"v{i}", 1000 * (i + 1), i, i + 1) for i in range(6)]
    arena = plan_arena(chain, 1)
    _assert_valid_plan(chain, arena, 1)
    # at most two neighbours are alive at once: the largest adjacent pair bounds the arena
    assert arena == peak_live(chain) == 5000 + 6000


def test_empty_plan():
    assert plan_arena([], 256) == 0 and peak_live([]) == 0


@pytest.mark.parametrize("name", ["demo", "mtcnn-onet"])
def test_engine_reports_weights_and_planned_activations(name):
    path = demo_model_path() if name == "demo" else shared_models.model_path(name)
    engine = build_engine(path, BuilderConfig(device="cpu"))
    memory = engine.memory
    weights = sum(t.numel() * t.element_size() for t in engine.tensors.values())
    assert memory["weights_bytes"] == weights == engine.weight_bytes() > 0
    planned = memory["activations_planned_bytes"]
    peak = memory["activations_peak_live_bytes"]
    values = len(engine.plan["value_shapes"])
    assert 0 < peak <= planned <= memory["activations_total_bytes"] + 256 * values
    assert set(memory["probe_shapes"]) == set(engine.input_names)


def test_demo_peak_matches_lifetimes_from_the_plan():
    """Recomputes the demo's peak from its layers and value shapes (a straight fp32 chain):
    each value lives from its layer to its last reader, graph outputs to the end."""
    engine = build_engine(demo_model_path(), BuilderConfig(device="cpu"))
    layers, shapes = engine.plan["graph"]["layers"], engine.plan["value_shapes"]
    outputs = set(engine.output_names)
    buffers = []
    for i, layer in enumerate(layers):
        for name in layer["outputs"]:
            readers = [j for j, other in enumerate(layers) if name in other["inputs"]]
            last = len(layers) if name in outputs else max(readers, default=i)
            size = 4 * math.prod(shapes[name])
            buffers.append((layer["op"], Buffer(name, size, i, last)))
    with_views = peak_live([b for _, b in buffers])
    # a Flatten/Reshape output may alias its input and then owns no memory
    without_views = peak_live([b for op, b in buffers if op not in ("Flatten", "Reshape")])
    assert without_views <= engine.memory["activations_peak_live_bytes"] <= with_views


def test_trace_tells_views_from_reused_addresses():
    """A view owns no buffer but keeps its base alive; a new value at an address whose
    tensors are all freed (the allocator reusing it) owns a buffer of its own."""
    storage = torch.zeros(256)  # stands in for the allocator: one address handed out twice

    steps = [
        Step("make_a", lambda x: storage[:64].add_(x.sum()), ("x",), ("a",)),
        Step("view_b", lambda a: a.reshape(8, 8), ("a",), ("b",)),
        Step("make_c", lambda b: b * 2, ("b",), ("c",)),
        Step("reuse_d", lambda c: storage[:128].fill_(c.sum()), ("c",), ("d",)),
    ]
    program = Program(inputs=["x"], outputs=["d"], steps=steps)
    buffers, shapes = trace(program, {"x": torch.ones(3)})
    found = {b.name: (b.size, b.first, b.last) for b in buffers}
    assert found == {"a": (1024, 0, 2),  # read through its view b by make_c
                     "c": (256, 2, 3),
                     "d": (1024, 3, 4)}  # a graph output: alive to the end
    assert shapes["b"] == [8, 8] and shapes["d"] == [128]


def test_memory_report_is_the_same_on_every_build():
    reports = [build_engine(demo_model_path(), BuilderConfig(device="cpu")).memory
               for _ in range(3)]
    keys = ("activations_planned_bytes", "activations_peak_live_bytes",
            "activations_total_bytes")
    assert all({k: r[k] for k in keys} == {k: reports[0][k] for k in keys} for r in reports)


def test_trace_reports_the_memory_order_of_permuted_views():
    steps = [
        Step("transpose", lambda x: x.permute(1, 0, 2), ("x",), ("t",)),
        Step("nhwc", lambda x: x.reshape(1, 2, 3, 4).contiguous(
            memory_format=torch.channels_last), ("x",), ("c",)),
        Step("sliced", lambda x: x[:, :, :2], ("x",), ("s",)),
        Step("sum", lambda t, c, s: t.sum() + c.sum() + s.sum(), ("t", "c", "s"), ("y",)),
    ]
    program = Program(inputs=["x"], outputs=["y"], steps=steps)
    layouts: dict[str, list[int]] = {}
    trace(program, {"x": torch.randn(2, 3, 4)}, layouts)
    # a Transpose's view and a channels-last tensor; a strided (not dense) slice is not
    assert layouts == {"t": [1, 0, 2], "c": [0, 2, 3, 1]}
