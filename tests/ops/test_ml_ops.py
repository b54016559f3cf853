"""ai.onnx.ml operators through kiln engines, against ONNX Runtime.

Tree ensembles come from scikit-learn forests trained on seeded random data and written
out in each ONNX layout, so the trees have realistic depth and thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.ops._kiln_vs_ort import assert_same, compare_with_ort, model, run_kiln, run_ort, tensor

F = TensorProto.FLOAT
I64 = TensorProto.INT64
S = TensorProto.STRING
ML3 = [("ai.onnx.ml", 3)]
ML4 = [("ai.onnx.ml", 4)]
ML5 = [("ai.onnx.ml", 5)]


def _ml_node(op: str, inputs: list[str], outputs: list[str], **attrs: Any):
    return helper.make_node(op, inputs, outputs, domain="ai.onnx.ml", **attrs)


# ---------------------------------------------------------------- simple transforms

@pytest.mark.parametrize("shape", [(5,), (3, 4)])
def test_label_encoder_string_to_int_and_back(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    words = np.array(["a", "b", "c", "zz", ""], dtype=object)
    x = rng.choice(words, size=shape)
    to_int = _ml_node("LabelEncoder", ["x"], ["y"], keys_strings=["a", "b", "c"],
                      values_int64s=[7, -3, 11], default_int64=42)
    compare_with_ort(model([to_int], [tensor("x", S, shape)], [tensor("y", I64)], domains=ML3),
                     {"x": x})
    to_str = _ml_node("LabelEncoder", ["x"], ["y"], keys_int64s=[0, 1, 2],
                      values_strings=["zero", "one", "two"])
    ints = rng.integers(-1, 4, size=shape).astype(np.int64)
    compare_with_ort(model([to_str], [tensor("x", I64, shape)], [tensor("y", S)], domains=ML3),
                     {"x": ints})


@pytest.mark.parametrize("domains", [ML3, ML4])  # opset 4 matches a NaN key, older ones not
def test_label_encoder_float_keys_with_nan(domains: list) -> None:
    node = _ml_node("LabelEncoder", ["x"], ["y"], keys_floats=[0.5, float("nan"), -2.0],
                    values_floats=[1.0, 2.0, 3.0], default_float=-1.0)
    x = np.array([0.5, np.nan, -2.0, 7.0, 0.5], np.float32)
    compare_with_ort(model([node], [tensor("x", F, (5,))], [tensor("y", F)], domains=domains),
                     {"x": x})


def test_label_encoder_tensor_attributes() -> None:
    node = _ml_node("LabelEncoder", ["x"], ["y"],
                    keys_tensor=numpy_helper.from_array(np.array([1, 5, 9], np.int64), "k"),
                    values_tensor=numpy_helper.from_array(np.array([0.5, 1.5, 2.5]), "v"),
                    default_tensor=numpy_helper.from_array(np.array([-9.0]), "d"))
    x = np.random.default_rng(2).integers(0, 10, (4, 3)).astype(np.int64)
    compare_with_ort(model([node], [tensor("x", I64, (4, 3))],
                           [tensor("y", TensorProto.DOUBLE)], domains=ML4), {"x": x})


@pytest.mark.parametrize("threshold", [0.0, 0.25])
def test_binarizer(threshold: float) -> None:
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    x[0, :2] = threshold  # on the threshold: not above it
    node = _ml_node("Binarizer", ["x"], ["y"], threshold=threshold)
    compare_with_ort(model([node], [tensor("x", F, (4, 6))], [tensor("y", F)], domains=ML3),
                     {"x": x})


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 7)])
def test_array_feature_extractor(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    indices = np.array([6, 0, 3, 3], np.int64)
    node = _ml_node("ArrayFeatureExtractor", ["x", "i"], ["y"])
    compare_with_ort(model([node], [tensor("x", F, shape), tensor("i", I64, (4,))],
                           [tensor("y", F)], domains=ML3), {"x": x, "i": indices})


def test_array_feature_extractor_out_of_range_index_is_reported() -> None:
    node = _ml_node("ArrayFeatureExtractor", ["x", "i"], ["y"], name="pick")
    proto = model([node], [tensor("x", F, (2, 3)), tensor("i", I64, (1,))], [tensor("y", F)],
                  domains=ML3)
    with pytest.raises(RuntimeError, match=r"pick.*indices \[3\] are out of range for 3"):
        run_kiln(proto, {"x": np.zeros((2, 3), np.float32), "i": np.array([3], np.int64)})


def test_scaler_and_normalizer() -> None:
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    nodes = [_ml_node("Scaler", ["x"], ["s"], offset=[0.5, -1.0, 2.0], scale=[2.0, 0.5, -1.5])]
    nodes += [_ml_node("Normalizer", ["s"], [f"n_{norm}"], norm=norm)
              for norm in ("MAX", "L1", "L2")]
    proto = model(nodes, [tensor("x", F, (5, 3))],
                  [tensor("s", F)] + [tensor(f"n_{n}", F) for n in ("MAX", "L1", "L2")],
                  domains=ML3)
    compare_with_ort(proto, {"x": x})


@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT"])
def test_linear_regressor(post: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    node = _ml_node("LinearRegressor", ["x"], ["y"], targets=2, post_transform=post,
                    coefficients=rng.standard_normal(8).tolist(), intercepts=[0.3, -0.2])
    if post == "PROBIT":  # probit maps probabilities: feed scores inside (0, 1)
        node = _ml_node("LinearRegressor", ["x"], ["y"], targets=2, post_transform=post,
                        coefficients=(rng.uniform(0, 0.05, 8)).tolist(), intercepts=[0.3, 0.4])
        x = np.abs(x)
    compare_with_ort(model([node], [tensor("x", F, (6, 4))], [tensor("y", F)], domains=ML3),
                     {"x": x}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX"])
@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_linear_classifier(classes: int, post: str, labels: str) -> None:
    rng = np.random.default_rng(classes)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    rows = 1 if classes == 2 else classes  # binary models store one row of coefficients
    label_attr = ({"classlabels_ints": list(range(10, 10 + classes))} if labels == "ints" else
                  {"classlabels_strings": [f"c{i}" for i in range(classes)]})
    node = _ml_node("LinearClassifier", ["x"], ["label", "scores"], post_transform=post,
                    coefficients=rng.standard_normal(3 * rows).tolist(),
                    intercepts=rng.standard_normal(rows).tolist(), **label_attr)
    label_type = I64 if labels == "ints" else S
    proto = model([node], [tensor("x", F, (8, 3))],
                  [tensor("label", label_type), tensor("scores", F)], domains=ML3)
    compare_with_ort(proto, {"x": x}, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- tree ensembles

def _forest(kind: str, seed: int, n_targets: int = 1, classes: int = 3):
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 5)).astype(np.float32)
    if kind == "regressor":
        y = x[:, :n_targets] * 2 + np.sin(x[:, 1:2] * 3)
        fitted = RandomForestRegressor(n_estimators=4, max_depth=5, random_state=seed)
        fitted.fit(x, y if n_targets > 1 else y[:, 0])
    else:
        y = (np.digitize(x[:, 0] + x[:, 2] * 0.5, np.linspace(-1, 1, classes - 1)))
        fitted = RandomForestClassifier(n_estimators=4, max_depth=5, random_state=seed)
        fitted.fit(x, y)
    return fitted, rng.standard_normal((40, 5)).astype(np.float32)


def _node_layout(fitted, weight_of) -> tuple[dict[str, list], dict[str, list]]:
    """The TreeEnsembleRegressor/Classifier node attributes and (tree, node, id, weight) leaves."""
    nodes: dict[str, list] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
        "nodes_truenodeids", "nodes_falsenodeids")}
    leaves: dict[str, list] = {k: [] for k in ("treeids", "nodeids", "ids", "weights")}
    for t, estimator in enumerate(fitted.estimators_):
        tree = estimator.tree_
        for i in range(tree.node_count):
            leaf = tree.children_left[i] == -1
            nodes["nodes_treeids"].append(t)
            nodes["nodes_nodeids"].append(i)
            nodes["nodes_featureids"].append(0 if leaf else int(tree.feature[i]))
            nodes["nodes_values"].append(0.0 if leaf else float(tree.threshold[i]))
            nodes["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            nodes["nodes_truenodeids"].append(0 if leaf else int(tree.children_left[i]))
            nodes["nodes_falsenodeids"].append(0 if leaf else int(tree.children_right[i]))
            if leaf:
                for target, weight in weight_of(tree.value[i]):
                    leaves["treeids"].append(t)
                    leaves["nodeids"].append(i)
                    leaves["ids"].append(target)
                    leaves["weights"].append(weight)
    return nodes, leaves


@pytest.mark.parametrize("n_targets", [1, 2])
@pytest.mark.parametrize("aggregate", ["SUM", "AVERAGE", "MIN", "MAX"])
def test_tree_ensemble_regressor(n_targets: int, aggregate: str) -> None:
    fitted, x = _forest("regressor", 10 + n_targets, n_targets)
    nodes, leaves = _node_layout(fitted, lambda v: [(k, float(v[k][0])) for k in range(len(v))])
    node = _ml_node("TreeEnsembleRegressor", ["x"], ["y"], n_targets=n_targets,
                    aggregate_function=aggregate, base_values=[0.5] * n_targets,
                    target_treeids=leaves["treeids"], target_nodeids=leaves["nodeids"],
                    target_ids=leaves["ids"], target_weights=leaves["weights"], **nodes)
    proto = model([node], [tensor("x", F, (None, 5))], [tensor("y", F)], domains=ML3)
    got = compare_with_ort(proto, {"x": x}, rtol=1e-5, atol=1e-5)
    if aggregate == "AVERAGE":  # also what scikit-learn predicts
        want = fitted.predict(x).reshape(len(x), n_targets) + 0.5
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"])
@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_tree_ensemble_classifier(classes: int, post: str, labels: str) -> None:
    fitted, x = _forest("classifier", classes, classes=classes)
    n_trees = len(fitted.estimators_)

    def weights(value: np.ndarray) -> list[tuple[int, float]]:
        share = value[0] / value[0].sum() / n_trees
        if classes == 2:  # binary models score the positive class only
            return [(1, float(share[1]))]
        return [(k, float(share[k])) for k in range(classes)]

    nodes, leaves = _node_layout(fitted, weights)
    label_attr = ({"classlabels_int64s": list(range(classes))} if labels == "ints" else
                  {"classlabels_strings": [f"class{i}" for i in range(classes)]})
    node = _ml_node("TreeEnsembleClassifier", ["x"], ["label", "scores"], post_transform=post,
                    class_treeids=leaves["treeids"], class_nodeids=leaves["nodeids"],
                    class_ids=leaves["ids"], class_weights=leaves["weights"], **label_attr,
                    **nodes)
    proto = model([node], [tensor("x", F, (None, 5))],
                  [tensor("label", I64 if labels == "ints" else S), tensor("scores", F)],
                  domains=ML3)
    got, want = run_kiln(proto, {"x": x}), run_ort(proto, {"x": x})
    assert_same(got[0], want[0])
    # on a row of zeros ORT's SOFTMAX_ZERO divides 0 by 0; kiln, as onnx's reference, gives 0.5
    zero_rows = np.isnan(want[1]).any(axis=1)
    assert (post == "SOFTMAX_ZERO") or not zero_rows.any()
    assert (got[1][zero_rows] == 0.5).all()
    assert_same(got[1][~zero_rows], want[1][~zero_rows], rtol=1e-5, atol=1e-5)
    if post == "NONE" and classes > 2:  # the probabilities scikit-learn predicts
        np.testing.assert_allclose(got[1], fitted.predict_proba(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("class_id", [0, 1])
@pytest.mark.parametrize("first_weight", [0.3, -0.3])  # all weights positive, or mixed signs
@pytest.mark.parametrize("post", ["NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO"])
def test_tree_ensemble_classifier_binary_one_scored_class(class_id: int, first_weight: float,
                                                          post: str) -> None:
    """Two labels, trees that score only one of them: ONNX Runtime's reading of it."""
    node = _ml_node("TreeEnsembleClassifier", ["x"], ["label", "scores"], post_transform=post,
                    nodes_treeids=[0, 0, 0, 1], nodes_nodeids=[0, 1, 2, 0],
                    nodes_featureids=[0, 0, 0, 0], nodes_values=[0.0, 0.0, 0.0, 0.0],
                    nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF", "LEAF"],
                    nodes_truenodeids=[1, 0, 0, 0], nodes_falsenodeids=[2, 0, 0, 0],
                    class_treeids=[0, 0, 1], class_nodeids=[1, 2, 0], class_ids=[class_id] * 3,
                    class_weights=[first_weight, 0.9, 0.25], classlabels_int64s=[5, 7])
    proto = model([node], [tensor("x", F, (None, 1))],
                  [tensor("label", I64), tensor("scores", F)], domains=ML3)
    x = np.random.default_rng(0).uniform(-2, 2, (12, 1)).astype(np.float32)
    compare_with_ort(proto, {"x": x})


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_tree_ensemble_opset5_modes_missing_values_and_sets(aggregate: int, seed: int) -> None:
    """The opset-5 layout, with random comparison modes, NaN routing and one set-membership
    node per tree, on inputs holding NaNs and exact threshold values."""
    fitted, x = _forest("regressor", 20 + seed, n_targets=2)
    rng = np.random.default_rng(seed)
    features, splits, modes, true_ids, false_ids, true_leaf, false_leaf = ([] for _ in range(7))
    missing, roots, leaf_targets, leaf_weights, members = [], [], [], [], []
    for estimator in fitted.estimators_:
        tree = estimator.tree_
        branch = [i for i in range(tree.node_count) if tree.children_left[i] != -1]
        leaf = [i for i in range(tree.node_count) if tree.children_left[i] == -1]
        branch_at = {n: len(features) + k for k, n in enumerate(branch)}
        leaf_at = {n: len(leaf_targets) + k for k, n in enumerate(leaf)}
        roots.append(branch_at[0])
        member_node = branch[-1]
        for n in branch:
            features.append(int(tree.feature[n]))
            if n == member_node:
                modes.append(6)
                splits.append(np.nan)
                members.extend([0.0, float(rng.integers(-2, 3)), 1.0, np.nan])  # ORT: ints only
            else:
                modes.append(int(rng.integers(0, 6)))
                splits.append(float(tree.threshold[n]))
            missing.append(int(rng.integers(0, 2)))
            for child, ids, flags in ((tree.children_left[n], true_ids, true_leaf),
                                      (tree.children_right[n], false_ids, false_leaf)):
                flags.append(int(child in leaf_at))
                ids.append(leaf_at[child] if child in leaf_at else branch_at[child])
        for n in leaf:
            leaf_targets.append(int(rng.integers(0, 2)))
            leaf_weights.append(float(tree.value[n][0][0]))
    node = _ml_node(
        "TreeEnsemble", ["x"], ["y"], n_targets=2, aggregate_function=aggregate,
        post_transform=0, tree_roots=roots, nodes_featureids=features,
        nodes_modes=numpy_helper.from_array(np.array(modes, np.uint8), "modes"),
        nodes_splits=numpy_helper.from_array(np.array(splits, np.float32), "splits"),
        nodes_truenodeids=true_ids, nodes_falsenodeids=false_ids,
        nodes_trueleafs=true_leaf, nodes_falseleafs=false_leaf,
        nodes_missing_value_tracks_true=missing, leaf_targetids=leaf_targets,
        leaf_weights=numpy_helper.from_array(np.array(leaf_weights, np.float32), "weights"),
        membership_values=numpy_helper.from_array(np.array(members, np.float32), "members"))
    proto = model([node], [tensor("x", F, (None, 5))], [tensor("y", F)], domains=ML5)
    x = x.copy()
    x[::3] = np.round(x[::3])  # whole numbers, which the membership sets hold
    x[rng.random(x.shape) < 0.1] = np.nan
    x[3, features[0]] = splits[0] if not np.isnan(splits[0]) else 0.0  # on a threshold
    compare_with_ort(proto, {"x": x}, rtol=1e-5, atol=1e-5)


def test_tree_ensemble_too_few_features_is_reported() -> None:
    node = _ml_node("TreeEnsembleRegressor", ["x"], ["y"], name="forest", n_targets=1,
                    nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[4, 0, 0],
                    nodes_values=[0.0, 0.0, 0.0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
                    nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
                    target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0],
                    target_weights=[1.0, 2.0])
    proto = model([node], [tensor("x", F, (None, 2))], [tensor("y", F)], domains=ML3)
    with pytest.raises(RuntimeError, match=r"forest.*reads feature 4, but the input has 2"):
        run_kiln(proto, {"x": np.zeros((3, 2), np.float32)})
