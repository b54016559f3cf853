"""Image-space and detection ops against ONNX's reference on seeded random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln.backend
from tests.ops.reference import assert_close, node_model, run_both


@pytest.mark.parametrize(("image", "block", "attrs"), [
    ([7], [3], {"strides": [2]}),
    ([6, 5], [2, 3], {"dilations": [2, 1], "pads": [1, 0, 1, 2]}),
    ([4, 5, 3], [2, 2, 2], {"strides": [2, 1, 1]}),
])
def test_col2im(image: list[int], block: list[int], attrs: dict) -> None:
    n = len(image)
    strides = attrs.get("strides", [1] * n)
    dilations = attrs.get("dilations", [1] * n)
    pads = attrs.get("pads", [0] * (2 * n))
    count = 1
    for i in range(n):
        span = dilations[i] * (block[i] - 1) + 1
        count *= (image[i] + pads[i] + pads[n + i] - span) // strides[i] + 1
    x = np.random.default_rng(n).standard_normal((2, 3 * int(np.prod(block)), count))
    feeds = {"x": x.astype(np.float32), "image": np.array(image, np.int64),
             "block": np.array(block, np.int64)}
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], **attrs)
    assert_close(*run_both(node, feeds, 18))


@pytest.mark.parametrize(("group", "offset_group", "with_mask"), [(1, 1, False), (2, 2, True),
                                                                  (1, 3, True)])
def test_deform_conv(group: int, offset_group: int, with_mask: bool) -> None:
    rng = np.random.default_rng(group * 10 + offset_group)
    x = rng.standard_normal((2, 6, 6, 5)).astype(np.float32)
    w = rng.standard_normal((4, 6 // group, 3, 2)).astype(np.float32)
    out_h, out_w = 3, 6  # stride 2 x 1, pads 1
    offset = (rng.standard_normal((2, offset_group * 2 * 3 * 2, out_h, out_w)) * 1.5)
    feeds = {"x": x, "w": w, "offset": offset.astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32)}
    names = ["x", "w", "offset", "b"]
    if with_mask:
        feeds["mask"] = rng.random((2, offset_group * 3 * 2, out_h, out_w)).astype(np.float32)
        names.append("mask")
    node = helper.make_node("DeformConv", names, ["y"], group=group, offset_group=offset_group,
                            strides=[2, 1], pads=[1, 1, 1, 1])
    assert_close(*run_both(node, feeds, 22), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align(mode: str, sampling_ratio: int) -> None:
    rng = np.random.default_rng(sampling_ratio)
    x = rng.standard_normal((2, 3, 10, 9)).astype(np.float32)
    corners = rng.uniform(-2, 11, (5, 2, 2))
    rois = np.concatenate([corners.min(1), corners.max(1)], axis=1).astype(np.float32)
    batch = rng.integers(0, 2, (5,)).astype(np.int64)
    node = helper.make_node("RoiAlign", ["x", "rois", "batch"], ["y"], mode=mode,
                            output_height=3, output_width=2, sampling_ratio=sampling_ratio,
                            spatial_scale=0.8)
    assert_close(*run_both(node, {"x": x, "rois": rois, "batch": batch}, 22), atol=1e-5)


@pytest.mark.parametrize("center_point_box", [0, 1])
def test_non_max_suppression(center_point_box: int) -> None:
    rng = np.random.default_rng(center_point_box)
    centers = rng.uniform(0, 10, (2, 30, 2))
    sizes = rng.uniform(0.5, 4, (2, 30, 2))
    if center_point_box:
        boxes = np.concatenate([centers, sizes], axis=-1)
    else:  # corners in either order
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=-1)
        boxes[:, ::3] = boxes[:, ::3][..., [2, 3, 0, 1]]
    scores = rng.random((2, 3, 30)).astype(np.float32)
    scores[0, 0, 5] = scores[0, 0, 9]  # a tie: the lower index wins
    feeds = {"boxes": boxes.astype(np.float32), "scores": scores,
             "limit": np.array([7], np.int64), "iou": np.array([0.3], np.float32),
             "score": np.array([0.2], np.float32)}
    node = helper.make_node("NonMaxSuppression", list(feeds), ["selected"],
                            center_point_box=center_point_box)
    assert_close(*run_both(node, feeds, 11))


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter(mode: str) -> None:
    rng = np.random.default_rng(1)
    cache = rng.standard_normal((3, 2, 6, 4)).astype(np.float32)
    update = rng.standard_normal((3, 2, 2, 4)).astype(np.float32)
    index = np.array([0, 3, 5 if mode == "circular" else 4], np.int64)
    node = helper.make_node("TensorScatter", ["c", "u", "i"], ["y"], mode=mode)
    assert_close(*run_both(node, {"c": cache, "u": update, "i": index}, 24))


def test_max_unpool_of_max_pool_indices() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float32)
    pool = helper.make_node("MaxPool", ["x"], ["v", "i"], kernel_shape=[2, 3], strides=[2, 2])
    _, (values, indices) = run_both(pool, {"x": x}, 22)
    node = helper.make_node("MaxUnpool", ["v", "i", "shape"], ["y"], kernel_shape=[2, 3],
                            strides=[2, 2])
    feeds = {"v": values, "i": indices, "shape": np.array([2, 3, 7, 8], np.int64)}
    assert_close(*run_both(node, feeds, 22))


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("scales", [[1, 1, 0.6, 0.45], [1, 1, 0.8, 1.0]])
def test_resize_antialias(mode: str, scales: list[float]) -> None:
    x = np.random.default_rng(5).standard_normal((1, 2, 9, 11)).astype(np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode, antialias=1)
    feeds = {"x": x, "scales": np.array(scales, np.float32)}
    assert_close(*run_both(node, feeds, 19), atol=1e-5)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cum_prod(exclusive: int, reverse: int) -> None:
    x = np.random.default_rng(6).uniform(0.5, 1.5, (3, 5, 4)).astype(np.float32)
    node = helper.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive,
                            reverse=reverse)
    assert_close(*run_both(node, {"x": x, "axis": np.array(-2, np.int64)}, 26))


def _lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX's LRN formula in float64 (onnx's reference loops over the batch axis instead
    of the channels, so it is right only when N >= C)."""
    channels = x.shape[1]
    square = np.zeros_like(x, dtype=np.float64)
    for c in range(channels):
        low = max(0, c - (size - 1) // 2)
        high = min(channels - 1, c + -(-(size - 1) // 2))
        square[:, c] = (x[:, low:high + 1].astype(np.float64) ** 2).sum(axis=1)
    return (x / (bias + alpha / size * square) ** beta).astype(x.dtype)


@pytest.mark.parametrize("shape", [(2, 5, 4), (1, 6, 3, 4), (2, 4, 2, 3, 3)])
@pytest.mark.parametrize("size", [2, 3])
def test_lrn_any_rank(shape: tuple, size: int) -> None:
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.01, beta=0.6, bias=1.5)
    model = node_model(node, {"x": x}, ["y"], 13)
    got = kiln.backend.prepare(model).run([x])[0]
    np.testing.assert_allclose(got, _lrn(x, size, 0.01, 0.6, 1.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("output_shape", [[10, 8], [8, 6], [7, 5]])
def test_conv_transpose_output_shape(output_shape: list[int]) -> None:
    """Against ONNX Runtime: onnx's reference cannot crop to an output_shape below the
    full result."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(7)
    feeds = {"x": rng.standard_normal((1, 2, 3, 3)).astype(np.float32),
             "w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
             "b": rng.standard_normal(3).astype(np.float32)}
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=[3, 2],
                            output_shape=output_shape)
    model = node_model(node, feeds, ["y"], 21)
    model.ir_version = 10  # what this onnxruntime reads
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[0]
    got = kiln.backend.prepare(model).run(feeds)[0]
    assert got.shape == expected.shape == (1, 3, *output_shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
