"""Col2Im: sums sliding blocks back into an image, over any number of spatial dims."""

from __future__ import annotations

import math

import torch

from kiln.ops._common import ints
from kiln.ops.registry import register


def block_positions(
    image: list[int], block: list[int], strides: list[int], dilations: list[int],
    pads: list[int], device: torch.device,
) -> tuple[torch.Tensor, list[int]]:
    """Flat indices into the padded image, [kernel offsets, block positions], and its size."""
    n = len(image)
    padded = [image[i] + pads[i] + pads[n + i] for i in range(n)]
    counts = [(padded[i] - dilations[i] * (block[i] - 1) - 1) // strides[i] + 1
              for i in range(n)]
    flat = torch.zeros((1, 1), dtype=torch.int64, device=device)
    for i in range(n):
        # row-major over dims: fold the index so far by this dim's size, then add
        offsets = torch.arange(block[i], device=device) * dilations[i]
        starts = torch.arange(counts[i], device=device) * strides[i]
        coord = offsets[:, None] + starts[None, :]
        flat = (flat[:, None, :, None] * padded[i] + coord[None, :, None, :]).reshape(
            flat.shape[0] * block[i], flat.shape[1] * counts[i])
    return flat, padded


@register("Col2Im", 18, host_inputs=(1, 2))
def col2im(
    x: torch.Tensor, image_shape: torch.Tensor, block_shape: torch.Tensor, *,
    dilations: list[int] | None = None, pads: list[int] | None = None,
    strides: list[int] | None = None,
) -> torch.Tensor:
    image, block = ints(image_shape), ints(block_shape)
    n = len(image)
    dilations = list(dilations or [1] * n)
    strides = list(strides or [1] * n)
    pads = list(pads or [0] * (2 * n))
    flat, padded = block_positions(image, block, strides, dilations, pads, x.device)
    batch, kernel = x.shape[0], math.prod(block)
    channels = x.shape[1] // kernel
    if flat.numel() != kernel * x.shape[2]:
        raise ValueError(f"Col2Im input has {x.shape[2]} blocks; image {image}, block {block}, "
                         f"strides {strides}, dilations {dilations} and pads {pads} give "
                         f"{flat.shape[1]}")
    out = torch.zeros((batch, channels, math.prod(padded)), dtype=x.dtype, device=x.device)
    out.index_add_(2, flat.reshape(-1), x.reshape(batch, channels, -1))
    out = out.reshape(batch, channels, *padded)
    crop = tuple(slice(pads[i], pads[i] + image[i]) for i in range(n))
    return out[(slice(None), slice(None), *crop)]
