"""Detection post-processing: NonMaxSuppression."""

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
