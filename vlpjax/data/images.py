"""Image bytes <-> arrays. Datasets store encoded images; the input pipeline decodes them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """Any format Pillow reads -> uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1]."""
    return image.astype(np.float32) / 127.5 - 1.0


def resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def model_pixels(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> the [size, size, 3] float input every image tower takes."""
    return normalize(resize(decode_image(data), size))
