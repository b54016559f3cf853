"""Helpers shared by the IR, writer and pass tests: parse, run, compare, check.

A rewrite is judged by running the graph before and after it on fresh seeded random
inputs, with kiln's reference interpreter and with ONNX Runtime on the written model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest

from kiln.ir import Graph
from kiln.onnx import read_onnx, write_onnx
from kiln.ops.interpreter import run_graph
from kiln.passes import PassContext, passes, run_pipeline

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
Feeds = dict[str, np.ndarray]


def parse(text: str) -> Graph:
    """A Graph from ONNX's textual syntax, through the reader (shape inference included)."""
    return read_onnx(onnx.parser.parse_model(text))


def random_feeds(graph: Graph, dims: Mapping[str, int], seed: int) -> Feeds:
    """Random inputs for `graph`, dynamic dims taken from `dims` by name."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in graph.inputs:
        shape = tuple(d if isinstance(d, int) else dims[d] for d in value.shape)
        dtype = value.dtype.numpy
        if dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[value.name] = rng.random(shape) < 0.5
        else:
            feeds[value.name] = rng.integers(-5, 6, shape).astype(dtype)
    return feeds


def ort_run(model: onnx.ModelProto, feeds: Feeds, *, optimize: bool = False) -> Feeds:
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def check_written(graph: Graph) -> onnx.ModelProto:
    """The written model, after onnx.checker (with strict shape inference) accepts it."""
    model = write_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    return model


def assert_close(actual: Mapping, expected: Mapping, *, atol: float = 1e-5,
                 rtol: float = 1e-5) -> None:
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = np.asarray(actual[name])
        assert got.shape == np.shape(want), f"{name}: shape {got.shape} != {np.shape(want)}"
        if got.dtype == object:  # strings
            assert got.tolist() == np.asarray(want).tolist(), name
        else:
            np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, equal_nan=False,
                                       err_msg=name)


def apply(graph: Graph, *passes: Callable[[Graph, PassContext], bool]) -> PassContext:
    """Runs the given passes once each, in order, then checks the graph's invariants."""
    ctx = PassContext()
    for fn in passes:
        fn(graph, ctx)
    graph.toposort()
    graph.lint()
    return ctx


def onnx_level_pipeline(graph: Graph) -> PassContext:
    """The pipeline minus the fusions into kiln's own ops (which ONNX Runtime cannot run).

    fuse_conv_bn stays: its result is a plain Conv.
    """
    fusions = {p.name for p in passes("fuse") if p.name != "fuse_conv_bn"}
    ctx = run_pipeline(graph, disabled=fusions)
    graph.lint()
    return ctx


def ops(graph: Graph) -> list[str]:
    return [n.op_type for n in graph.walk_nodes()]


def assert_same_results(before: Graph, after: Graph, feeds_list: Iterable[Feeds], *,
                        atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """`after` computes what `before` does: by the interpreter, and by ORT on both written."""
    before_model, after_model = write_onnx(before), check_written(after)
    for feeds in feeds_list:
        expected = run_graph(before, feeds)
        assert_close(run_graph(after, feeds), expected, atol=atol, rtol=rtol)
        assert_close(ort_run(after_model, feeds), ort_run(before_model, feeds),
                     atol=atol, rtol=rtol)


def copy_graph(text: str) -> tuple[Graph, Graph]:
    """Two independent Graphs of one model: one to rewrite, one to compare with."""
    model = onnx.parser.parse_model(text)
    return read_onnx(model), read_onnx(copy.deepcopy(model))


def require_models() -> Path:
    if not MODELS.is_dir():
        pytest.skip(f"the shared real models are not at {MODELS} (../shared/models)")
    return MODELS
