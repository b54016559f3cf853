"""Optional values: Optional, OptionalHasElement, OptionalGetElement.

An optional holding a value is that value itself (a tensor or a sequence); an empty one
is None. So wrapping and unwrapping cost nothing, and an omitted input reads as empty.
"""

from __future__ import annotations

from typing import Any

import torch

from kiln.ops.registry import register


@register("Optional", 15)
def optional(value: Any = None, *, type: Any = None) -> Any:
    return value


@register("OptionalHasElement", 15)
def optional_has_element(value: Any = None, *,
                         device: torch.device | None = None) -> torch.Tensor:
    return torch.tensor(value is not None, device=device)


@register("OptionalGetElement", 15)
def optional_get_element(value: Any) -> Any:
    if value is None:
        raise ValueError("OptionalGetElement on an empty optional; guard it with "
                         "OptionalHasElement")
    return value
