"""The reader refuses files it cannot use with one clear message, before any work."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kiln.build import BuilderConfig, build_engine
from kiln.demo import model_path as demo_model_path
from kiln.errors import KilnError, UnsupportedModelError
from kiln.onnx import read_onnx
from tests import shared_models


@pytest.mark.parametrize("fraction", [0.0005, 0.01, 0.25, 0.5, 0.9, 0.999])
def test_truncated_model(tmp_path, fraction):
    data = demo_model_path().read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[:max(1, int(len(data) * fraction))])
    with pytest.raises(KilnError, match=r"not a readable ONNX model \(truncated or not ONNX"):
        read_onnx(path)


@pytest.mark.parametrize("content", [
    b"hello, this is text and not a model\n" * 10,
    np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes(),
    b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
])
def test_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(KilnError, match=r"model\.onnx is not"):
        read_onnx(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(KilnError, match=r"empty \(0 bytes\)"):
        read_onnx(path)


def test_folder(tmp_path):
    with pytest.raises(KilnError, match="is a folder, not an ONNX file"):
        read_onnx(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(KilnError, match="model file not found"):
        read_onnx(tmp_path / "nope.onnx")


def test_garbage_bytes_in_memory():
    with pytest.raises(KilnError, match="<bytes> is not a readable ONNX model"):
        read_onnx(b"\x08\x07\x12\xff\xff\xff")


@pytest.fixture
def khmersm_alone(tmp_path):
    """khmersm's model.onnx copied without its model.onnx.data."""
    source = shared_models.model_path("khmersm")
    shutil.copy(source, tmp_path / "model.onnx")
    return source, tmp_path / "model.onnx"


def test_missing_external_data_file(khmersm_alone):
    _, path = khmersm_alone
    with pytest.raises(KilnError) as info:
        read_onnx(path)
    text = str(info.value)
    assert "model.onnx.data" in text and "not in" in text and str(path.parent) in text
    assert "beside the .onnx file" in text


def test_truncated_external_data_file(khmersm_alone):
    source, path = khmersm_alone
    data = (source.parent / "model.onnx.data").read_bytes()
    (path.parent / "model.onnx.data").write_bytes(data[:len(data) // 3])
    with pytest.raises(KilnError, match="external data that could not be read"):
        read_onnx(path)


def test_external_data_model_given_in_memory(khmersm_alone):
    source, _ = khmersm_alone
    unloaded = onnx.load(str(source), load_external_data=False)
    for model in (unloaded, source.read_bytes()):
        with pytest.raises(KilnError, match=r"model\.onnx\.data, which kiln cannot find"):
            read_onnx(model)
    assert read_onnx(onnx.load(str(source))).inputs  # loaded with its data, it reads


def _unsupported_model() -> onnx.ModelProto:
    """Three op types kiln lacks (two custom, one in the ONNX domain), one in an If branch."""
    then_branch = helper.make_graph(
        [helper.make_node("Grille", ["c"], ["t"], name="grille_in_branch", domain="com.acme")],
        "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["e"], name="id_in_branch")],
        "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("Grille", ["x"], ["a"], name="grille1", domain="com.acme"),
        helper.make_node("Grille", ["a"], ["b"], name="grille2", domain="com.acme"),
        helper.make_node("Relu", ["b"], ["c"], name="relu"),
        helper.make_node("Smoke", ["c"], ["d"], name="smoke1", domain="com.acme"),
        helper.make_node("HoloConv", ["d", "w", "offset"], ["e"], name="holo"),
        helper.make_node("Greater", ["x", "x"], ["cond_full"], name="gt"),
        helper.make_node("ReduceMin", ["cond_full"], ["cond"], name="any", keepdims=0),
        helper.make_node("If", ["cond"], ["y"], name="branch",
                         then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes, "unsupported",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "offset")],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19),
                                                   helper.make_opsetid("com.acme", 1)])


def test_unsupported_ops_are_listed_in_one_message(tmp_path):
    path = tmp_path / "unsupported.onnx"
    onnx.save(_unsupported_model(), path)
    for source in (path, _unsupported_model()):
        with pytest.raises(UnsupportedModelError) as info:
            build_engine(source, BuilderConfig(device="cpu"))
        text = str(info.value)
        assert "3 operator(s) kiln does not implement" in text
        grille = next(line for line in text.splitlines() if "com.acme::Grille" in line)
        assert all(n in grille for n in ("grille1", "grille2", "grille_in_branch"))
        assert "smoke1" in next(line for line in text.splitlines() if "com.acme::Smoke" in line)
        assert "holo" in next(line for line in text.splitlines() if "ai.onnx::HoloConv" in line)
        assert "relu" not in text and "::If" not in text and "Identity" not in text


def test_many_nodes_of_one_unsupported_op_are_counted():
    nodes = [helper.make_node("Grille", [f"v{i}"], [f"v{i + 1}"], name=f"g{i}",
                              domain="com.acme") for i in range(8)]
    graph = helper.make_graph(nodes, "many",
                              [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("v8", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19),
                                                    helper.make_opsetid("com.acme", 1)])
    with pytest.raises(UnsupportedModelError, match=r"used by g0, g1, g2, g3, g4 and 3 more"):
        read_onnx(model)
