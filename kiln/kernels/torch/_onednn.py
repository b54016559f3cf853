"""What the oneDNN tactics share: kiln's activations as oneDNN post-ops."""

from __future__ import annotations

from collections.abc import Callable

import torch

# kiln's activation -> oneDNN's post-op name and how its scalars come from the params
POST_OPS: dict[str, tuple[str, Callable[[list[float]], list[float]], str | None]] = {
    "": ("none", lambda p: [], None),
    "Relu": ("relu", lambda p: [], None),
    "SiLU": ("swish", lambda p: [], None),
    "HardSwish": ("hardswish", lambda p: [], None),
    "Sigmoid": ("sigmoid", lambda p: [], None),
    "Tanh": ("tanh", lambda p: [], None),
    "GeluErf": ("gelu", lambda p: [], "none"),
    "GeluTanh": ("gelu", lambda p: [], "tanh"),
    "LeakyRelu": ("leaky_relu", lambda p: [p[0] if p else 0.01], None),
    "Clip": ("hardtanh", lambda p: [p[0], p[1]], None),
}


def available(op: str) -> bool:
    """Whether this torch has oneDNN and its fused `op` (`_convolution_pointwise`, ...)."""
    return hasattr(torch.ops.mkldnn, op) and torch.backends.mkldnn.is_available()
