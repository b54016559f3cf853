"""What the ai.onnx.ml predictors share: score post-transforms and class labels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

# TreeEnsemble (ai.onnx.ml opset 5) numbers its post-transforms; older ops name them
POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


def post_transform_name(value: int | str | None) -> str:
    if value is None:
        return "NONE"
    if isinstance(value, int):
        if not 0 <= value < len(POST_TRANSFORMS):
            raise ValueError(f"post_transform {value} is not one of 0..{len(POST_TRANSFORMS) - 1}")
        return POST_TRANSFORMS[value]
    if value not in POST_TRANSFORMS:
        raise ValueError(f"post_transform {value!r} is not one of {', '.join(POST_TRANSFORMS)}")
    return value


def post_transform(scores: torch.Tensor, name: str) -> torch.Tensor:
    """Applies NONE / SOFTMAX / LOGISTIC / SOFTMAX_ZERO / PROBIT row-wise to [N, C] scores."""
    if name == "NONE":
        return scores
    if name == "SOFTMAX":
        return torch.softmax(scores, dim=1)
    if name == "LOGISTIC":
        return torch.sigmoid(scores)
    if name == "SOFTMAX_ZERO":
        return _softmax_zero(scores)
    if name == "PROBIT":
        return math.sqrt(2.0) * torch.erfinv(2.0 * scores - 1.0)
    raise ValueError(f"unknown post_transform {name!r}")


def _softmax_zero(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the non-zero scores of each row; zeros stay zero, all-zero rows get 0.5."""
    zero = scores.abs() <= 1e-7
    shifted = scores - scores.max(dim=1, keepdim=True).values
    weights = torch.where(zero, torch.zeros_like(scores), torch.exp(shifted))
    total = weights.sum(dim=1, keepdim=True)
    return torch.where(total == 0, torch.full_like(scores, 0.5), weights / total)


def class_labels(ints: list[int] | None, strings: list[str] | None) -> np.ndarray:
    """The classifier's labels as an int64 or object array; errors when neither is given."""
    if strings:
        return np.array(strings, dtype=object)
    if ints is not None and len(ints):
        return np.array(ints, dtype=np.int64)
    raise ValueError("the classifier has neither classlabels_int64s nor classlabels_strings")


def labels_output(labels: np.ndarray, index: torch.Tensor, device: torch.device | None) -> Any:
    """Picks labels[index]: a torch int64 tensor for int labels, an object array for strings."""
    picked = labels[index.cpu().numpy()]
    if labels.dtype == object:
        return picked.astype(object)
    return torch.from_numpy(np.ascontiguousarray(picked)).to(device or "cpu")
