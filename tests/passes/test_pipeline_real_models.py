"""The pass pipeline on the shared real models: same outputs, and the passes fire.

The graph after the ONNX-level passes (all but the fusions into kiln's own ops) is written
back to ONNX and run by ONNX Runtime, with its own optimizations off, against the original,
on each model's samples and, for the image models, fresh random inputs of other sizes (what
a dynamic-dim fold must get right). The graph after the whole pipeline, fused ops
included, runs in kiln's reference interpreter against the unoptimized graph.
"""

from __future__ import annotations

import numpy as np
import pytest

from kiln.ir import Graph
from kiln.onnx import read_onnx, write_onnx
from kiln.ops.interpreter import run_graph
from kiln.passes import run_pipeline
from tests.graph_support import assert_close, onnx_level_pipeline, ort_run, require_models

# inputs of other sizes than the samples', for models whose inputs are images
RANDOM_SHAPES = {
    "nudenet-yolov8n": [{"images": (2, 3, 160, 224)}],
    "ppocr-cls-v2": [{"x": (3, 3, 48, 160)}, {"x": (1, 3, 48, 64)}],
    "mtcnn-pnet": [{"input_1": (2, 37, 53, 3)}],
    "mtcnn-onet": [{"input_3": (3, 48, 48, 3)}],
}
MODELS = ["attacut-c", "fsmn-vad", "khmersm", "magika-v3.3", "mtcnn-onet", "mtcnn-pnet",
          "mtcnn-rnet", "nudenet-yolov8n", "ppocr-cls-v2", "silero-vad"]


def _feeds(name: str) -> list[dict[str, np.ndarray]]:
    feeds = []
    for path in sorted((require_models() / name).glob("samples/*.npz")):
        with np.load(path) as data:
            inputs = {k.removeprefix("input."): data[k] for k in data.files
                      if k.startswith("input.")}
        if inputs:
            feeds.append(inputs)
    rng = np.random.default_rng(42)
    for shapes in RANDOM_SHAPES.get(name, []):
        feeds.append({k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in shapes.items()})
    return feeds


def _optimized(name: str, *, fuse: bool = True) -> tuple[Graph, Graph, dict[str, int]]:
    path = require_models() / name / "model.onnx"
    before, after = read_onnx(path), read_onnx(path)
    if fuse:
        ctx = run_pipeline(after)
        after.lint()
    else:
        ctx = onnx_level_pipeline(after)
    return before, after, ctx.rewrites


def _dynamic_targets(graph: Graph) -> int:
    return sum(1 for n in graph.walk_nodes()
               if n.op_type in ("Reshape", "Expand") and not n.inputs[1].is_const)


@pytest.mark.parametrize("name", MODELS)
def test_simplified_model_matches_the_original_in_onnx_runtime(name):
    before, after, _ = _optimized(name, fuse=False)
    before_model, after_model = write_onnx(before), write_onnx(after)
    for feeds in _feeds(name):
        expected = ort_run(before_model, feeds)
        assert_close(ort_run(after_model, feeds), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_fully_optimized_model_matches_the_original_in_kiln(name):
    before, after, _ = _optimized(name)
    # the smallest sample only: the interpreter is the slow reference (other sizes are
    # checked above, in ONNX Runtime)
    feeds = min(_feeds(name), key=lambda f: sum(a.size for a in f.values()))
    assert_close(run_graph(after, feeds), run_graph(before, feeds), atol=1e-5, rtol=1e-5)


def test_ppocr_batchnorms_fold_into_their_convs():
    _, after, rewrites = _optimized("ppocr-cls-v2")
    assert rewrites["fuse_conv_bn"] == 35
    assert not [n for n in after.walk_nodes() if n.op_type == "BatchNormalization"]
    # the classifier's Reshape target came from Shape(x)[0]: now [0, 200], no Shape left
    assert not [n for n in after.walk_nodes() if n.op_type == "Shape"]
    assert rewrites["fold_shape_chains"] >= 1 and _dynamic_targets(after) == 0


def test_nudenet_head_reshapes_get_constant_targets():
    before, after, rewrites = _optimized("nudenet-yolov8n")
    assert rewrites["fold_shape_chains"] >= 3
    heads = {n.name: n for n in after.nodes
             if n.name in ("/model.22/Reshape", "/model.22/Reshape_1", "/model.22/Reshape_2")}
    assert len(heads) == 3
    for node in heads.values():
        # batch is copied (0), proven equal across the three scales through Concat and Conv
        assert node.inputs[1].is_const and node.inputs[1].const.tolist() == [0, 82, -1]
    assert _dynamic_targets(after) < _dynamic_targets(before)


@pytest.mark.parametrize("name", ["khmersm", "magika-v3.3", "silero-vad"])
def test_shape_chains_fold_in_transformer_and_streaming_models(name):
    before, after, rewrites = _optimized(name)
    assert rewrites["fold_shape_chains"] >= 1
    shape_ops = ("Shape", "Size", "Gather", "Slice", "Concat")
    count = sum(n.op_type in shape_ops for n in after.walk_nodes())
    assert count < sum(n.op_type in shape_ops for n in before.walk_nodes())
