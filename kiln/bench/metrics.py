"""Whole-tensor accuracy metrics beside Polygraphy's element-wise ones.

- cosine similarity of the flattened tensors (1.0 when both are all zeros);
- PSNR in dB with the reference's largest magnitude as the peak (1 for an all-zero
  reference; inf when equal);
- top-k agreement for classifier-like outputs (float, rank >= 2, last axis >= 2 taken as
  classes): the share of rows whose top-1 class matches, and the mean overlap of the
  top-k sets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def cosine_similarity(out: np.ndarray, ref: np.ndarray) -> float:
    a = out.astype(np.float64).reshape(-1)
    b = ref.astype(np.float64).reshape(-1)
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def psnr(out: np.ndarray, ref: np.ndarray) -> float:
    a, b = out.astype(np.float64), ref.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        mse = float(np.mean((a - b) ** 2)) if a.size else 0.0
    if not math.isfinite(mse):
        return -math.inf
    if mse == 0.0:
        return math.inf
    peak = float(np.max(np.abs(b))) or 1.0  # an all-zero reference: peak 1
    return 10.0 * math.log10(peak * peak / mse)


def is_classifier(ref: np.ndarray) -> bool:
    return ref.dtype.kind == "f" and ref.ndim >= 2 and ref.shape[-1] >= 2 and ref.size > 0


def topk_agreement(out: np.ndarray, ref: np.ndarray, k: int = 5) -> dict[str, Any]:
    """{"top1": share, "topk": mean overlap, "k": k, "rows": n} over the last axis."""
    classes = ref.shape[-1]
    k = max(1, min(k, classes))
    a = out.astype(np.float64).reshape(-1, classes)
    b = ref.astype(np.float64).reshape(-1, classes)
    top1 = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    ka = np.argpartition(-a, k - 1, axis=1)[:, :k]
    kb = np.argpartition(-b, k - 1, axis=1)[:, :k]
    overlap = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(ka, kb)]
    return {"top1": top1, "topk": float(np.mean(overlap)), "k": k, "rows": int(a.shape[0])}


def output_metrics(out: np.ndarray, ref: np.ndarray, k: int = 5) -> dict[str, Any]:
    """Cosine, PSNR and (for classifier-like outputs) top-k agreement."""
    if out.shape != ref.shape or out.dtype.kind not in "fiub" or ref.dtype.kind not in "fiub":
        return {}
    result: dict[str, Any] = {"cosine": cosine_similarity(out, ref), "psnr_db": psnr(out, ref)}
    if is_classifier(ref):
        result["topk"] = topk_agreement(out, ref, k)
    return result
