"""fuse_conv_bn: an inference BatchNormalization after a Conv folds into its weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.onnx import read_onnx
from kiln.passes import PassContext
from kiln.passes.fuse_conv_bn import fuse_conv_bn, fusion_blocker
from tests.graph_support import apply, assert_same_results, ops, random_feeds


def _bn_model(*, conv="Conv", rank=4, channels_in=4, channels_out=6, group=1, bias=True,
              opset=17, bn_attrs=None, bn_outputs=("y",), extra_outputs=(),
              const_params=True, seed=0):
    """x -> Conv(W[, b]) -> BatchNormalization -> y, with random weights and statistics."""
    rng = np.random.default_rng(seed)
    kernel = [3] * (rank - 2)
    if conv == "Conv":
        w_shape = [channels_out, channels_in // group, *kernel]
    else:
        w_shape = [channels_in, channels_out // group, *kernel]
    inits = [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "W")]
    conv_inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(
            rng.standard_normal(channels_out).astype(np.float32), "B"))
        conv_inputs.append("B")
    params = {
        "gamma": rng.uniform(0.5, 2.0, channels_out),
        "beta": rng.standard_normal(channels_out),
        "mean": rng.standard_normal(channels_out),
        "var": rng.uniform(0.1, 3.0, channels_out),
    }
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                            ["N", channels_in] + ["S"] * (rank - 2))]
    for name, array in params.items():
        if const_params:
            inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [channels_out]))
    attrs = {"group": group, "pads": [1] * (2 * (rank - 2))}
    nodes = [
        helper.make_node(conv, conv_inputs, ["c"], name="conv", **attrs),
        helper.make_node("BatchNormalization", ["c", *params], list(bn_outputs), name="bn",
                         **(bn_attrs or {"epsilon": 1e-3})),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
               for name in ("y", *extra_outputs)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    # an IR version ONNX Runtime reads (make_model writes the newest onnx knows)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8 if opset >= 9 else 3)


def _feeds(graph, sizes):
    return [random_feeds(graph, {"N": n, "S": s}, seed) for seed, (n, s) in enumerate(sizes)]


@pytest.mark.parametrize("case", [
    {},
    {"bias": False},
    {"group": 2},
    {"group": 4, "channels_out": 8},          # depthwise
    {"rank": 3},                              # Conv1d
    {"rank": 5, "channels_out": 2},           # Conv3d
    {"conv": "ConvTranspose"},
    {"conv": "ConvTranspose", "group": 2, "bias": False},
    {"opset": 9, "bn_attrs": {"epsilon": 1e-5}},
], ids=str)
def test_conv_bn_fuses_into_one_conv(case):
    model = _bn_model(**case)
    graph, before = read_onnx(model), read_onnx(model)
    ctx = apply(graph, fuse_conv_bn)
    assert ctx.rewrites["fuse_conv_bn"] == 1
    assert ops(graph) == [case.get("conv", "Conv")]
    assert graph.outputs[0].name == "y"  # the BN's output name survives
    rank = case.get("rank", 4)
    sizes = [(1, 5), (2, 8)] if rank < 5 else [(1, 4), (2, 5)]
    assert_same_results(before, graph, _feeds(before, sizes), atol=1e-4, rtol=1e-4)


def test_fused_weights_follow_the_formula_in_float64():
    graph = read_onnx(_bn_model(seed=3))
    conv = graph.nodes[0]
    consts = {v.name: v.const.astype(np.float64) for v in graph.initializers.values()}
    apply(graph, fuse_conv_bn)
    scale = consts["gamma"] / np.sqrt(consts["var"] + 1e-3)
    weight, bias = conv.inputs[1].const, conv.inputs[2].const
    np.testing.assert_allclose(weight, consts["W"] * scale[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(bias, (consts["B"] - consts["mean"]) * scale + consts["beta"],
                               rtol=1e-6, atol=1e-6)
    assert weight.dtype == np.float32 and bias.dtype == np.float32


# ------------------------------------------------------------------------ refusals
def _refused(model_or_graph, reason):
    graph = model_or_graph if not isinstance(model_or_graph, onnx.ModelProto) else read_onnx(
        model_or_graph)
    before = ops(graph)
    ctx = PassContext()
    assert not fuse_conv_bn(graph, ctx)
    assert ops(graph) == before
    assert any(reason in line and "bn not fused into conv" in line for line in ctx.log), ctx.log
    return graph


def test_training_mode_is_not_fused():
    _refused(_bn_model(bn_attrs={"training_mode": 1}), "training_mode=1")


def test_used_statistics_outputs_block_fusion():
    model = _bn_model(opset=9, bn_outputs=("y", "m", "v"), extra_outputs=("m",))
    _refused(model, "statistics output m is used")


def test_spatial_zero_is_not_fused():
    _refused(_bn_model(opset=7, bn_attrs={"spatial": 0}), "spatial=0")


def test_batchnorm_parameters_must_be_constants():
    model = _bn_model(const_params=False)
    graph = _refused(model, "must be constants")
    feeds = _feeds(graph, [(2, 5)])[0]
    assert set(feeds) == {"x", "gamma", "beta", "mean", "var"}


def test_conv_weight_must_be_constant():
    model = _bn_model()
    weight = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT,
                                                           list(weight.dims)))
    del model.graph.initializer[0]
    _refused(model, "weight and bias must be constants")


def test_conv_output_used_elsewhere_is_not_fused():
    model = _bn_model()
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    _refused(model, "also used by the graph outputs")
    model = _bn_model()
    model.graph.node.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    _refused(model, "also used by relu")


def test_conv_in_an_enclosing_graph_is_not_fused():
    model = _bn_model()
    bn = model.graph.node.pop()
    branch = helper.make_graph([bn], "then", [], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["c"], ["z"])], "else", [], [
        helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    model.graph.node.append(helper.make_node("If", ["flag"], ["out"], then_branch=branch,
                                             else_branch=other))
    model.graph.output[0].name = "out"
    _refused(model, "in an enclosing graph")


def test_non_float_weight_and_mismatched_parameters_are_refused():
    graph = read_onnx(_bn_model())
    conv, bn = graph.nodes
    assert fusion_blocker(conv, bn, graph) is None
    weight = conv.inputs[1]
    weight.const = weight.const.astype(np.int8)
    assert "not floating point" in fusion_blocker(conv, bn, graph)
    weight.const = weight.const.astype(np.float32)
    bn.inputs[1].const = bn.inputs[1].const[:3]
    assert "do not all match the Conv's 6 output channels" in fusion_blocker(conv, bn, graph)


def test_conv_transpose_weight_not_divisible_by_group_is_refused():
    graph = read_onnx(_bn_model(conv="ConvTranspose", group=2))
    conv, bn = graph.nodes
    assert fusion_blocker(conv, bn, graph) is None
    conv.attrs["group"] = 3  # 4 input channels do not split into 3 groups
    assert "does not match its group attribute" in fusion_blocker(conv, bn, graph)
