"""Detection: NonMaxSuppression and RoiAlign."""

from __future__ import annotations

import torch

from kiln.ops.registry import register


def _corners(boxes: torch.Tensor, center_point_box: int) -> torch.Tensor:
    """[..., 4] boxes as (y_min, x_min, y_max, x_max), whichever corners they came as."""
    if center_point_box:
        x, y, w, h = boxes.unbind(-1)
        return torch.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], dim=-1)
    y1, x1, y2, x2 = boxes.unbind(-1)
    return torch.stack([torch.minimum(y1, y2), torch.minimum(x1, x2),
                        torch.maximum(y1, y2), torch.maximum(x1, x2)], dim=-1)


def pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of boxes, [B, N, 4] -> [B, N, N]; 0 where a box has no area."""
    y0, x0, y1, x1 = (c.unsqueeze(-1) for c in boxes.unbind(-1))
    inter_h = (torch.minimum(y1, y1.transpose(1, 2)) - torch.maximum(y0, y0.transpose(1, 2)))
    inter_w = (torch.minimum(x1, x1.transpose(1, 2)) - torch.maximum(x0, x0.transpose(1, 2)))
    inter = inter_h.clamp(min=0) * inter_w.clamp(min=0)
    area = (y1 - y0) * (x1 - x0)
    union = area + area.transpose(1, 2) - inter
    valid = (inter > 0) & (area > 0) & (area.transpose(1, 2) > 0) & (union > 0)
    return torch.where(valid, inter / torch.where(valid, union, 1), 0)


@register("NonMaxSuppression", 10, host_inputs=(2, 3, 4))
def non_max_suppression(
    boxes: torch.Tensor, scores: torch.Tensor,
    max_output_boxes_per_class: torch.Tensor | None = None,
    iou_threshold: torch.Tensor | None = None, score_threshold: torch.Tensor | None = None,
    *, center_point_box: int = 0,
) -> torch.Tensor:
    """Greedy NMS for every (batch, class) at once: each round keeps the best box still
    alive in each class and suppresses the boxes overlapping it by more than the threshold,
    so the loop runs (at most) max_output_boxes_per_class times, not once per box."""
    limit = _scalar(max_output_boxes_per_class, 0, int)
    iou_limit = _scalar(iou_threshold, 0.0, float)
    batches, classes, count = scores.shape
    device = scores.device
    if limit <= 0 or count == 0:
        return torch.zeros((0, 3), dtype=torch.int64, device=device)
    work = scores.to(torch.float64)
    iou = pairwise_iou(_corners(boxes.to(torch.float64), center_point_box))
    alive = torch.ones_like(work, dtype=torch.bool)
    if score_threshold is not None and score_threshold.numel():
        alive &= work > _scalar(score_threshold, 0.0, float)
    batch_of = torch.arange(batches, device=device)[:, None].expand(batches, classes)
    picks, kept = [], []
    for _ in range(min(limit, count)):
        if not bool(alive.any()):
            break
        # the highest score alive; argmax takes the lowest index among ties, as ONNX does
        best = torch.where(alive, work, float("-inf")).argmax(dim=-1)
        found = alive.gather(-1, best[..., None])[..., 0]
        picks.append(best)
        kept.append(found)
        overlap = iou[batch_of, best] > iou_limit  # [B, C, N]
        alive &= ~overlap
        alive.scatter_(-1, best[..., None], False)
    best = torch.stack(picks, dim=-1)  # [B, C, rounds], in selection order
    found = torch.stack(kept, dim=-1)
    batch_idx = batch_of[..., None].expand_as(best)
    class_idx = torch.arange(classes, device=device)[None, :, None].expand_as(best)
    triples = torch.stack([batch_idx, class_idx, best], dim=-1)
    return triples[found].to(torch.int64)


def _scalar(value: torch.Tensor | None, default, kind):
    if value is None or value.numel() == 0:
        return default
    return kind(value.reshape(-1)[0].item())


def _axis_taps(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, bins: int,
               samples: int, size: int):
    """Sample positions along one axis, [R, bins, samples]: the low/high pixel, the weight
    of each, whether the point lies off the map, and whether the sample exists."""
    b = torch.arange(bins, device=start.device, dtype=start.dtype).reshape(1, -1, 1)
    i = torch.arange(samples, device=start.device, dtype=start.dtype).reshape(1, 1, -1)
    steps = grid.clamp(min=1).to(start.dtype).reshape(-1, 1, 1)
    pos = start.reshape(-1, 1, 1) + b * bin_size.reshape(-1, 1, 1) + (
        i + 0.5) * bin_size.reshape(-1, 1, 1) / steps
    off = (pos < -1.0) | (pos > size)
    pos = pos.clamp(min=0)
    low = torch.floor(pos)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    pos = torch.where(at_edge, low, pos)
    frac = pos - low
    exists = (i < grid.reshape(-1, 1, 1)).expand_as(pos)
    return low.to(torch.int64), high.to(torch.int64), 1 - frac, frac, off, exists


@register("RoiAlign", 10)
def roi_align_10(x: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor, *,
                 mode: str = "avg", output_height: int = 1, output_width: int = 1,
                 sampling_ratio: int = 0, spatial_scale: float = 1.0) -> torch.Tensor:
    # before opset 16 there was no half-pixel offset
    return roi_align(x, rois, batch_indices, coordinate_transformation_mode="output_half_pixel",
                     mode=mode, output_height=output_height, output_width=output_width,
                     sampling_ratio=sampling_ratio, spatial_scale=spatial_scale)


@register("RoiAlign", 16)
def roi_align(
    x: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor, *,
    coordinate_transformation_mode: str = "half_pixel", mode: str = "avg",
    output_height: int = 1, output_width: int = 1, sampling_ratio: int = 0,
    spatial_scale: float = 1.0,
) -> torch.Tensor:
    """ROI pooling by bilinear samples on a regular grid in each bin (ONNX's reference,
    which follows ONNX Runtime: `max` mode takes the largest weighted corner value)."""
    if mode not in ("avg", "max"):
        raise ValueError(f"RoiAlign mode must be 'avg' or 'max', got {mode!r}")
    c, h, w = x.shape[1:]
    work = torch.float64  # sample positions; values stay in x's precision (>= float32)
    vals = torch.float64 if x.dtype == torch.float64 else torch.float32
    boxes = rois.to(work) * spatial_scale
    if coordinate_transformation_mode == "half_pixel":
        boxes = boxes - 0.5
    x1, y1, x2, y2 = boxes.unbind(-1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if coordinate_transformation_mode != "half_pixel":  # malformed ROIs become 1x1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / output_height, roi_w / output_width
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.int64)
    else:
        grid_h = torch.ceil(roi_h / output_height).to(torch.int64)
        grid_w = torch.ceil(roi_w / output_width).to(torch.int64)
    rois_count = rois.shape[0]
    if rois_count == 0:
        return torch.zeros((0, c, output_height, output_width), dtype=x.dtype, device=x.device)
    gh, gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    ylo, yhi, ywl, ywh, yoff, yex = _axis_taps(y1, bin_h, grid_h, output_height, gh, h)
    xlo, xhi, xwl, xwh, xoff, xex = _axis_taps(x1, bin_w, grid_w, output_width, gw, w)

    def grid(t_y: torch.Tensor, t_x: torch.Tensor, op) -> torch.Tensor:
        # [R, PH, GH] and [R, PW, GW] -> [R, PH, GH, PW, GW]
        return op(t_y[:, :, :, None, None], t_x[:, None, None, :, :])

    off = grid(yoff, xoff, torch.logical_or)
    exists = grid(yex, xex, torch.logical_and)
    corners = [(ylo, xlo, ywl, xwl), (ylo, xhi, ywl, xwh), (yhi, xlo, ywh, xwl),
               (yhi, xhi, ywh, xwh)]
    planes = x.to(vals)[batch_indices.to(torch.int64)].reshape(rois_count, c, h * w)
    terms = []
    for yi, xi, wy, wx in corners:
        index = grid(yi, xi, lambda a, b: a * w + b).reshape(rois_count, 1, -1)
        weight = torch.where(off, 0.0, grid(wy, wx, torch.mul)).to(vals).reshape(
            rois_count, 1, -1)
        index = torch.where(off.reshape(rois_count, 1, -1), 0, index)
        values = planes.gather(2, index.expand(rois_count, c, -1))
        terms.append(values * weight)
    shape = (rois_count, c, output_height, gh, output_width, gw)
    mask = exists.reshape(rois_count, 1, output_height, gh, output_width, gw)
    if mode == "avg":
        total = torch.where(mask, sum(terms).reshape(shape), 0.0).sum(dim=(3, 5))
        count = (grid_h * grid_w).clamp(min=1).to(vals).reshape(-1, 1, 1, 1)
        result = total / count
    else:
        best = torch.stack(terms).amax(dim=0).reshape(shape)
        best = torch.where(mask, best, float("-inf")).amax(dim=(3, 5))
        result = torch.where(torch.isneginf(best), 0.0, best)
    return result.to(x.dtype)
