"""Tree ensembles (ai.onnx.ml): TreeEnsemble (opset 5), TreeEnsembleRegressor and
TreeEnsembleClassifier.

All three attribute layouts become one `Forest` of flat arrays; every sample walks every
tree at once, one tree level per step, so the work is a few tensor ops per level rather
than a Python loop per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from kiln.ops import _ml_common as common
from kiln.ops.registry import register

ML = "ai.onnx.ml"
LEQ, LT, GTE, GT, EQ, NEQ, MEMBER = range(7)
_BRANCH_MODES = {"BRANCH_LEQ": LEQ, "BRANCH_LT": LT, "BRANCH_GTE": GTE, "BRANCH_GT": GT,
                 "BRANCH_EQ": EQ, "BRANCH_NEQ": NEQ, "BRANCH_MEMBER": MEMBER}
AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")  # TreeEnsemble numbers them in this order


@dataclass
class Forest:
    """Branch nodes and leaves of every tree. A child >= 0 is a branch node, -1-k leaf k."""

    feature: np.ndarray
    mode: np.ndarray
    split: np.ndarray
    true_child: np.ndarray
    false_child: np.ndarray
    missing_true: np.ndarray
    roots: np.ndarray
    leaf_values: np.ndarray  # [leaves, targets]: each leaf's weight per target
    leaf_hits: np.ndarray  # [leaves, targets]: whether the leaf gives that target a weight
    members: dict[int, np.ndarray] = field(default_factory=dict)  # MEMBER node -> its set

    def leaves(self, x: torch.Tensor) -> torch.Tensor:
        """The leaf each sample reaches in each tree: [N, trees] (walked on the host)."""
        x = x.detach().to("cpu", torch.float64)
        n = x.shape[0]
        feature = torch.from_numpy(self.feature)
        mode = torch.from_numpy(self.mode)
        split = torch.from_numpy(self.split)
        true_child = torch.from_numpy(self.true_child)
        false_child = torch.from_numpy(self.false_child)
        missing_true = torch.from_numpy(self.missing_true)
        rows = torch.arange(n).unsqueeze(1)
        position = torch.from_numpy(self.roots).unsqueeze(0).expand(n, -1).clone()
        for _ in range(len(self.feature) + 1):
            active = position >= 0
            if not bool(active.any()):
                return -1 - position
            node = position.clamp(min=0)
            value = x[rows, feature[node]]
            go_true = _compare(value, split[node], mode[node])
            for member_node, members in self.members.items():
                at = node == member_node
                if bool(at.any()):
                    hit = torch.isin(value, torch.from_numpy(members))
                    go_true = torch.where(at, hit, go_true)
            go_true |= missing_true[node] & torch.isnan(value)
            step = torch.where(go_true, true_child[node], false_child[node])
            position = torch.where(active, step, position)
        raise ValueError("the tree ensemble has a cycle: a path never reaches a leaf")

    def aggregate(self, x: torch.Tensor, how: str, base: Sequence[float] | None) -> torch.Tensor:
        """Per-target scores [N, targets]: leaf weights summed / averaged / min / max."""
        leaves = self.leaves(x).numpy()
        values = self.leaf_values[leaves]  # [N, trees, targets]
        hits = self.leaf_hits[leaves]
        if how in ("SUM", "AVERAGE"):
            scores = values.sum(axis=1)
            if how == "AVERAGE":
                scores = scores / max(len(self.roots), 1)
        elif how in ("MIN", "MAX"):
            pick = np.min if how == "MIN" else np.max
            fill = np.inf if how == "MIN" else -np.inf
            scores = pick(np.where(hits, values, fill), axis=1)
            scores = np.where(hits.any(axis=1), scores, 0.0)
        else:
            raise ValueError(f"aggregate_function must be one of {', '.join(AGGREGATES)}, "
                             f"got {how!r}")
        if base is not None and len(base):
            scores = scores + np.asarray(base, dtype=np.float64).reshape(1, -1)
        return torch.from_numpy(scores)


def _compare(value: torch.Tensor, split: torch.Tensor, mode: torch.Tensor) -> torch.Tensor:
    choices = [value <= split, value < split, value >= split, value > split, value == split,
               value != split]
    result = torch.zeros_like(value, dtype=torch.bool)
    for code, outcome in enumerate(choices):
        result = torch.where(mode == code, outcome, result)
    return result


def _leaf_table(leaf_of: np.ndarray, targets: np.ndarray, weights: np.ndarray, n_leaves: int,
                n_targets: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.zeros((n_leaves, n_targets), dtype=np.float64)
    hits = np.zeros((n_leaves, n_targets), dtype=bool)
    if len(targets) and (targets.min() < 0 or targets.max() >= n_targets):
        raise ValueError(f"target ids must be in 0..{n_targets - 1}, got {targets.tolist()}")
    np.add.at(values, (leaf_of, targets), weights)
    hits[leaf_of, targets] = True
    return values, hits


def _floats(plain: Sequence[float] | None, tensor: Any) -> np.ndarray | None:
    """An attribute given as a list of floats or as a tensor (the *_as_tensor variants)."""
    if tensor is not None:
        return np.asarray(tensor, dtype=np.float64).reshape(-1)
    if plain is not None:
        return np.asarray(plain, dtype=np.float64)
    return None


def _node_layout_forest(attrs: dict[str, Any], leaf_treeids: Sequence[int],
                        leaf_nodeids: Sequence[int], leaf_targets: Sequence[int],
                        leaf_weights: np.ndarray, n_targets: int) -> Forest:
    """A Forest from the TreeEnsembleRegressor/Classifier layout: nodes by (tree, node id)."""
    tree_ids = list(attrs["nodes_treeids"])
    node_ids = list(attrs["nodes_nodeids"])
    modes = list(attrs["nodes_modes"])
    key_of = {(t, nid): i for i, (t, nid) in enumerate(zip(tree_ids, node_ids))}
    leaf_rows = [i for i, m in enumerate(modes) if m == "LEAF"]
    branch_rows = [i for i, m in enumerate(modes) if m != "LEAF"]
    leaf_number = {row: k for k, row in enumerate(leaf_rows)}
    branch_number = {row: k for k, row in enumerate(branch_rows)}

    def child(tree: int, node_id: int) -> int:
        row = key_of.get((tree, node_id))
        if row is None:
            raise ValueError(f"tree {tree} points at node {node_id}, which it does not have")
        return branch_number[row] if row in branch_number else -1 - leaf_number[row]

    for mode in modes:
        if mode != "LEAF" and mode not in _BRANCH_MODES:
            raise ValueError(f"unknown node mode {mode!r}")
    splits = _floats(attrs.get("nodes_values"), attrs.get("nodes_values_as_tensor"))
    missing = list(attrs.get("nodes_missing_value_tracks_true") or [0] * len(modes))
    true_ids, false_ids = attrs["nodes_truenodeids"], attrs["nodes_falsenodeids"]
    roots: dict[int, int] = {}
    for row, tree in enumerate(tree_ids):
        roots.setdefault(tree, row)  # a tree's first node is its root
    root_codes = [branch_number[r] if r in branch_number else -1 - leaf_number[r]
                  for r in roots.values()]
    leaf_of = np.array([leaf_number[key_of[(t, nid)]]
                        for t, nid in zip(leaf_treeids, leaf_nodeids)], dtype=np.int64)
    values, hits = _leaf_table(leaf_of, np.asarray(leaf_targets, dtype=np.int64),
                               leaf_weights, len(leaf_rows), n_targets)
    rows = branch_rows
    return Forest(
        feature=np.array([attrs["nodes_featureids"][r] for r in rows], dtype=np.int64),
        mode=np.array([_BRANCH_MODES[modes[r]] for r in rows], dtype=np.int64),
        split=np.array([splits[r] for r in rows], dtype=np.float64) if splits is not None
        else np.zeros(len(rows)),
        true_child=np.array([child(tree_ids[r], true_ids[r]) for r in rows], dtype=np.int64),
        false_child=np.array([child(tree_ids[r], false_ids[r]) for r in rows], dtype=np.int64),
        missing_true=np.array([bool(missing[r]) for r in rows], dtype=bool),
        roots=np.array(root_codes, dtype=np.int64),
        leaf_values=values, leaf_hits=hits,
    )


def _check_features(x: torch.Tensor, forest: Forest, op: str) -> torch.Tensor:
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2:
        raise ValueError(f"{op} takes [N, features] input, got shape {list(x.shape)}")
    if len(forest.feature) and int(forest.feature.max()) >= x.shape[1]:
        raise ValueError(f"{op} reads feature {int(forest.feature.max())}, but the input has "
                         f"{x.shape[1]} features")
    return x


@register("TreeEnsembleRegressor", 1, domain=ML)
def tree_ensemble_regressor(x: torch.Tensor, *, n_targets: int, target_ids: list[int],
                            target_nodeids: list[int], target_treeids: list[int],
                            target_weights: list[float] | None = None,
                            target_weights_as_tensor: Any = None,
                            aggregate_function: str = "SUM", base_values: Any = None,
                            base_values_as_tensor: Any = None, post_transform: str = "NONE",
                            **nodes: Any) -> torch.Tensor:
    weights = _floats(target_weights, target_weights_as_tensor)
    forest = _node_layout_forest(nodes, target_treeids, target_nodeids, target_ids,
                                 weights, n_targets)
    x = _check_features(x, forest, "TreeEnsembleRegressor")
    base = _floats(base_values, base_values_as_tensor)
    scores = forest.aggregate(x, aggregate_function, base)
    scores = common.post_transform(scores, common.post_transform_name(post_transform))
    return scores.to(torch.float32).to(x.device)


@register("TreeEnsembleClassifier", 1, domain=ML)
def tree_ensemble_classifier(x: torch.Tensor, *, class_ids: list[int], class_nodeids: list[int],
                             class_treeids: list[int], class_weights: list[float] | None = None,
                             class_weights_as_tensor: Any = None,
                             classlabels_int64s: list[int] | None = None,
                             classlabels_strings: list[str] | None = None,
                             base_values: Any = None, base_values_as_tensor: Any = None,
                             post_transform: str = "NONE", device: torch.device | None = None,
                             **nodes: Any) -> tuple[Any, torch.Tensor]:
    labels = common.class_labels(classlabels_int64s, classlabels_strings)
    weights = _floats(class_weights, class_weights_as_tensor)
    n_classes = len(labels)
    forest = _node_layout_forest(nodes, class_treeids, class_nodeids, class_ids, weights,
                                 max(n_classes, max(class_ids, default=0) + 1))
    x = _check_features(x, forest, "TreeEnsembleClassifier")
    base = _floats(base_values, base_values_as_tensor)
    name = common.post_transform_name(post_transform)
    used = sorted(set(class_ids))
    if n_classes == 2 and len(used) == 1:
        score = forest.aggregate(x, "SUM", None)[:, used[0]]
        if base is not None and len(base):
            score = score + float(base[used[0]] if len(base) > used[0] else base[0])
        label, scores = _binary_scores(score, used[0], bool((weights >= 0).all()), name)
        return common.labels_output(labels, label, device), scores.to(torch.float32).to(x.device)
    scores = forest.aggregate(x, "SUM", base)[:, :n_classes]
    label = common.labels_output(labels, scores.argmax(dim=1), device)
    return label, common.post_transform(scores, name).to(torch.float32).to(x.device)


def _binary_scores(score: torch.Tensor, class_id: int, all_positive: bool, name: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class trees that score one class, as ONNX Runtime reads them: the second label
    wins when the score passes 0.5 (all weights >= 0: a probability) or 0 (mixed signs)."""
    label = (score > (0.5 if all_positive else 0.0)).to(torch.int64)
    if class_id == 1:  # the scored class is the second one; the first scores 0
        pair = torch.stack([torch.zeros_like(score), score], dim=1)
        return label, common.post_transform(pair, name)
    p = torch.sigmoid(score) if name == "LOGISTIC" else score
    if all_positive:
        return label, torch.stack([1 - p, p], dim=1)
    if name == "LOGISTIC":
        return label, torch.stack([torch.sigmoid(-score), p], dim=1)
    return label, torch.stack([-score, score], dim=1)


@register("TreeEnsemble", 5, domain=ML)
def tree_ensemble(x: torch.Tensor, *, nodes_featureids: list[int], nodes_splits: Any,
                  nodes_modes: Any, nodes_truenodeids: list[int], nodes_falsenodeids: list[int],
                  nodes_trueleafs: list[int], nodes_falseleafs: list[int],
                  leaf_targetids: list[int], leaf_weights: Any, tree_roots: list[int],
                  n_targets: int, aggregate_function: int = 1, post_transform: int = 0,
                  nodes_missing_value_tracks_true: list[int] | None = None,
                  membership_values: Any = None, nodes_hitrates: Any = None) -> torch.Tensor:
    modes = np.asarray(nodes_modes, dtype=np.int64).reshape(-1)
    if len(modes) and (modes.min() < LEQ or modes.max() > MEMBER):
        raise ValueError(f"nodes_modes must be 0..6, got {sorted(set(modes.tolist()))}")

    def code(index: int, is_leaf: int) -> int:
        return -1 - index if is_leaf else index

    roots = []
    for r in tree_roots:  # a root whose both branches are the same leaf is that leaf
        same = nodes_trueleafs[r] and nodes_falseleafs[r] and (
            nodes_truenodeids[r] == nodes_falsenodeids[r])
        roots.append(-1 - nodes_truenodeids[r] if same else r)
    values, hits = _leaf_table(np.arange(len(leaf_targetids)),
                               np.asarray(leaf_targetids, dtype=np.int64),
                               np.asarray(leaf_weights, dtype=np.float64).reshape(-1),
                               len(leaf_targetids), n_targets)
    forest = Forest(
        feature=np.asarray(nodes_featureids, dtype=np.int64),
        mode=modes,
        split=np.asarray(nodes_splits, dtype=np.float64).reshape(-1),
        true_child=np.array([code(i, leaf) for i, leaf in
                             zip(nodes_truenodeids, nodes_trueleafs)], dtype=np.int64),
        false_child=np.array([code(i, leaf) for i, leaf in
                              zip(nodes_falsenodeids, nodes_falseleafs)], dtype=np.int64),
        missing_true=np.array(nodes_missing_value_tracks_true or [0] * len(modes), dtype=bool),
        roots=np.array(roots, dtype=np.int64),
        leaf_values=values, leaf_hits=hits,
        members=_membership_sets(modes, membership_values),
    )
    x = _check_features(x, forest, "TreeEnsemble")
    if not 0 <= aggregate_function < len(AGGREGATES):
        raise ValueError(f"aggregate_function must be 0..3, got {aggregate_function}")
    scores = forest.aggregate(x, AGGREGATES[aggregate_function], None)
    scores = common.post_transform(scores, common.post_transform_name(post_transform))
    return scores.to(x.device, x.dtype)


def _membership_sets(modes: np.ndarray, membership: Any) -> dict[int, np.ndarray]:
    """MEMBER nodes take their sets, in node order, from one NaN-separated list."""
    member_nodes = np.flatnonzero(modes == MEMBER).tolist()
    if not member_nodes:
        return {}
    if membership is None:
        raise ValueError("TreeEnsemble has set-membership nodes but no membership_values")
    flat = np.asarray(membership, dtype=np.float64).reshape(-1)
    groups = np.split(flat, np.flatnonzero(np.isnan(flat)))
    sets = [g[~np.isnan(g)] for g in groups]
    if len(sets) < len(member_nodes):
        raise ValueError(f"membership_values holds {len(sets)} set(s) for "
                         f"{len(member_nodes)} set-membership node(s)")
    return dict(zip(member_nodes, sets))
