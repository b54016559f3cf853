"""String operators through kiln engines, against ONNX Runtime on seeded random strings."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.ops._kiln_vs_ort import compare_with_ort, model, run_kiln, tensor

S = TensorProto.STRING
WORDS = ["monday", "Tuesday", "wed", "", "a b", "  x  y ", "Ünïcode", "x,y,,z", "tab\tsep",
         "abc123", "user@example.com", "42"]


def _strings(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.choice(np.array(WORDS, dtype=object), size=shape)


@pytest.mark.parametrize(("a_shape", "b_shape"), [((5,), (5,)), ((2, 3), (3,)), ((), (4,)),
                                                  ((3, 1), (1, 4))])
def test_string_concat_broadcasts(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(a_shape) + 3 * len(b_shape))
    proto = model([helper.make_node("StringConcat", ["a", "b"], ["y"])],
                  [tensor("a", S, a_shape), tensor("b", S, b_shape)], [tensor("y", S)])
    compare_with_ort(proto, {"a": _strings(rng, a_shape), "b": _strings(rng, b_shape)})


@pytest.mark.parametrize("delimiter", [None, "", ",", " ", "y"])
@pytest.mark.parametrize("maxsplit", [None, 1])
@pytest.mark.parametrize("shape", [(6,), (2, 3), (0,)])
def test_string_split(delimiter: str | None, maxsplit: int | None,
                      shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    attrs = {k: v for k, v in (("delimiter", delimiter), ("maxsplit", maxsplit)) if v is not None}
    proto = model([helper.make_node("StringSplit", ["x"], ["y", "n"], **attrs)],
                  [tensor("x", S, shape)], [tensor("y", S), tensor("n", TensorProto.INT64)])
    compare_with_ort(proto, {"x": _strings(rng, shape)})


@pytest.mark.parametrize("pattern", [r"[a-z]+", r".*@example\.com", r"\d+", r"(?i)monday|wed",
                                     r""])
def test_regex_full_match(pattern: str) -> None:
    rng = np.random.default_rng(9)
    proto = model([helper.make_node("RegexFullMatch", ["x"], ["y"], pattern=pattern)],
                  [tensor("x", S, (3, 4))], [tensor("y", TensorProto.BOOL)])
    compare_with_ort(proto, {"x": _strings(rng, (3, 4))})


def test_regex_full_match_bad_pattern_is_reported() -> None:
    proto = model([helper.make_node("RegexFullMatch", ["x"], ["y"], pattern="(", name="re")],
                  [tensor("x", S, (1,))], [tensor("y", TensorProto.BOOL)])
    with pytest.raises(RuntimeError, match=r"re.*invalid pattern '\('"):
        run_kiln(proto, {"x": np.array(["a"], dtype=object)})


@pytest.mark.parametrize("case", ["NONE", "LOWER", "UPPER"])
@pytest.mark.parametrize("sensitive", [0, 1])
@pytest.mark.parametrize("shape", [(8,), (1, 8)])
def test_string_normalizer(case: str, sensitive: int, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sensitive)
    words = rng.choice(np.array(["monday", "Monday", "tuesday", "WED", "wed", "x"], dtype=object),
                       size=shape)
    # locale C: ORT's default en_US.UTF-8 is not installed on every machine
    node = helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action=case,
                            is_case_sensitive=sensitive, stopwords=["monday", "wed"], locale="C")
    proto = model([node], [tensor("x", S, shape)], [tensor("y", S)])
    compare_with_ort(proto, {"x": words})


def test_string_normalizer_all_stopwords_gives_one_empty_string() -> None:
    node = helper.make_node("StringNormalizer", ["x"], ["y"], stopwords=["a"], locale="C")
    proto = model([node], [tensor("x", S, (1, 3))], [tensor("y", S)])
    compare_with_ort(proto, {"x": np.array([["a", "a", "A"]], dtype=object)})


@pytest.mark.parametrize("shape", [(7,), (3, 4)])
def test_equal_on_strings(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(4)
    proto = model([helper.make_node("Equal", ["a", "b"], ["y"])],
                  [tensor("a", S, shape), tensor("b", S, shape[-1:])],
                  [tensor("y", TensorProto.BOOL)])
    small = np.array(["x", "y", ""], dtype=object)
    compare_with_ort(proto, {"a": rng.choice(small, size=shape),
                             "b": rng.choice(small, size=shape[-1:])})


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@pytest.mark.parametrize(("min_n", "max_n", "skip"), [(1, 1, 0), (2, 2, 0), (1, 2, 3), (2, 3, 1)])
@pytest.mark.parametrize("strings", [False, True])
def test_tfidf_vectorizer(mode: str, min_n: int, max_n: int, skip: int, strings: bool) -> None:
    rng = np.random.default_rng(min_n * 10 + max_n + skip)
    vocabulary = 6
    # pool: 4 unigrams, 5 bigrams, 3 trigrams over tokens 0..5
    bigrams = rng.choice(vocabulary ** 2, 5, replace=False)
    trigrams = rng.choice(vocabulary ** 3, 3, replace=False)
    pool = np.concatenate([rng.choice(vocabulary, 4, replace=False),
                           np.stack(np.unravel_index(bigrams, (vocabulary,) * 2), 1).ravel(),
                           np.stack(np.unravel_index(trigrams, (vocabulary,) * 3), 1).ravel()])
    counts = [0, 4, 14]
    indexes = rng.permutation(12)
    weights = rng.uniform(0.5, 2.0, 12).round(3).tolist()
    x = rng.integers(0, vocabulary, (3, 12))
    attrs = dict(mode=mode, min_gram_length=min_n, max_gram_length=max_n, max_skip_count=skip,
                 ngram_counts=counts, ngram_indexes=indexes.tolist(), weights=weights)
    if strings:
        attrs["pool_strings"] = [f"t{v}" for v in pool]
        x, elem = np.vectorize(lambda v: f"t{v}", otypes=[object])(x), S
    else:
        attrs["pool_int64s"] = pool.tolist()
        x, elem = x.astype(np.int32), TensorProto.INT32
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], **attrs)
    for batch in (x, x[0]):  # [B, C] and [C]
        proto = model([node], [tensor("x", elem, batch.shape)], [tensor("y", TensorProto.FLOAT)])
        compare_with_ort(proto, {"x": batch})


def test_tfidf_vectorizer_refuses_a_duplicate_ngram() -> None:
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], name="tfidf", mode="TF",
                            min_gram_length=1, max_gram_length=1, max_skip_count=0,
                            ngram_counts=[0], ngram_indexes=[0, 1], pool_int64s=[3, 3])
    proto = model([node], [tensor("x", TensorProto.INT64, (4,))], [tensor("y", TensorProto.FLOAT)])
    with pytest.raises(RuntimeError, match=r"tfidf.*n-gram \(3,\) appears twice"):
        run_kiln(proto, {"x": np.array([3, 1, 3, 2], np.int64)})


NUMBERS = {
    TensorProto.FLOAT: np.array([0.1, -2.5, 1e10, 1.5e-7, np.nan, np.inf, -np.inf, 3.0,
                                 123456789.0, 0.0, -0.0], np.float32),
    TensorProto.DOUBLE: np.array([0.1, -2.5, 1e300, 1.5e-7, np.nan, 3.0, 1 / 3], np.float64),
    TensorProto.FLOAT16: np.array([0.1, 65504, np.nan, -1.5], np.float16),
    TensorProto.INT32: np.array([0, -7, 2**31 - 1], np.int32),
    TensorProto.INT64: np.array([0, -7, 2**40], np.int64),
    TensorProto.UINT8: np.array([0, 255], np.uint8),
    TensorProto.BOOL: np.array([True, False]),
}


@pytest.mark.parametrize("elem", list(NUMBERS), ids=TensorProto.DataType.Name)
def test_cast_to_string_and_back(elem: int) -> None:
    values = NUMBERS[elem]
    random = np.random.default_rng(elem).standard_normal(5) * 1000
    if values.dtype.kind == "f":
        values = np.concatenate([values, random.astype(values.dtype)])
    nodes = [helper.make_node("Cast", ["x"], ["s"], to=S),
             helper.make_node("Cast", ["s"], ["y"], to=elem)]
    proto = model(nodes, [tensor("x", elem, values.shape)], [tensor("s", S), tensor("y", elem)])
    compare_with_ort(proto, {"x": values})
