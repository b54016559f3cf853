"""The shared real models (third-party, trained, with real inputs) keep their task-level
outputs under INT8 with the default calibration method (entropy): the same top class for
the classifiers, the same face windows and the same detections for the detectors.

Each model is calibrated on its own real samples (the only real data shipped with it) and
compared with the FP32 reference outputs stored beside them. Layers that are not
quantized run in FP32 (on the CPU, FP16 buys nothing and magika's FP16 build has its own
precision problem, see the FP16 tests). Skipped when ../shared/models is absent.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from kiln.build import BuilderConfig, build_engine
from kiln.quant import Calibrator
from kiln.runtime import ExecutionContext
from tests.models import zoo
from tests.shared_models import model_path, samples

pytestmark = pytest.mark.skipif(not zoo.available(), reason=zoo.SKIP_REASON)


def _samples(name: str) -> tuple[list[dict], list[dict]]:
    pairs = samples(name)
    return [inputs for inputs, _ in pairs], [outputs for _, outputs in pairs]


@functools.cache
def _int8(name: str) -> ExecutionContext:
    feeds, _ = _samples(name)
    engine = build_engine(str(model_path(name)), BuilderConfig(
        precision="int8", fallback_precision="fp32", device="cpu", optimization_level=0,
        calibrator=Calibrator(feeds)))
    # quantization happened (magika has two: its one-hot dense layer is a row lookup)
    assert engine.plan["build"]["quantization"]["quantized_layers"] >= 2
    return ExecutionContext(engine)


@pytest.mark.parametrize("name,output", [
    ("magika-v3.3", "target_label"),
    ("ppocr-cls-v2", "save_infer_model/scale_0.tmp_1"),
    ("mtcnn-rnet", "softmax_1"),
    ("mtcnn-onet", "softmax_2"),
])
def test_classifiers_keep_their_top_class(name, output):
    context = _int8(name)
    for feeds, refs in zip(*_samples(name)):
        got, want = context.run(feeds)[output], refs[output]
        np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_mtcnn_pnet_finds_the_same_face_windows():
    """Windows the reference is sure of (p >= 0.7) pass INT8's 0.6 threshold, and the
    other way round; only windows at the threshold may change sides."""
    context = _int8("mtcnn-pnet")
    for feeds, refs in zip(*_samples("mtcnn-pnet")):
        got, want = context.run(feeds)["softmax"][..., 1], refs["softmax"][..., 1]
        assert (want >= 0.7).sum() > 5
        assert not ((want >= 0.7) & (got < 0.6)).any()
        assert not ((got >= 0.7) & (want < 0.6)).any()


def _detections(output: np.ndarray, threshold: float, iou: float = 0.45) -> list[tuple]:
    """YOLOv8 post-processing: score threshold, then per-class non-maximum suppression."""
    pred = output[0].T
    scores, classes = pred[:, 4:].max(1), pred[:, 4:].argmax(1)
    keep = scores > threshold
    centre, size = pred[keep, :2], pred[keep, 2:4]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    scores, classes = scores[keep], classes[keep]
    order, chosen = np.argsort(-scores), []
    while len(order):
        best, rest = order[0], order[1:]
        chosen.append((int(classes[best]), float(scores[best]), boxes[best]))
        overlap = _iou(boxes[best], boxes[rest])
        order = rest[~((classes[rest] == classes[best]) & (overlap > iou))]
    return chosen


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _matched(detection: tuple, among: list[tuple]) -> bool:
    cls, _, box = detection
    return any(c == cls and _iou(box, b[None])[0] >= 0.5 for c, _, b in among)


@pytest.mark.slow
def test_nudenet_keeps_its_detections():
    """Every confident detection (score >= 0.35) of either engine is found by the other
    (same class, IoU >= 0.5, score above the 0.25 threshold)."""
    context = _int8("nudenet-yolov8n")
    total = 0
    for feeds, refs in zip(*_samples("nudenet-yolov8n")):
        got, want = context.run(feeds)["output0"], refs["output0"]
        ours, theirs = _detections(got, 0.25), _detections(want, 0.25)
        for strong, other in ((theirs, ours), (ours, theirs)):
            for detection in strong:
                if detection[1] >= 0.35:
                    total += 1
                    assert _matched(detection, other), detection
    assert total >= 1
