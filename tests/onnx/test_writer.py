"""write_onnx: a Graph written back to ONNX runs in ONNX Runtime exactly as the original."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from kiln.errors import KilnError
from kiln.ir import DType, Graph
from kiln.onnx import load_model, read_onnx, write_onnx
from tests.graph_support import assert_close, ort_run, parse, random_feeds, require_models

SIMPLE = Path(onnx.__file__).parent / "backend" / "test" / "data" / "simple"
# the ONNX "simple" test models ONNX Runtime runs here (StringNormalizer with a case change
# needs a locale this machine may lack; Gradient is a training op)
SIMPLE_MODELS = [
    "test_expand_shape_model1", "test_expand_shape_model2", "test_expand_shape_model3",
    "test_expand_shape_model4", "test_sequence_model2", "test_sequence_model3",
    "test_sequence_model4", "test_sequence_model5", "test_sequence_model6",
    "test_sequence_model7", "test_sequence_model8", "test_shrink", "test_sign_model",
    "test_single_relu_model", "test_strnorm_model_nostopwords_nochangecase",
]
REAL_MODELS = ["attacut-c", "fsmn-vad", "khmersm", "magika-v3.3", "mtcnn-onet", "mtcnn-pnet",
               "mtcnn-rnet", "nudenet-yolov8n", "ppocr-cls-v2", "silero-vad"]


def _samples(folder: Path) -> list[dict[str, np.ndarray]]:
    feeds = []
    for path in sorted(folder.glob("samples/*.npz")):
        with np.load(path) as data:
            inputs = {k.removeprefix("input."): data[k] for k in data.files
                      if k.startswith("input.")}
        if inputs:
            feeds.append(inputs)
    return feeds


def _check_if_typed(graph: Graph, model: onnx.ModelProto) -> None:
    """onnx.checker needs a rank for every main-graph input and output.

    Where shape inference could not give an output one (ppocr-cls-v2, silero-vad), the
    reader has none either, and the checker is skipped for that model only.
    """
    if all(v.shape is not None for v in graph.inputs + graph.outputs):
        onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("name", REAL_MODELS)
def test_real_models_round_trip_with_identical_outputs(name):
    folder = require_models() / name
    original = load_model(folder / "model.onnx")
    graph = read_onnx(original)
    written = write_onnx(graph)
    _check_if_typed(graph, written)
    samples = _samples(folder)
    assert samples, f"{name} has no samples"
    for feeds in samples:
        expected = ort_run(original, feeds)
        got = ort_run(written, feeds)
        assert list(got) == list(expected)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name}: {key}")


def test_real_models_with_unknown_output_ranks_are_the_known_two():
    models = require_models()
    untyped = [n for n in REAL_MODELS
               if any(v.shape is None for v in read_onnx(models / n / "model.onnx").outputs)]
    assert untyped == ["ppocr-cls-v2", "silero-vad"]
    manifest = json.loads((models / "manifest.json").read_text())
    assert set(REAL_MODELS) == set(manifest)


def _load_pb(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


@pytest.mark.parametrize("name", SIMPLE_MODELS)
def test_onnx_simple_models_round_trip(name):
    folder = SIMPLE / name
    if not folder.is_dir():
        pytest.skip(f"onnx ships no {name} test model in this version")
    original = onnx.load(folder / "model.onnx")
    graph = read_onnx(original, check_ops=False)  # writing needs no kiln implementation
    written = write_onnx(graph)
    onnx.checker.check_model(written, full_check=True)
    data = folder / "test_data_set_0"
    inputs = [_load_pb(p) for p in sorted(data.glob("input_*.pb"))]
    outputs = [_load_pb(p) for p in sorted(data.glob("output_*.pb"))]
    names = [v.name for v in original.graph.input
             if v.name not in {t.name for t in original.graph.initializer}]
    feeds = dict(zip(names, inputs))
    got = ort_run(written, feeds)
    assert_close(got, ort_run(original, feeds), atol=0, rtol=0)
    for value, want in zip(got.values(), outputs):
        if want.dtype == object:
            assert value.tolist() == want.tolist()
        else:
            np.testing.assert_allclose(value, want, rtol=1e-6)


CONTROL_FLOW = {
    "if": """<ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[N,3] x) => (float[N,3] y) {
      k = Constant <value = float {2.0}> ()
      y = If(c) <
        then_branch = t () => (float[N,3] a) { a = Mul(x, k) },
        else_branch = e () => (float[N,3] b) { one = Constant <value = float {1.0}> ()
                                              b = Sub(x, one) }
      >
    }""",
    "loop": """<ir_version: 8, opset_import: ["" : 17]>
    g (int64 trips, float[3] x) => (float[3] total, float[T,3] steps) {
      cond = Constant <value = bool {1}> ()
      total, steps = Loop(trips, cond, x) <
        body = b (int64 i, bool c, float[3] acc) => (bool c2, float[3] acc2, float[3] seen) {
          c2 = Identity(c)
          fi = Cast <to = 1> (i)
          acc2 = Add(acc, fi)
          seen = Mul(acc2, x)
        }
      >
    }""",
    "scan": """<ir_version: 8, opset_import: ["" : 17]>
    g (float[2] init, float[S,2] xs) => (float[2] last, float[S,2] sums) {
      last, sums = Scan <
        num_scan_inputs = 1,
        body = b (float[2] s, float[2] x) => (float[2] s2, float[2] out) {
          s2 = Add(s, x)
          out = Identity(s2)
        }
      > (init, xs)
    }""",
}


@pytest.mark.parametrize("name", sorted(CONTROL_FLOW))
def test_control_flow_bodies_round_trip(name):
    original = onnx.parser.parse_model(CONTROL_FLOW[name])
    graph = read_onnx(original)
    written = write_onnx(graph)
    _check_if_typed(graph, written)
    rng = np.random.default_rng(7)
    for case in range(3):
        feeds = random_feeds(graph, {"N": case + 1, "S": case + 2}, case)
        if "c" in feeds:
            feeds["c"] = np.array(case % 2 == 0)
        if "trips" in feeds:
            feeds["trips"] = np.array(rng.integers(0, 4), dtype=np.int64)
        assert_close(ort_run(written, feeds), ort_run(original, feeds), atol=0, rtol=0)


def test_attribute_types_come_from_the_schema():
    graph = parse("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[2,3] x) => (float[2,3] y, float[1,1] z) {
      y = LeakyRelu <alpha = 0.5> (x)
      z = ReduceMean <axes = [0, 1]> (x)
    }""")
    leaky, reduce = graph.nodes
    leaky.attrs["alpha"] = 1  # a pass may store an int where ONNX wants a float
    reduce.attrs["axes"] = []  # an empty list carries no type of its own (here: all axes)
    model = write_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    attrs = {a.name: a for n in model.graph.node for a in n.attribute}
    assert attrs["alpha"].type == onnx.AttributeProto.FLOAT and attrs["alpha"].f == 1.0
    assert attrs["axes"].type == onnx.AttributeProto.INTS and not attrs["axes"].ints
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    y, z = ort_run(model, {"x": x}).values()
    np.testing.assert_allclose(y, x, rtol=1e-6)  # alpha = 1: the identity
    np.testing.assert_allclose(z, x.mean(keepdims=True), rtol=1e-5)


def test_ops_without_a_schema_get_types_from_their_values():
    graph = Graph(opsets={"": 17})
    x = graph.add_input("x", DType.FLOAT, (2,))
    node = graph.add_node("Fancy", [x], {
        "n": 3, "f": 0.5, "s": "text", "raw": b"\xff", "ints": [1, 2], "mixed": [1, 0.5],
        "t": np.arange(3, dtype=np.int32), "none": [],
    }, domain="kiln")
    graph.outputs.append(node.output)
    model = write_onnx(graph)
    assert {(i.domain, i.version) for i in model.opset_import} == {("", 17), ("kiln", 1)}
    kinds = {a.name: a.type for a in model.graph.node[0].attribute}
    A = onnx.AttributeProto
    assert kinds == {"n": A.INT, "f": A.FLOAT, "s": A.STRING, "raw": A.STRING, "ints": A.INTS,
                     "mixed": A.FLOATS, "t": A.TENSOR, "none": A.INTS}
    node.attrs["bad"] = {"a": 1}
    with pytest.raises(KilnError, match=r"node 'fancy' \(Fancy\) has attribute 'bad' of type "
                                        r"dict, which has no ONNX attribute type"):
        write_onnx(graph)


def test_written_model_keeps_the_ir_version_and_types():
    source = onnx.parser.parse_model("""<ir_version: 7, opset_import: ["" : 13]>
    g (float[N,4] x, int64[2] s) => (float[A,B] y) {
      r = Relu(x)
      y = Reshape(r, s)
    }""")
    model = write_onnx(read_onnx(source))
    assert model.ir_version == 7
    info = {v.name: v for v in model.graph.value_info}
    dims = [d.dim_param or d.dim_value for d in info["r"].type.tensor_type.shape.dim]
    assert dims == ["N", 4]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_a_body_returning_an_outer_value_gets_an_identity():
    graph = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (bool c, float[3] x) => (float[3] y) {
      s = Sigmoid(x)
      y = If(c) <
        then_branch = t () => (float[3] a) { a = Identity(s) },
        else_branch = e () => (float[3] b) { b = Neg(x) }
      >
    }""")
    branch = graph.nodes[1].attrs["then_branch"]
    branch.replace_all_uses(branch.outputs[0], graph.nodes[0].output)  # what passes may do
    branch.remove_node(branch.nodes[0])
    assert branch.outputs[0] is graph.nodes[0].output and not branch.nodes
    model = write_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(3).standard_normal(3).astype(np.float32)
    for flag, want in [(True, 1 / (1 + np.exp(-x))), (False, -x)]:
        got = ort_run(model, {"c": np.array(flag), "x": x})["y"]
        np.testing.assert_allclose(got, want, rtol=1e-6)
