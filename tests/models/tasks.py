"""Task-level comparisons for FP16 engines: decisions, classes, detections.

A decision (threshold or top class) is compared only where the reference is decided by
more than the stated tolerance: a value within the tolerance of the threshold may flip
legitimately, and the value itself is still held to the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Stats:
    max_abs: float
    mean_abs: float
    scale: float  # max |reference|

    @property
    def relative_to_scale(self) -> float:
        return self.max_abs / self.scale if self.scale else self.max_abs

    def __str__(self) -> str:
        return (f"max|err| {self.max_abs:.3g} (= {self.relative_to_scale:.2g} of max|ref| "
                f"{self.scale:.3g}), mean|err| {self.mean_abs:.2g}")


def stats(got: np.ndarray, ref: np.ndarray) -> Stats:
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return Stats(float(err.max()), float(err.mean()), float(np.abs(ref).max()))


def threshold_flips(got: np.ndarray, ref: np.ndarray, threshold: float,
                    tolerance: float) -> tuple[int, int]:
    """(decisions compared, decisions that differ) for `value > threshold`."""
    decided = np.abs(ref - threshold) > tolerance
    flips = (got > threshold) != (ref > threshold)
    return int(decided.sum()), int((flips & decided).sum())


def argmax_flips(got: np.ndarray, ref: np.ndarray, tolerance: float,
                 axis: int = -1) -> tuple[int, int]:
    """(rows compared, rows whose top class differs) among rows whose reference top-1
    leads its runner-up by more than twice the tolerance."""
    top2 = np.sort(ref, axis=axis)
    margin = np.take(top2, -1, axis=axis) - np.take(top2, -2, axis=axis)
    decided = margin > 2 * tolerance
    flips = got.argmax(axis=axis) != ref.argmax(axis=axis)
    return int(decided.sum()), int((flips & decided).sum())


# ------------------------------------------------------------------ YOLOv8 detections
@dataclass
class Detection:
    cls: int
    score: float
    box: np.ndarray  # x1, y1, x2, y2


def yolov8_detections(output: np.ndarray, score_threshold: float,
                      iou_threshold: float = 0.45) -> list[Detection]:
    """Decodes one image's YOLOv8 output [4 + classes, anchors] as Ultralytics does: boxes
    are cx, cy, w, h; the score is the best class's; class-wise NMS."""
    scores = output[4:].max(axis=0)
    classes = output[4:].argmax(axis=0)
    keep = np.flatnonzero(scores >= score_threshold)
    cx, cy, w, h = output[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    found = []
    for c in np.unique(classes[keep]):
        mine = np.flatnonzero(classes[keep] == c)
        for i in _nms(boxes[mine], scores[keep][mine], iou_threshold):
            found.append(Detection(int(c), float(scores[keep][mine][i]), boxes[mine][i]))
    return sorted(found, key=lambda d: -d.score)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    order = list(np.argsort(-scores))
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(best)
        order = [i for i in order if iou(boxes[best], boxes[i]) <= iou_threshold]
    return kept


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def unmatched(wanted: list[Detection], candidates: list[Detection],
              min_iou: float) -> list[Detection]:
    """Detections of `wanted` with no candidate of the same class overlapping by min_iou
    (greedy, best score first, each candidate used once)."""
    free = list(candidates)
    missing = []
    for det in wanted:
        match = next((c for c in free if c.cls == det.cls and iou(c.box, det.box) >= min_iou),
                     None)
        if match is None:
            missing.append(det)
        else:
            free.remove(match)
    return missing
