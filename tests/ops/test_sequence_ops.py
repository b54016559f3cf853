"""Sequence and optional values through kiln engines, against ONNX Runtime (and onnx's
reference evaluator where ORT cannot feed the value, e.g. an empty optional)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from kiln.errors import InputError
from tests.ops._kiln_vs_ort import (
    assert_same,
    compare_with_ort,
    model,
    optional,
    run_kiln,
    run_reference,
    sequence,
    tensor,
)

F = TensorProto.FLOAT
I64 = TensorProto.INT64
SHAPES = [(3,), (2, 5), (4, 1, 3)]


def _scalar(value: int) -> np.ndarray:
    return np.array(value, dtype=np.int64)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("insert_at", [0, 1, -1, 3])
@pytest.mark.parametrize("erase_at", [0, -1, 1])
def test_construct_insert_erase_at_length(shape: tuple[int, ...], insert_at: int,
                                          erase_at: int) -> None:
    rng = np.random.default_rng(len(shape) * 100 + insert_at * 10 + erase_at)
    a, b, c, d = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
    nodes = [
        helper.make_node("SequenceConstruct", ["a", "b", "c"], ["s"]),
        helper.make_node("SequenceInsert", ["s", "d", "pos"], ["s2"]),
        helper.make_node("SequenceErase", ["s2", "epos"], ["s3"]),
        helper.make_node("SequenceAt", ["s3", "at"], ["item"]),
        helper.make_node("SequenceLength", ["s3"], ["n"]),
    ]
    proto = model(nodes, [tensor(n, F, shape) for n in "abcd"]
                  + [tensor(n, I64, []) for n in ("pos", "epos", "at")],
                  [sequence("s3", F), tensor("item", F), tensor("n", I64)])
    for at in (0, -2, 2):
        feeds = {"a": a, "b": b, "c": c, "d": d, "pos": _scalar(insert_at),
                 "epos": _scalar(erase_at), "at": _scalar(at)}
        compare_with_ort(proto, feeds)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize("new_axis", [0, 1])
def test_concat_from_sequence_input(shape: tuple[int, ...], axis: int, new_axis: int) -> None:
    rng = np.random.default_rng(7)
    node = helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=axis, new_axis=new_axis)
    proto = model([node], [sequence("s", F, shape)], [tensor("y", F)])
    items = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    compare_with_ort(proto, {"s": items})


@pytest.mark.parametrize(("split", "keepdims"), [
    (None, 1), (None, 0), (np.array(2, np.int64), 1), (np.array([1, 3, 1], np.int64), 1)])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_split_to_sequence(split: np.ndarray | None, keepdims: int, axis: int) -> None:
    x = np.random.default_rng(axis + 5).standard_normal((5, 5, 2)).astype(np.float32)
    if split is not None and split.ndim == 1 and axis == -1:
        split = np.array([1, 1], np.int64)
    inputs = ["x", "split"] if split is not None else ["x"]
    node = helper.make_node("SplitToSequence", inputs, ["s"], axis=axis, keepdims=keepdims)
    declared = [tensor("x", F, (5, 5, 2))]
    if split is not None:
        declared.append(tensor("split", I64, list(split.shape)))
    proto = model([node], declared, [sequence("s", F)])
    feeds = {"x": x} if split is None else {"x": x, "split": split}
    compare_with_ort(proto, feeds)


def test_sequence_map_with_sequence_and_tensor_inputs() -> None:
    rng = np.random.default_rng(3)
    body = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "w"], ["p"]),
         helper.make_node("Shape", ["sum"], ["shape"])],
        "body", [tensor("a", F, None), tensor("b", F, None), tensor("w", F, None)],
        [tensor("p", F, None), tensor("shape", I64, None)])
    node = helper.make_node("SequenceMap", ["x", "y", "w"], ["products", "shapes"], body=body)
    proto = model([node], [sequence("x", F), sequence("y", F), tensor("w", F, [1])],
                  [sequence("products", F), sequence("shapes", I64)])
    lengths = [3, 1, 6, 2]
    xs = [rng.standard_normal((n,)).astype(np.float32) for n in lengths]
    ys = [rng.standard_normal((n,)).astype(np.float32) for n in lengths]
    w = rng.standard_normal((1,)).astype(np.float32)
    got = run_kiln(proto, {"x": xs, "y": ys, "w": w})
    assert_same(got[0], [x * w for x in xs])
    assert_same(got[1], [np.array([n], np.int64) for n in lengths])


def test_loop_accumulates_a_sequence() -> None:
    """A Loop whose state is a sequence, built from the iteration number and an outer value."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Cast", ["i"], ["fi"], to=F),
         helper.make_node("Mul", ["x", "fi"], ["scaled"]),
         helper.make_node("SequenceInsert", ["seq_in", "scaled"], ["seq_out"])],
        "body", [tensor("i", I64, []), tensor("cond_in", TensorProto.BOOL, []),
                 sequence("seq_in", F)],
        [tensor("cond_out", TensorProto.BOOL, []), sequence("seq_out", F)])
    nodes = [helper.make_node("SequenceEmpty", [], ["empty"], dtype=F),
             helper.make_node("Loop", ["trips", "", "empty"], ["out"], body=body)]
    proto = model(nodes, [tensor("trips", I64, []), tensor("x", F, (2, 3))],
                  [sequence("out", F)])
    x = np.random.default_rng(11).standard_normal((2, 3)).astype(np.float32)
    for trips in (0, 1, 4):
        compare_with_ort(proto, {"trips": _scalar(trips), "x": x})


def _if_returning(then_nodes: list, else_nodes: list, out_type) -> object:
    then_graph = helper.make_graph(then_nodes, "then", [], [helper.make_value_info("t", out_type)])
    else_graph = helper.make_graph(else_nodes, "else", [], [helper.make_value_info("e", out_type)])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)
    return model([node], [tensor("cond", TensorProto.BOOL, []), tensor("x", F, (4,))],
                 [helper.make_value_info("y", out_type)], opset=18)


def test_if_returns_sequence_or_empty_optional() -> None:
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(F, None))
    opt_type = helper.make_optional_type_proto(seq_type)
    proto = _if_returning(
        [helper.make_node("SequenceConstruct", ["x", "x"], ["s"]),
         helper.make_node("Optional", ["s"], ["t"])],
        [helper.make_node("Optional", [], ["e"], type=seq_type)], opt_type)
    x = np.random.default_rng(1).standard_normal(4).astype(np.float32)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "x": x}
        # onnx's reference evaluator wraps a present optional in a list, so the expectation
        # is written out: the sequence itself, or None for the empty optional
        assert_same(run_kiln(proto, feeds)[0], [x, x] if cond else None)


@pytest.mark.parametrize("given", ["none", "tensor", "sequence"])
def test_optional_has_and_get_element(given: str) -> None:
    rng = np.random.default_rng(5)
    inner = (helper.make_tensor_type_proto(F, None) if given != "sequence" else
             helper.make_sequence_type_proto(helper.make_tensor_type_proto(F, None)))
    nodes = [helper.make_node("OptionalHasElement", ["o"], ["has"]),
             helper.make_node("If", ["has"], ["y"],
                              then_branch=helper.make_graph(
                                  [helper.make_node("OptionalGetElement", ["o"], ["t"])],
                                  "then", [], [helper.make_value_info("t", inner)]),
                              else_branch=helper.make_graph(
                                  [helper.make_node("Constant", [], ["e0"],
                                                    value=helper.make_tensor("c", F, [1], [0])),
                                   *([helper.make_node("SequenceConstruct", ["e0"], ["e"])]
                                     if given == "sequence" else
                                     [helper.make_node("Identity", ["e0"], ["e"])])],
                                  "else", [], [helper.make_value_info("e", inner)]))]
    proto = model(nodes, [optional("o", inner)],
                  [tensor("has", TensorProto.BOOL, []), helper.make_value_info("y", inner)])
    value = {"none": None, "tensor": rng.standard_normal((2, 3)).astype(np.float32),
             "sequence": [rng.standard_normal(k).astype(np.float32) for k in (1, 4)]}[given]
    got = run_kiln(proto, {"o": value})
    want = run_reference(proto, {"o": value})
    assert_same(got[0], want[0])
    assert_same(got[1], want[1])


def test_optional_get_element_of_empty_fails_naming_the_layer() -> None:
    inner = helper.make_tensor_type_proto(F, None)
    proto = model([helper.make_node("OptionalGetElement", ["o"], ["y"], name="unwrap")],
                  [optional("o", inner)], [tensor("y", F)], opset=18)
    with pytest.raises(RuntimeError, match=r"unwrap.*empty optional"):
        run_kiln(proto, {"o": None})


def test_sequence_at_out_of_range_names_the_range() -> None:
    proto = model([helper.make_node("SequenceAt", ["s", "i"], ["y"], name="pick")],
                  [sequence("s", F, (2,)), tensor("i", I64, [])], [tensor("y", F)])
    items = [np.zeros(2, np.float32), np.ones(2, np.float32)]
    with pytest.raises(RuntimeError, match=r"pick.*position 2 is out of range.*-2 to 1"):
        run_kiln(proto, {"s": items, "i": _scalar(2)})


@pytest.mark.parametrize(("value", "message"), [
    (np.zeros(3, np.float32), "is a sequence; pass a Python list"),
    ([np.zeros(3, np.float64)], r"'s'\[0\] has dtype fp64; the engine takes fp32"),
    ([np.zeros(3, np.float32), np.zeros((3, 1), np.float32)], r"'s'\[1\] has rank 2"),
    ([np.zeros(3, np.float32), "text"], r"'s'\[1\] is a str"),
])
def test_bad_sequence_inputs_are_refused(value: object, message: str) -> None:
    proto = model([helper.make_node("SequenceLength", ["s"], ["n"])],
                  [sequence("s", F, ("N",))], [tensor("n", I64)])
    with pytest.raises(InputError, match=message):
        run_kiln(proto, {"s": value})


def test_bad_optional_input_is_refused() -> None:
    inner = helper.make_tensor_type_proto(F, (2,))
    proto = model([helper.make_node("OptionalHasElement", ["o"], ["has"])],
                  [optional("o", inner)], [tensor("has", TensorProto.BOOL)], opset=18)
    with pytest.raises(InputError, match="has dtype int64; the engine takes fp32"):
        run_kiln(proto, {"o": np.zeros(2, np.int64)})
    assert bool(run_kiln(proto, {"o": None})[0]) is False
