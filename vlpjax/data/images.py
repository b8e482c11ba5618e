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
