"""ImageDecoder: encoded image bytes (JPEG, PNG, BMP, TIFF, WebP, PNM, JPEG 2000) -> pixels.

Decoding uses Pillow, an optional dependency imported only when a model decodes images.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.ops.registry import register

_PIXEL_FORMATS = ("RGB", "BGR", "Grayscale")


@register("ImageDecoder", 20)
def image_decoder(encoded: torch.Tensor, *, pixel_format: str = "RGB") -> torch.Tensor:
    """[H, W, 3] uint8 (RGB or BGR) or [H, W, 1] (Grayscale) from 1-D uint8 file bytes."""
    if pixel_format not in _PIXEL_FORMATS:
        raise ValueError(f"ImageDecoder: pixel_format must be one of {', '.join(_PIXEL_FORMATS)}, "
                         f"got {pixel_format!r}")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise KilnError("ImageDecoder needs Pillow, which is not installed",
                        hint="pip install pillow") from None
    data = encoded.detach().cpu().contiguous().numpy().tobytes()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"ImageDecoder: the {len(data)} input bytes are not an image Pillow "
                         f"can decode ({exc})") from None
    if pixel_format == "Grayscale":
        pixels = np.asarray(image.convert("L"))[:, :, None]
    else:
        pixels = np.asarray(image.convert("RGB"))
        if pixel_format == "BGR":
            pixels = pixels[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(encoded.device)
