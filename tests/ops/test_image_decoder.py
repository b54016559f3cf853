"""ImageDecoder: images encoded by Pillow from seeded random pixels decode to those pixels
(lossless formats), or to what Pillow itself decodes (JPEG)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.ops._kiln_vs_ort import model, run_kiln, tensor

Image = pytest.importorskip("PIL.Image", reason="ImageDecoder needs Pillow")


def _encode(pixels: np.ndarray, fmt: str) -> np.ndarray:
    with io.BytesIO() as buffer:
        Image.fromarray(pixels).save(buffer, format=fmt)
        return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


def _decoder(pixel_format: str):
    node = helper.make_node("ImageDecoder", ["data"], ["image"], pixel_format=pixel_format,
                            name="decode")
    return model([node], [tensor("data", TensorProto.UINT8, ("N",))],
                 [tensor("image", TensorProto.UINT8)], opset=20)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "PPM"])
@pytest.mark.parametrize("size", [(5, 7), (32, 20)])
def test_lossless_formats_round_trip(fmt: str, size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
    data = _encode(pixels, fmt)
    np.testing.assert_array_equal(run_kiln(_decoder("RGB"), {"data": data})[0], pixels)
    np.testing.assert_array_equal(run_kiln(_decoder("BGR"), {"data": data})[0],
                                  pixels[:, :, ::-1])
    gray = np.asarray(Image.fromarray(pixels).convert("L"))[:, :, None]
    np.testing.assert_array_equal(run_kiln(_decoder("Grayscale"), {"data": data})[0], gray)


def test_jpeg_decodes_as_pillow_does() -> None:
    # 8x8 tiles of random colours: what JPEG keeps well, so the check below means something
    tiles = np.random.default_rng(0).integers(0, 256, (2, 3, 3), dtype=np.uint8)
    pixels = np.repeat(np.repeat(tiles, 8, axis=0), 8, axis=1)
    data = _encode(pixels, "JPEG")
    want = np.asarray(Image.open(io.BytesIO(data.tobytes())).convert("RGB"))
    got = run_kiln(_decoder("RGB"), {"data": data})[0]
    np.testing.assert_array_equal(got, want)
    assert np.abs(got.astype(int) - pixels).mean() < 10  # lossy, but the same picture


def test_bytes_that_are_no_image_are_reported() -> None:
    data = np.frombuffer(b"definitely not an image", dtype=np.uint8).copy()
    with pytest.raises(RuntimeError, match=r"decode.*23 input bytes are not an image"):
        run_kiln(_decoder("RGB"), {"data": data})
