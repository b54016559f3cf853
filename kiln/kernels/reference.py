"""The `reference` tactic: the operator registry's torch implementation, on any device."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from kiln.kernels.registry import LayerSpec, Tactic, register_tactic
from kiln.ops import registry


@register_tactic
class ReferenceTactic(Tactic):
    name = "reference"

    def supports(self, layer: LayerSpec, target: Any) -> bool:
        return registry.lookup(layer.domain, layer.op, layer.opset) is not None

    def bind(self, layer: LayerSpec, tensors: dict[str, torch.Tensor],
             device: torch.device) -> Callable[..., Any]:
        impl = registry.lookup(layer.domain, layer.op, layer.opset)
        if impl is None:
            raise KeyError(f"no implementation of {layer.domain or 'ai.onnx'}::{layer.op} "
                           f"for opset {layer.opset}")
        kwargs = impl.bind_attrs(layer.attrs)
        if impl.wants_num_outputs:
            kwargs["num_outputs"] = len(layer.outputs)
        if impl.wants_device:
            kwargs["device"] = device
        return partial(impl.fn, **kwargs)
