"""Optimizer steps (ai.onnx.preview.training): Adagrad, Adam, Momentum.

kiln runs inference, but these are pure functions of their inputs (one update step of
each tensor), so a graph that applies them runs like any other. Inputs are
(R, T, X_1..X_n, G_1..G_n, <state>_1..n); each tensor is updated on its own, computed in
float64 and returned in its own dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kiln.ops.registry import register

TRAINING = "ai.onnx.preview.training"


def _groups(inputs: tuple[torch.Tensor, ...], per_tensor: int, op: str
            ) -> tuple[float, int, list[list[torch.Tensor]]]:
    """(rate, step, [[X_i, G_i, state_i...] for each tensor i]) from the flat input list."""
    rate, step, *rest = inputs
    if len(rest) % per_tensor or not rest:
        raise ValueError(f"{op} takes R, T and {per_tensor} inputs per optimized tensor "
                         f"(X, G, states); got {len(inputs)} inputs")
    n = len(rest) // per_tensor
    groups = [[rest[k * n + i] for k in range(per_tensor)] for i in range(n)]
    return float(rate.reshape(-1)[0].item()), int(step.reshape(-1)[0].item()), groups


def _update(inputs: tuple[torch.Tensor, ...], per_tensor: int, op: str,
            rule: Callable[..., tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    rate, step, groups = _groups(inputs, per_tensor, op)
    results = []
    for tensors in groups:
        wide = [t.to(torch.float64) for t in tensors]
        updated = rule(rate, step, *wide)
        results.append([u.to(t.dtype) for u, t in zip(updated, tensors[:1] + tensors[2:])])
    # outputs: every new X, then every new first state, then every new second state
    return tuple(r[k] for k in range(len(results[0])) for r in results)


@register("Adagrad", 1, domain=TRAINING)
def adagrad(*inputs: torch.Tensor, decay_factor: float = 0.0, epsilon: float = 0.0,
            norm_coefficient: float = 0.0) -> tuple[torch.Tensor, ...]:
    def rule(r: float, t: int, x: torch.Tensor, g: torch.Tensor, h: torch.Tensor):
        rate = r / (1 + t * decay_factor)
        g = norm_coefficient * x + g
        h = h + g * g
        return x - rate * g / (h.sqrt() + epsilon), h

    return _update(inputs, 3, "Adagrad", rule)


@register("Adam", 1, domain=TRAINING)
def adam(*inputs: torch.Tensor, alpha: float = 0.9, beta: float = 0.999, epsilon: float = 0.0,
         norm_coefficient: float = 0.0,
         norm_coefficient_post: float = 0.0) -> tuple[torch.Tensor, ...]:
    def rule(r: float, t: int, x: torch.Tensor, g: torch.Tensor, v: torch.Tensor,
             h: torch.Tensor):
        g = norm_coefficient * x + g
        v = alpha * v + (1 - alpha) * g
        h = beta * h + (1 - beta) * g * g
        # bias correction from the first step on (T > 0)
        rate = r * (1 - beta ** t) ** 0.5 / (1 - alpha ** t) if t > 0 else r
        x = (1 - norm_coefficient_post) * (x - rate * v / (h.sqrt() + epsilon))
        return x, v, h

    return _update(inputs, 4, "Adam", rule)


@register("Momentum", 1, domain=TRAINING)
def momentum(*inputs: torch.Tensor, alpha: float, beta: float, mode: str,
             norm_coefficient: float) -> tuple[torch.Tensor, ...]:
    if mode not in ("standard", "nesterov"):
        raise ValueError(f"Momentum mode must be 'standard' or 'nesterov', got {mode!r}")

    def rule(r: float, t: int, x: torch.Tensor, g: torch.Tensor, v: torch.Tensor):
        g = norm_coefficient * x + g
        v = alpha * v + (beta if t > 0 else 1.0) * g  # the first step takes the whole gradient
        step = alpha * v + g if mode == "nesterov" else v
        return x - r * step, v

    return _update(inputs, 3, "Momentum", rule)
