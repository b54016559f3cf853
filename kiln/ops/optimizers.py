"""Training-step operators of ai.onnx.preview.training: Adagrad, Adam, Momentum.

Each takes a learning rate R, a step count T, then the tensors to update grouped by role
(all X, then all G, then the optimizer states), and returns the updated groups in order.
"""

from __future__ import annotations

import torch

from kiln.ops.registry import register

TRAINING_DOMAIN = "ai.onnx.preview.training"


def _groups(tensors: tuple[torch.Tensor, ...], count: int, op: str) -> list[tuple]:
    if len(tensors) % count:
        raise ValueError(f"{op} takes R, T and {count} groups of equal size; got "
                         f"{len(tensors) + 2} inputs")
    n = len(tensors) // count
    return list(zip(*(tensors[i * n:(i + 1) * n] for i in range(count))))


@register("Adagrad", 1, domain=TRAINING_DOMAIN)
def adagrad(r: torch.Tensor, t: torch.Tensor, *tensors: torch.Tensor, decay_factor: float = 0.0,
            epsilon: float = 1e-6, norm_coefficient: float = 0.0) -> tuple[torch.Tensor, ...]:
    rate = r / (1 + t * decay_factor)
    xs, hs = [], []
    for x, g, h in _groups(tensors, 3, "Adagrad"):
        grad = norm_coefficient * x + g
        h_new = h + grad * grad
        xs.append((x - rate * grad / (torch.sqrt(h_new) + epsilon)).to(x.dtype))
        hs.append(h_new.to(h.dtype))
    return tuple(xs + hs)


@register("Adam", 1, domain=TRAINING_DOMAIN)
def adam(r: torch.Tensor, t: torch.Tensor, *tensors: torch.Tensor, alpha: float = 0.9,
         beta: float = 0.999, epsilon: float = 1e-6, norm_coefficient: float = 0.0,
         norm_coefficient_post: float = 0.0) -> tuple[torch.Tensor, ...]:
    steps = t.to(torch.float64)
    # bias correction from the first step on (T > 0); none at T = 0
    corrected = r * torch.sqrt(1 - beta ** steps) / (1 - alpha ** steps)
    rate = torch.where(steps > 0, corrected, r.to(corrected.dtype))
    xs, vs, hs = [], [], []
    for x, g, v, h in _groups(tensors, 4, "Adam"):
        grad = norm_coefficient * x + g
        v_new = alpha * v + (1 - alpha) * grad
        h_new = beta * h + (1 - beta) * grad * grad
        x_new = x - rate.to(x.dtype) * (v_new / (torch.sqrt(h_new) + epsilon))
        xs.append(((1 - norm_coefficient_post) * x_new).to(x.dtype))
        vs.append(v_new.to(v.dtype))
        hs.append(h_new.to(h.dtype))
    return tuple(xs + vs + hs)


@register("Momentum", 1, domain=TRAINING_DOMAIN)
def momentum(r: torch.Tensor, t: torch.Tensor, *tensors: torch.Tensor, alpha: float,
             beta: float, mode: str, norm_coefficient: float) -> tuple[torch.Tensor, ...]:
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"Momentum mode must be 'standard' or 'nesterov', got {mode!r}")
    # the gradient's coefficient is 1 on the first step
    beta_now = torch.where(t > 0, torch.tensor(beta, device=t.device),
                           torch.tensor(1.0, device=t.device))
    xs, vs = [], []
    for x, g, v in _groups(tensors, 3, "Momentum"):
        grad = norm_coefficient * x + g
        v_new = alpha * v + beta_now.to(v.dtype) * grad
        step = grad + alpha * v_new if mode == "nesterov" else v_new
        xs.append((x - r.to(x.dtype) * step).to(x.dtype))
        vs.append(v_new.to(v.dtype))
    return tuple(xs + vs)
