"""ImageDecoder: encoded image bytes (JPEG, PNG, BMP, TIFF, WebP, ...) to an HWC uint8 array.

Decoding runs on the host through Pillow, an optional dependency (`pip install
kiln[image]`); the result moves to the input's device.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from kiln.errors import KilnError
from kiln.ops.registry import register

_FORMATS = ("RGB", "BGR", "Grayscale")


@register("ImageDecoder", 20)
def image_decoder(encoded: torch.Tensor, *, pixel_format: str = "RGB") -> torch.Tensor:
    if pixel_format not in _FORMATS:
        raise ValueError(f"ImageDecoder pixel_format must be one of {_FORMATS}, "
                         f"got {pixel_format!r}")
    try:
        import PIL.Image
    except ImportError:
        raise KilnError("ImageDecoder needs Pillow, which is not installed",
                        hint="pip install 'kiln[image]' (or pillow)") from None
    data = encoded.detach().cpu().contiguous().numpy().tobytes()
    image = PIL.Image.open(io.BytesIO(data))
    if pixel_format == "Grayscale":
        pixels = np.asarray(image.convert("L"))[:, :, None]
    else:
        pixels = np.asarray(image.convert("RGB"))
        if pixel_format == "BGR":
            pixels = pixels[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(pixels)).to(encoded.device)
