"""kiln.QConvShortcut: a 1x1 quantized layer whose residual is a 1x1 quantized projection of
another tensor, as one operator (made by kiln/passes/fuse_projection_shortcut.py).

    r   = QConv(sx, sw) {shortcut_*}               the projection, requantized to int8/uint8
    out = QConv(x, w, r) {the layer's attributes}  reading r as its residual

ResNet's bottleneck tail with a projection shortcut (the first block of each stage): the
projection writes its int8 output and the tail reads it back at once, four times the bytes
of either layer's input at ResNet-50's first stage. One kernel computes both products per
output tile and never stores r. The arithmetic is the two layers', requantization of r
included, so the fused layer gives the unfused engine's answers.
"""

from __future__ import annotations

from typing import Any

import torch

from kiln.ops.quantized import qconv
from kiln.ops.registry import KILN_DOMAIN, lookup, register

PREFIX = "shortcut_"
# the projection's attributes, stored on the fused node under PREFIX
SHORTCUT_ATTRS = ("x_scale", "x_zero_point", "w_scale", "bias", "strides", "out_scale",
                  "out_zero_point", "out_type")


def shortcut_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The projection's own QConv attributes from the fused node's."""
    return _qconv_attrs({k[len(PREFIX):]: v for k, v in attrs.items() if k.startswith(PREFIX)})


def layer_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The layer's QConv attributes (those of its residual included)."""
    return _qconv_attrs({k: v for k, v in attrs.items() if not k.startswith(PREFIX)})


def _qconv_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    impl = lookup(KILN_DOMAIN, "QConv", None)
    assert impl is not None
    return impl.bind_attrs(attrs)


@register("QConvShortcut", 1, domain=KILN_DOMAIN)
def qconv_shortcut(x, w, sx, sw, **attrs: Any) -> torch.Tensor:
    r = qconv(sx, sw, **shortcut_attrs(attrs))
    return qconv(x, w, r, **layer_attrs(attrs))
