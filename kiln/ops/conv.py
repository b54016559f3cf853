"""Convolution: Conv and ConvTranspose over 1, 2 or 3 spatial dims."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kiln.ops.registry import register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def same_pads(
    sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
    dilations: Sequence[int], auto_pad: str,
) -> list[int]:
    """ONNX `pads` ([begins..., ends...]) for SAME_UPPER/SAME_LOWER."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def resolve_pads(
    x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
    pads: Sequence[int] | None, auto_pad: str,
) -> list[int]:
    n = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(x.shape[2:], kernel, strides, dilations, auto_pad)
    if auto_pad == "VALID" or not pads:
        return [0] * (2 * n)
    return list(pads)


def split_pads(x: torch.Tensor, pads: Sequence[int], value: float = 0.0):
    """Symmetric part for torch's `padding`, and `x` padded explicitly for the rest."""
    symmetric, extra = pad_split(pads)
    if extra is not None:
        x = F.pad(x, extra, value=value)
    return x, symmetric


def padder(kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
           pads: Sequence[int] | None, auto_pad: str):
    """x -> (x padded where torch cannot pad, torch's symmetric `padding`). Pads known
    before the input is seen (explicit or VALID) are split once here, not on every call."""
    if auto_pad not in ("NOTSET", "VALID"):
        return lambda x: split_pads(
            x, resolve_pads(x, kernel, strides, dilations, pads, auto_pad))
    full = [0] * (2 * len(kernel)) if auto_pad == "VALID" or not pads else list(pads)
    symmetric, extra = pad_split(full)
    if extra is None:
        return lambda x: (x, symmetric)
    return lambda x: (F.pad(x, extra), symmetric)


def pad_split(pads: Sequence[int]) -> tuple[list[int], list[int] | None]:
    """ONNX pads as torch's symmetric `padding` and F.pad's spec for the rest (None when
    there is none)."""
    n = len(pads) // 2
    begins, ends = pads[:n], pads[n:]
    symmetric = [min(b, e) for b, e in zip(begins, ends)]
    extra: list[int] = []
    for b, e, s in zip(reversed(begins), reversed(ends), reversed(symmetric)):
        extra += [b - s, e - s]
    return symmetric, extra if any(extra) else None


@register("Conv", 1)
def conv(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *,
    auto_pad: str = "NOTSET", dilations: list[int] | None = None, group: int = 1,
    kernel_shape: list[int] | None = None, pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    n = w.dim() - 2
    kernel = kernel_shape or list(w.shape[2:])
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    full = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    x, symmetric = split_pads(x, full)
    if w.dtype != x.dtype:
        w = w.to(x.dtype)
    if b is not None and b.dtype != x.dtype:
        b = b.to(x.dtype)
    return _CONV[n](x, w, b, strides, symmetric, dilations, group)


@register("ConvTranspose", 1)
def conv_transpose(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *,
    auto_pad: str = "NOTSET", dilations: list[int] | None = None, group: int = 1,
    kernel_shape: list[int] | None = None, output_padding: list[int] | None = None,
    output_shape: list[int] | None = None, pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    n = w.dim() - 2
    kernel = kernel_shape or list(w.shape[2:])
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    output_padding = list(output_padding or [0] * n)
    sizes = list(x.shape[2:])
    if output_shape:
        target = list(output_shape)[-n:]
        totals = [
            s * (i - 1) + op + ((k - 1) * d + 1) - t
            for i, s, op, k, d, t in zip(sizes, strides, output_padding, kernel, dilations, target)
        ]
        # as ONNX Runtime: the odd pixel is cropped at the start unless SAME_UPPER
        pads = _split_total(totals, auto_pad == "SAME_UPPER")
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [
            s * (i - 1) + op + ((k - 1) * d + 1) - i * s
            for i, s, op, k, d in zip(sizes, strides, output_padding, kernel, dilations)
        ]
        pads = _split_total(totals, auto_pad == "SAME_UPPER")
    elif auto_pad == "VALID" or not pads:
        pads = [0] * (2 * n)
    begins, ends = list(pads[:n]), list(pads[n:])
    symmetric = [max(min(bg, e), 0) for bg, e in zip(begins, ends)]
    # torch crops the same amount from both ends; crop the asymmetric rest afterwards, and
    # a negative pad (an output_shape past the full result) extends with zeros
    y = _CONV_T[n](x, w.to(x.dtype), None, strides, symmetric, output_padding, group, dilations)
    rest = []
    for bg, e, s in zip(reversed(begins), reversed(ends), reversed(symmetric)):
        rest += [s - bg, s - e]
    if any(rest):
        y = F.pad(y, rest)
    if b is not None:
        y = y + b.to(x.dtype).reshape(1, -1, *([1] * n))
    return y


def _split_total(totals: Sequence[int], upper: bool) -> list[int]:
    begins, ends = [], []
    for total in totals:
        if total < 0:  # an output larger than the full result: zeros at the end
            begins.append(0)
            ends.append(total)
            continue
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends
