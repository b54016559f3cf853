"""The FP16 precision pass on small synthetic graphs: where casts go, what stays fp32,
overrides, and the numerics its rules exist for (checked against ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.build import BuilderConfig, build_engine
from kiln.build.precision import assign_precision, mark_model_dtypes
from kiln.build.precision_policy import fits_fp16, op_class
from kiln.errors import KilnError
from kiln.ir import DType, Graph, Node, Value
from kiln.onnx import read_onnx
from kiln.runtime import ExecutionContext

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
RNG_SEED = 1234


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(a, n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _in(name, dims, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


def _out(name):
    return helper.make_tensor_value_info(name, FLOAT, None)


def _graph(model: onnx.ModelProto, precision="fp16", overrides=None) -> tuple[Graph, dict]:
    graph = read_onnx(model)
    mark_model_dtypes(graph)
    counts = assign_precision(graph, precision, overrides)
    graph.lint()
    return graph, counts


def _node(graph: Graph, name: str) -> Node:
    return next(n for n in graph.walk_nodes() if n.name == name)


def _casts(graph: Graph) -> list[Node]:
    return [n for n in graph.walk_nodes() if n.meta.get("precision") == "reformat"]


def _weights(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _two_convs(rng) -> onnx.ModelProto:
    """x -> conv_a, conv_b (both read x and the same weight) -> add -> y."""
    w = _weights(rng, 4, 3, 3, 3)
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["x", "w"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["b"], ["rb"], name="relu_b"),
         helper.make_node("Conv", ["rb", "w2"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["a", "c"], ["y"], name="add")],
        [_in("x", ["N", 3, "H", "W"])], [_out("y")],
        [("w", w), ("w2", _weights(rng, 4, 4, 3, 3))])


def _run_both(model: onnx.ModelProto, feeds: dict, config: BuilderConfig) -> tuple[dict, dict]:
    engine = build_engine(model, config)
    got = ExecutionContext(engine).run(feeds)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return got, dict(zip(names, session.run(names, feeds)))


# ------------------------------------------------------------------ casts and constants
def test_one_cast_per_value_and_type() -> None:
    graph, counts = _graph(_two_convs(np.random.default_rng(RNG_SEED)))
    from_x = [n for n in _casts(graph) if n.inputs[0].name == "x"]
    assert len(from_x) == 1 and from_x[0].attrs["to"] == DType.FLOAT16.value
    assert _node(graph, "conv_a").inputs[0] is _node(graph, "conv_b").inputs[0]
    assert counts["casts"] == len(_casts(graph))
    for node in _casts(graph):  # no value is cast twice to the same type
        same = [c for c in _casts(graph)
                if c.inputs[0] is node.inputs[0] and c.attrs["to"] == node.attrs["to"]]
        assert len(same) == 1, node.name


def test_constants_converted_once_and_shared() -> None:
    graph, counts = _graph(_two_convs(np.random.default_rng(RNG_SEED)))
    weight_a = _node(graph, "conv_a").inputs[1]
    assert weight_a is _node(graph, "conv_b").inputs[1]
    assert weight_a.is_const and weight_a.const.dtype == np.float16
    assert weight_a.dtype is DType.FLOAT16
    halves = [v for v in graph.initializers.values() if v.const.dtype == np.float16]
    assert len(halves) == counts["constants"] == 2  # w and w2, once each


def test_constant_of_outer_graph_converted_once_for_both_branches() -> None:
    rng = np.random.default_rng(RNG_SEED)
    branch = [helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], [f"{name}_y"], name=f"{name}_mm")],
        name, [], [_out(f"{name}_y")]) for name in ("then", "else")]
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch[0],
                          else_branch=branch[1])],
        [_in("x", [2, 8]), _in("cond", [], TensorProto.BOOL)], [_out("y")],
        [("w", _weights(rng, 8, 5))])
    graph, counts = _graph(model)
    then_w = _node(graph, "then_mm").inputs[1]
    assert then_w is _node(graph, "else_mm").inputs[1] and then_w.const.dtype == np.float16
    assert then_w.name in graph.initializers  # kept beside the original, not per branch
    assert counts["constants"] == 1
    for node in graph.nodes:  # every branch output is back in float32
        for sub in node.subgraphs():
            assert all(v.dtype is DType.FLOAT for v in sub.outputs)
    x = rng.standard_normal((2, 8)).astype(np.float32)
    for cond in (True, False):
        got, ref = _run_both(model, {"x": x, "cond": np.array(cond)},
                             BuilderConfig(precision="fp16", device="cpu"))
        assert got["y"].dtype == np.float32
        np.testing.assert_allclose(got["y"], ref["y"], atol=1e-2, rtol=1e-2)


def test_outputs_keep_float32_and_their_names() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["feat"], name="conv"),
         helper.make_node("Relu", ["feat"], ["act"], name="relu"),
         helper.make_node("Conv", ["act", "w2"], ["head"], name="conv2")],
        [_in("x", ["N", 3, "H", "W"])], [_out("feat"), _out("head")],
        [("w", _weights(rng, 4, 3, 1, 1)), ("w2", _weights(rng, 2, 4, 1, 1))])
    graph, _ = _graph(model)
    assert [v.name for v in graph.outputs] == ["feat", "head"]
    assert all(v.dtype is DType.FLOAT for v in graph.outputs)
    assert _node(graph, "conv").output.dtype is DType.FLOAT16  # the conv itself stays fp16
    config = BuilderConfig(precision="fp16", device="cpu")
    for shape in [(1, 3, 5, 7), (2, 3, 9, 4)]:
        got, ref = _run_both(model, {"x": rng.standard_normal(shape).astype(np.float32)}, config)
        for name in ("feat", "head"):
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], ref[name], atol=5e-3, rtol=5e-3)


def test_fp32_build_without_overrides_is_untouched() -> None:
    graph, counts = _graph(_two_convs(np.random.default_rng(RNG_SEED)), "fp32")
    assert not _casts(graph) and counts["casts"] == 0
    assert all(v.dtype is not DType.FLOAT16 for g in graph.walk_graphs() for v in g.values())


# ------------------------------------------------------------------ inputs never cast
def test_integer_host_and_metadata_inputs_are_never_cast() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = _model(
        [helper.make_node("Gather", ["table", "ids"], ["emb"], name="gather"),
         helper.make_node("Transpose", ["emb"], ["emb4"], name="nchw", perm=[0, 3, 1, 2]),
         helper.make_node("Conv", ["emb4", "w"], ["c"], name="conv"),
         helper.make_node("Shape", ["c"], ["shape"], name="shape"),
         helper.make_node("Resize", ["c", "", "scales"], ["up"], name="resize", mode="linear"),
         helper.make_node("Conv", ["up", "w2"], ["y"], name="conv2"),
         helper.make_node("Reshape", ["y", "flat"], ["yf"], name="reshape")],
        [_in("ids", ["N", 6, 5], INT64)],
        [_out("yf"), helper.make_tensor_value_info("shape", INT64, None)],
        [("table", _weights(rng, 10, 4)), ("w", _weights(rng, 3, 4, 3, 3)),
         ("scales", np.array([1, 1, 1.5, 1.25], np.float32)),
         ("w2", _weights(rng, 2, 3, 1, 1)), ("flat", np.array([0, -1], np.int64))])
    graph, _ = _graph(model)
    for cast in _casts(graph):
        assert cast.inputs[0].dtype in (DType.FLOAT, DType.FLOAT16), cast
    assert _node(graph, "gather").inputs[1].dtype is DType.INT64
    assert _node(graph, "gather").inputs[1] is graph.inputs[0]
    assert _node(graph, "shape").inputs[0] is _node(graph, "conv").output  # read as fp16
    scales = _node(graph, "resize").inputs[2]
    assert scales.const.dtype == np.float32  # a host-read float input keeps its type
    assert _node(graph, "reshape").inputs[1].const.dtype == np.int64
    ids = rng.integers(0, 10, size=(2, 6, 5)).astype(np.int64)
    got, ref = _run_both(model, {"ids": ids}, BuilderConfig(precision="fp16", device="cpu"))
    np.testing.assert_array_equal(got["shape"], ref["shape"])
    np.testing.assert_allclose(got["yf"], ref["yf"], atol=5e-3, rtol=5e-3)


# ------------------------------------------------------------------ policy rules
def test_mixed_inputs_promote_to_float32() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Add", ["c", "bias_in"], ["s"], name="add"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("Mul", ["r", "half"], ["m"], name="mul_const"),
         helper.make_node("Concat", ["s", "m"], ["cat"], name="cat", axis=1),
         helper.make_node("Conv", ["cat", "w2"], ["y"], name="conv2")],
        [_in("x", [1, 3, 4, 4]), _in("bias_in", [1, 2, 4, 4])], [_out("y")],
        [("w", _weights(rng, 2, 3, 1, 1)), ("half", np.array(0.5, np.float32)),
         ("w2", _weights(rng, 1, 4, 1, 1))])
    graph, _ = _graph(model)
    assert _node(graph, "add").meta["precision"] == "fp32"  # fp16 + fp32 input -> fp32
    assert _node(graph, "relu").meta["precision"] == "fp16"
    assert _node(graph, "mul_const").meta["precision"] == "fp16"  # constants are weak
    assert _node(graph, "cat").meta["precision"] == "fp32"
    assert _node(graph, "conv2").meta["precision"] == "fp16"


def test_output_tail_keeps_subpixel_precision() -> None:
    """A YOLO-style decode after the last conv: grid + offset * stride, values up to ~600
    (fp16 spacing there is 0.5 px). The tail runs in fp32, so only the conv's own
    rounding (about 1e-3 of 4 px) remains."""
    rng = np.random.default_rng(RNG_SEED)
    size = 40
    grid = (np.arange(size, dtype=np.float32) * 16.0 + 0.37).reshape(1, 1, 1, size)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["off"], name="conv"),
         helper.make_node("Sigmoid", ["off"], ["sig"], name="sigmoid"),
         helper.make_node("Mul", ["sig", "stride"], ["px"], name="scale"),
         helper.make_node("Add", ["px", "grid"], ["y"], name="decode")],
        [_in("x", ["N", 8, "H", size])], [_out("y")],
        [("w", _weights(rng, 1, 8, 1, 1)), ("stride", np.array(16.0, np.float32)),
         ("grid", grid)])
    graph, counts = _graph(model)
    assert counts["tail"] == 3
    for name in ("sigmoid", "scale", "decode"):
        assert _node(graph, name).meta["precision"] == "fp32", name
    config = BuilderConfig(precision="fp16", device="cpu")
    for shape in [(1, 8, 3, size), (3, 8, 7, size)]:
        x = rng.standard_normal(shape).astype(np.float32)
        got, ref = _run_both(model, {"x": x}, config)
        assert ref["y"].max() > 600
        assert np.abs(got["y"] - ref["y"]).max() < 0.05  # fp16 decode would be off by 0.25


def test_constants_that_do_not_fit_fp16_keep_their_layer_fp32() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Mul", ["c", "big"], ["m_big"], name="mul_big"),
         helper.make_node("Add", ["c", "eps"], ["m_eps"], name="add_eps"),
         helper.make_node("Mul", ["c", "fine"], ["m_fine"], name="mul_fine"),
         helper.make_node("Concat", ["m_big", "m_eps", "m_fine"], ["cat"], name="cat", axis=1),
         helper.make_node("Conv", ["cat", "w2"], ["y"], name="conv2")],
        [_in("x", [1, 3, 4, 4])], [_out("y")],
        [("w", _weights(rng, 1, 3, 1, 1)), ("big", np.array(1e5, np.float32)),
         ("eps", np.array(1e-12, np.float32)), ("fine", np.array(0.1, np.float32)),
         ("w2", _weights(rng, 1, 3, 1, 1))])
    graph, _ = _graph(model)
    assert _node(graph, "mul_big").meta["precision"] == "fp32"
    assert _node(graph, "add_eps").meta["precision"] == "fp32"
    assert _node(graph, "mul_fine").meta["precision"] == "fp16"


@pytest.mark.parametrize("array, fits", [
    (np.array([0.5, -0.25, 1e-9, 0.0]), True),  # tiny elements of a larger tensor: fine
    (np.array([1e-12]), False),  # flushes to zero
    (np.array([1e-6, 2e-6]), False),  # subnormal: rounding moves it by far more than 2**-10
    (np.array([7e4, 1.0]), False),  # overflows
    (np.array([np.inf, -np.inf, 3.0]), True),  # infinities convert exactly
    (np.zeros(3), True),
    (np.array([65504.0]), True),
], ids=["tiny-elements", "eps", "subnormal", "overflow", "inf", "zeros", "fp16-max"])
def test_fits_fp16(array: np.ndarray, fits: bool) -> None:
    assert fits_fp16(array.astype(np.float32)) is fits


def test_square_of_activation_runs_fp32() -> None:
    """x * x of activations near 300 overflows fp16 (90000 > 65504): a decomposed
    normalization must not turn into inf."""
    rng = np.random.default_rng(RNG_SEED)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Mul", ["c", "c"], ["sq"], name="square"),
         helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], name="mean", keepdims=1),
         helper.make_node("Sqrt", ["ms"], ["rms"], name="sqrt"),
         helper.make_node("Div", ["c", "rms"], ["n"], name="norm"),
         helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2")],
        [_in("x", ["N", 4, "H", "W"])], [_out("y")],
        [("w", np.full((6, 4, 1, 1), 80.0, np.float32)), ("axes", np.array([1], np.int64)),
         ("w2", _weights(rng, 2, 6, 1, 1))], opset=18)
    graph, _ = _graph(model)
    assert _node(graph, "square").meta["precision"] == "fp32"
    config = BuilderConfig(precision="fp16", device="cpu")
    for shape in [(1, 4, 3, 3), (2, 4, 5, 2)]:
        x = (rng.random(shape) + 0.5).astype(np.float32)
        got, ref = _run_both(model, {"x": x}, config)
        assert np.isfinite(got["y"]).all()
        np.testing.assert_allclose(got["y"], ref["y"], atol=1e-2, rtol=1e-2)


def test_batchnorm_statistics_stay_fp32() -> None:
    """Running variance 1e6 overflows fp16; the per-channel factors are computed in fp32
    from fp32 statistics while the data stays fp16."""
    rng = np.random.default_rng(RNG_SEED)
    channels = 3
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"],
                          name="bn"),
         helper.make_node("Relu", ["bn"], ["r"], name="relu"),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")],
        [_in("x", ["N", channels, "H", "W"])], [_out("y")],
        [("w", np.eye(channels, dtype=np.float32).reshape(channels, channels, 1, 1)),
         ("scale", np.array([1.0, 2.0, 0.5], np.float32)),
         ("bias", np.array([0.1, -0.2, 0.3], np.float32)),
         ("mean", np.array([5000.0, -3000.0, 100.0], np.float32)),
         ("var", np.array([1e6, 4e5, 1e2], np.float32)),
         ("w2", _weights(rng, 2, channels, 1, 1))])
    graph, _ = _graph(model)
    bn = _node(graph, "bn")
    assert bn.meta["precision"] == "fp16" and bn.output.dtype is DType.FLOAT16
    assert all(v.const.dtype == np.float32 for v in bn.inputs[1:])
    config = BuilderConfig(precision="fp16", device="cpu")
    mean = np.array([5000.0, -3000.0, 100.0], np.float32).reshape(1, 3, 1, 1)
    std = np.sqrt(np.array([1e6, 4e5, 1e2], np.float32)).reshape(1, 3, 1, 1)
    for shape in [(1, channels, 4, 4), (2, channels, 3, 6)]:
        x = (mean + std * rng.standard_normal(shape)).astype(np.float32)
        got, ref = _run_both(model, {"x": x}, config)
        np.testing.assert_allclose(got["y"], ref["y"], atol=2e-2, rtol=1e-2)


# ------------------------------------------------------------------ overrides
def test_override_forces_fp32_and_fp16() -> None:
    model = _two_convs(np.random.default_rng(RNG_SEED))
    graph, counts = _graph(model, overrides={"conv_b": "fp32", "add": "fp16"})
    assert _node(graph, "conv_b").meta["precision"] == "fp32"
    assert _node(graph, "conv_b").output.dtype is DType.FLOAT
    assert _node(graph, "conv_a").meta["precision"] == "fp16"
    assert _node(graph, "add").meta["precision"] == "fp16"  # though in the output tail
    assert counts["forced"] == 2
    assert graph.outputs[0].dtype is DType.FLOAT and graph.outputs[0].name == "y"


def test_override_in_fp32_build_runs_that_layer_in_fp16() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = _two_convs(rng)
    graph, _ = _graph(model, "fp32", {"conv_c": "fp16"})
    kinds = {n.name: n.meta.get("precision") for n in graph.nodes}
    assert kinds["conv_c"] == "fp16"
    assert kinds["conv_a"] == kinds["conv_b"] == kinds["add"] == "fp32"
    config = BuilderConfig(precision="fp32", device="cpu", layer_precisions={"conv_c": "fp16"})
    x = rng.standard_normal((2, 3, 6, 5)).astype(np.float32)
    got, ref = _run_both(model, {"x": x}, config)
    err = np.abs(got["y"] - ref["y"]).max()
    assert 0 < err < 1e-2  # fp16 rounding shows, and only that


def test_override_matches_a_fused_layer_by_its_parts() -> None:
    graph = read_onnx(_two_convs(np.random.default_rng(RNG_SEED)))
    mark_model_dtypes(graph)
    _node(graph, "conv_b").meta["fused"] = ["conv_b", "relu_b"]
    assign_precision(graph, "fp16", {"relu_b": "fp32"})
    assert _node(graph, "conv_b").meta["precision"] == "fp32"


def test_override_of_an_optimized_away_node_is_reported() -> None:
    rng = np.random.default_rng(RNG_SEED)
    model = _model(
        [helper.make_node("Identity", ["w"], ["w_id"], name="ident"),
         helper.make_node("Conv", ["x", "w_id"], ["y"], name="conv")],
        [_in("x", [1, 3, 4, 4])], [_out("y")], [("w", _weights(rng, 2, 3, 1, 1))])
    engine = build_engine(model, BuilderConfig(precision="fp16", device="cpu",
                                               layer_precisions={"ident": "fp32"}))
    assert engine.plan["build"]["precision_layers"]["overrides_unused"] == ["ident"]


@pytest.mark.parametrize("overrides, message", [
    ({"conv_x": "fp32"}, "no node of the model"),
    ({"conv_a": "int8"}, "can only be forced to fp32 or fp16"),
])
def test_bad_overrides_are_clear_errors(overrides: dict, message: str) -> None:
    model = _two_convs(np.random.default_rng(RNG_SEED))
    with pytest.raises(KilnError, match=message) as info:
        build_engine(model, BuilderConfig(precision="fp16", device="cpu",
                                          layer_precisions=overrides))
    assert info.value.hint  # says how to fix it
    if "conv_x" in overrides:
        assert "conv_a" in info.value.hint  # close names are suggested


def test_values_made_by_fusion_passes_follow_like_the_originals() -> None:
    """After the fuse phase (FusedConv, Elementwise ...), the layers between two
    convolutions stay fp16: the only reformats are at the engine's input and output."""
    rng = np.random.default_rng(RNG_SEED)
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
         helper.make_node("MaxPool", ["p"], ["m"], name="pool", kernel_shape=[2, 2],
                          strides=[2, 2]),
         helper.make_node("Sigmoid", ["m"], ["s"], name="sig"),
         helper.make_node("Mul", ["m", "s"], ["silu"], name="silu"),
         helper.make_node("Conv", ["silu", "w2"], ["y"], name="conv2")],
        [_in("x", ["N", 3, "H", "W"])], [_out("y")],
        [("w", _weights(rng, 4, 3, 3, 3)), ("slope", np.full((4, 1, 1), 0.2, np.float32)),
         ("w2", _weights(rng, 2, 4, 1, 1))])
    config = BuilderConfig(precision="fp16", device="cpu")
    engine = build_engine(model, config)
    layers = engine.plan["graph"]["layers"]
    reformats = [layer for layer in layers if layer["precision"] == "reformat"]
    assert len(reformats) == 2, [layer["name"] for layer in reformats]
    assert all(layer["precision"] in ("fp16", "reformat") for layer in layers)
    for shape in [(1, 3, 6, 6), (2, 3, 8, 4)]:
        got, ref = _run_both(model, {"x": rng.standard_normal(shape).astype(np.float32)}, config)
        np.testing.assert_allclose(got["y"], ref["y"], atol=5e-3, rtol=5e-3)


@pytest.mark.parametrize("program, fp16_ok, expected", [
    ([["Mul", ["i0", "i1"], []], ["Sigmoid", ["t0"], []]], True, "follow"),
    ([["Mul", ["i0", "i0"], []]], True, "fp32"),  # a square
    ([["Sub", ["i0", "i1"], []], ["Mul", ["t0", "t0"], []]], True, "fp32"),
    ([["Exp", ["i0"], []]], True, "fp32"),
    ([["Add", ["i0", "i1"], []]], False, "fp32"),  # the fusing pass said so
])
def test_fused_elementwise_programs_are_classed_by_what_they_compute(
        program: list, fp16_ok: bool, expected: str) -> None:
    inputs = [Value("a", DType.FLOAT, (2,)), Value("b", DType.FLOAT, (2,))]
    node = Node("Elementwise", inputs, [Value("y", DType.FLOAT, (2,))], {"program": program},
                domain="kiln", name="ew")
    node.meta["fp16_ok"] = fp16_ok
    assert op_class(node) == expected


@pytest.mark.parametrize("op, expected", [
    ("FusedConv", "fp16"), ("FusedGemm", "fp16"), ("Attention", "fp16"),
    ("LayerNorm", "fp16"), ("Gelu", "follow")])
def test_fused_layers_are_classed_as_the_ops_they_replace(op: str, expected: str) -> None:
    node = Node(op, [Value("a", DType.FLOAT, (2,))], [Value("y", DType.FLOAT, (2,))],
                domain="kiln", name="n")
    assert op_class(node) == expected


def test_fused_layernorm_in_fp16_keeps_fp32_statistics() -> None:
    """kiln's LayerNorm is classed fp16 because its statistics stay fp32: with a large
    common offset (where fp16 variance would lose everything) it still matches float64."""
    import torch

    from kiln.ops.fused import layer_norm

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 256, generator=g) * 0.5 + 300.0).to(torch.float16)
    r = torch.randn(4, 256, generator=g).to(torch.float16)
    scale = torch.rand(256, generator=g).to(torch.float16) + 0.5
    got = layer_norm(x, r, scale, None, epsilon=1e-5)
    summed = (x.double() + r.double()).to(torch.float16).double()  # the sum rounds once
    want = (summed - summed.mean(-1, keepdim=True)) / torch.sqrt(
        summed.var(-1, unbiased=False, keepdim=True) + 1e-5) * scale.double()
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-3)


def test_lookup_in_a_weight_table_reads_fp16_weights() -> None:
    """Gather from a constant float table by integer ids (an embedding) runs in fp16: the
    table is stored narrowed, and the lookup returns its fp16 rounding exactly."""
    rng = np.random.default_rng(RNG_SEED)
    table = _weights(rng, 50, 8, scale=1.0)
    model = _model(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
         helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")],
        [_in("ids", ["N", 5], INT64)], [_out("y")],
        [("table", table), ("w", _weights(rng, 8, 4))])
    graph, _ = _graph(model)
    embed = _node(graph, "embed")
    assert embed.meta["precision"] == "fp16"
    assert embed.inputs[0].const.dtype == np.float16
    assert not any(n.inputs[0].name == "e" for n in _casts(graph))
    ids = rng.integers(0, 50, (3, 5)).astype(np.int64)
    engine = build_engine(model, BuilderConfig(precision="fp16", device="cpu",
                                               optimization_level=0))
    got = ExecutionContext(engine).run({"ids": ids})["y"]
    w16 = _node(graph, "proj").inputs[1].const.astype(np.float64)
    want = table.astype(np.float16).astype(np.float64)[ids] @ w16
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("also_read", [False, True])
def test_last_layernorm_writes_the_float32_output_itself(also_read) -> None:
    """An FP16 engine ending in a LayerNorm has it write the model's float32 output (no
    Cast after it); where another layer reads its result too, the Cast stays."""
    rng = np.random.default_rng(RNG_SEED)
    width = 24
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "x"], ["s"], name="residual"),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], name="ln")]
    outputs = [_out("y")]
    if also_read:
        nodes.append(helper.make_node("Relu", ["y"], ["r"], name="relu"))
        outputs.append(_out("r"))
    model = _model(nodes, [_in("x", ["N", "S", width])], outputs,
                   [("w", _weights(rng, width, width)), ("g", _weights(rng, width) + 1),
                    ("b", _weights(rng, width))])
    config = BuilderConfig(precision="fp16", device="cpu")
    engine = build_engine(model, config)
    layers = engine.plan["graph"]["layers"]
    reformats = [layer["name"] for layer in layers if layer["precision"] == "reformat"]
    assert reformats[0].startswith("reformat_x") and len(reformats) == 1 + also_read, reformats
    for shape in [(2, 5, width), (3, 1, width)]:
        got, ref = _run_both(model, {"x": rng.standard_normal(shape).astype(np.float32)}, config)
        for name in ref:
            assert got[name].dtype == np.float32
            np.testing.assert_allclose(got[name], ref[name], atol=1e-2, rtol=1e-2)
