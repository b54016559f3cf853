"""Classic ML operators (ai.onnx.ml): LabelEncoder, Binarizer, ArrayFeatureExtractor, Scaler,
Normalizer, LinearRegressor, LinearClassifier. Tree ensembles are in `ml_trees.py`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kiln.ops import _ml_common as common
from kiln.ops.registry import register
from kiln.ops.tensors import to_numpy, to_torch

ML = "ai.onnx.ml"


def _as_numpy(x: Any) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else to_numpy(x)


def _encode(x: Any, keys: list[Any], values: np.ndarray, default: Any,
            device: torch.device | None, match_nan: bool = False) -> Any:
    """Maps each element of x through keys -> values; unknown keys get `default`.

    With `match_nan` (opset 4), a NaN key matches NaN inputs."""
    array = _as_numpy(x)
    table = dict(zip((_key(k) for k in keys), values.tolist()))
    nan_value = next((v for k, v in zip(keys, values.tolist())
                      if match_nan and _is_nan(k)), default)
    flat = [table.get(_key(v), nan_value if _is_nan(v) else default) for v in array.reshape(-1)]
    out = np.array(flat, dtype=values.dtype).reshape(array.shape)
    return out if out.dtype == object else to_torch(out, device)


def _key(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _is_nan(value: Any) -> bool:
    return isinstance(value, float | np.floating) and bool(np.isnan(value))


@register("LabelEncoder", 1, domain=ML)
def label_encoder_1(x: Any, *, classes_strings: list[str] | None = None,
                    default_int64: int = -1, default_string: str = "_Unused",
                    device: torch.device | None = None) -> Any:
    """Opset 1: strings -> their index in classes_strings, or int64 indices -> strings."""
    classes = list(classes_strings or [])
    if isinstance(x, np.ndarray):
        return _encode(x, classes, np.arange(len(classes), dtype=np.int64), default_int64,
                       device)
    return _encode(x, list(range(len(classes))), np.array(classes, dtype=object),
                   default_string, device)


@register("LabelEncoder", 2, domain=ML)
def label_encoder_2(x: Any, *, device: torch.device | None = None, **attrs: Any) -> Any:
    """Opset 2: keys_* -> values_*; a NaN key matches nothing (NaN != NaN)."""
    return _encode(x, *_table(**attrs), device)


@register("LabelEncoder", 4, domain=ML)
def label_encoder(x: Any, *, device: torch.device | None = None, **attrs: Any) -> Any:
    """Opset 4 adds keys_/values_/default_tensor of any type, and a NaN key matches NaN."""
    return _encode(x, *_table(**attrs), device, match_nan=True)


def _table(*, keys_floats: list[float] | None = None, keys_int64s: list[int] | None = None,
           keys_strings: list[str] | None = None, keys_tensor: np.ndarray | None = None,
           values_floats: list[float] | None = None, values_int64s: list[int] | None = None,
           values_strings: list[str] | None = None, values_tensor: np.ndarray | None = None,
           default_float: float = -0.0, default_int64: int = -1,
           default_string: str = "_Unused", default_tensor: np.ndarray | None = None,
           ) -> tuple[list[Any], np.ndarray, Any]:
    """LabelEncoder's (keys, values, default) from whichever attributes the node sets."""
    keys = _first(keys_tensor, keys_floats, keys_int64s, keys_strings, what="keys")
    if values_tensor is not None:
        values = np.asarray(values_tensor).reshape(-1)
        default = (np.asarray(default_tensor).reshape(-1)[0].item() if default_tensor is not None
                   else _default_for(values.dtype, default_float, default_int64, default_string))
    elif values_floats is not None:
        values, default = np.array(values_floats, dtype=np.float32), default_float
    elif values_int64s is not None:
        values, default = np.array(values_int64s, dtype=np.int64), default_int64
    elif values_strings is not None:
        values, default = np.array(values_strings, dtype=object), default_string
    else:
        raise ValueError("LabelEncoder has no values_* attribute")
    if len(keys) != len(values):
        raise ValueError(f"LabelEncoder has {len(keys)} keys but {len(values)} values")
    return keys, values, default


def _first(*candidates: Any, what: str) -> list[Any]:
    for candidate in candidates:
        if candidate is not None:
            return [_key(k) for k in np.asarray(candidate, dtype=object).reshape(-1)]
    raise ValueError(f"LabelEncoder has no {what}_* attribute")


def _default_for(dtype: np.dtype, as_float: float, as_int: int, as_string: str) -> Any:
    if dtype.kind == "O":
        return as_string
    return as_float if dtype.kind == "f" else as_int


@register("Binarizer", 1, domain=ML)
def binarizer(x: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    return (x > threshold).to(x.dtype)


@register("ArrayFeatureExtractor", 1, domain=ML)
def array_feature_extractor(x: Any, indices: torch.Tensor) -> Any:
    """Picks columns of the last axis; a 1-D input gives one row, as ONNX Runtime does."""
    picked = [int(i) for i in indices.reshape(-1).tolist()]
    width = x.shape[-1]
    bad = [i for i in picked if not 0 <= i < width]
    if bad:
        raise IndexError(f"ArrayFeatureExtractor: indices {bad} are out of range for "
                         f"{width} features")
    shape = (1, len(picked)) if len(x.shape) == 1 else (*x.shape[:-1], len(picked))
    if isinstance(x, np.ndarray):
        return x[..., picked].reshape(shape)
    return x[..., torch.tensor(picked, device=x.device)].reshape(shape)


@register("Scaler", 1, domain=ML)
def scaler(x: torch.Tensor, *, offset: list[float] | None = None,
           scale: list[float] | None = None) -> torch.Tensor:
    x = x.to(torch.float32) if not x.is_floating_point() else x
    shift = torch.tensor(offset or [0.0], dtype=x.dtype, device=x.device)
    factor = torch.tensor(scale or [1.0], dtype=x.dtype, device=x.device)
    return (x - shift) * factor


@register("Normalizer", 1, domain=ML)
def normalizer(x: torch.Tensor, *, norm: str = "MAX") -> torch.Tensor:
    x = x.to(torch.float32) if not x.is_floating_point() else x
    rows = x.reshape(1, -1) if x.dim() == 1 else x
    if norm == "MAX":  # the largest value, sign included, as ONNX Runtime divides by
        size = rows.amax(dim=1, keepdim=True)
    elif norm == "L1":
        size = rows.abs().sum(dim=1, keepdim=True)
    elif norm == "L2":
        size = rows.square().sum(dim=1, keepdim=True).sqrt()
    else:
        raise ValueError(f"Normalizer: norm must be MAX, L1 or L2, got {norm!r}")
    # an all-zero row stays zero
    return (rows / torch.where(size == 0, torch.ones_like(size), size)).reshape(x.shape)


def _linear(x: torch.Tensor, coefficients: list[float], intercepts: list[float] | None,
            outputs: int) -> torch.Tensor:
    x = x.to(torch.float32) if x.dtype not in (torch.float32, torch.float64) else x
    rows = x.reshape(1, -1) if x.dim() == 1 else x
    weight = torch.tensor(coefficients, dtype=x.dtype, device=x.device)
    if weight.numel() != outputs * rows.shape[1]:
        raise ValueError(f"{len(coefficients)} coefficients do not fit {outputs} output(s) of "
                         f"{rows.shape[1]} features")
    scores = rows @ weight.reshape(outputs, rows.shape[1]).T
    if intercepts:
        scores = scores + torch.tensor(intercepts, dtype=x.dtype, device=x.device)
    return scores


@register("LinearRegressor", 1, domain=ML)
def linear_regressor(x: torch.Tensor, *, coefficients: list[float],
                     intercepts: list[float] | None = None, targets: int = 1,
                     post_transform: str = "NONE") -> torch.Tensor:
    scores = _linear(x, coefficients, intercepts, targets)
    return common.post_transform(scores, common.post_transform_name(post_transform))


@register("LinearClassifier", 1, domain=ML)
def linear_classifier(x: torch.Tensor, *, coefficients: list[float],
                      intercepts: list[float] | None = None,
                      classlabels_ints: list[int] | None = None,
                      classlabels_strings: list[str] | None = None, multi_class: int = 0,
                      post_transform: str = "NONE",
                      device: torch.device | None = None) -> tuple[Any, torch.Tensor]:
    labels = common.class_labels(classlabels_ints, classlabels_strings)
    features = x.shape[-1]
    scores = _linear(x, coefficients, intercepts, len(coefficients) // max(features, 1))
    name = common.post_transform_name(post_transform)
    if scores.shape[1] == 1 and len(labels) == 2:
        # binary, as ONNX Runtime does it: one score s for the second class, which wins when
        # s > 0; the scores are [1 - p, p] with p = s, or sigmoid(s) under LOGISTIC
        positive = scores[:, 0]
        p = torch.sigmoid(positive) if name == "LOGISTIC" else positive
        label = common.labels_output(labels, (positive > 0).to(torch.int64), device)
        return label, torch.stack([1 - p, p], dim=1).to(torch.float32)
    scores = common.post_transform(scores, name)
    return common.labels_output(labels, scores.argmax(dim=1), device), scores.to(torch.float32)
